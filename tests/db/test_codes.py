"""The recharge-code pools (ivr.revalue.codes) on SQLite and PostgreSQL: import (good,
bad, repeated), issue exactly once (twenty threads racing for the last code), stock,
the low-stock notice through a real SMTP server, reveal, void, the ``ivr codes``
commands, and no code in clear anywhere in the database, the logs or the output."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import MetaData, select

from ivr.db import Database
from ivr.db.models import Customer, RatingPlan, RechargeCode
from ivr.money.accounts import create_account
from ivr.money.notify import SmtpSender
from ivr.revalue.codes import (
    NONE_LEFT,
    CodeFileError,
    CodeUnreadable,
    ImportResult,
    Issued,
    LowStock,
    RevealRefused,
    import_codes,
    issue,
    reveal,
    send_low_stock_notice,
    stock,
    void_codes,
)
from ivr.secrets import hash_pin
from ivr.testing import free_port
from ivr.testing.access import PLAN, create_test_plan

KEY = b"the server secret key of these tests"
TEN = Decimal("10")
OPERATOR_EMAIL = "noc@example.test"
FROM = "ivr@example.test"


def codes_file(path: Path, codes: list[str], header: str = "") -> Path:
    path.write_text(header + "".join(f"{c}\n" for c in codes))
    return path


def new_customers(db: Database, count: int) -> list[int]:
    """``count`` customers of the revalue line (rows made directly: the pool only needs
    their ids), each with an account on the test plan."""
    with db.transaction() as s:
        has_plan = s.scalar(select(RatingPlan.id).where(RatingPlan.name == PLAN)) is not None
    if not has_plan:
        create_test_plan(db)
    ids = []
    with db.transaction() as s:
        for _ in range(count):
            account = create_account(s, PLAN)
            customer = Customer(
                msisdn=f"+3361{account.number[-7:]}", code_hash=hash_pin("1234", log2_n=4),
                mode="code", pay="account", account_id=account.id, language="en",
                failures=0, locked=False, created_at=datetime.now(UTC))
            s.add(customer)
            s.flush()
            ids.append(customer.id)
    return ids


def load(db: Database, path: Path, *, operator: str = "Orange", value: Decimal = TEN,
         currency: str = "EUR", low_stock: int = 20) -> ImportResult:
    return import_codes(db, path, operator=operator, value=value, currency=currency, key=KEY,
                        low_stock=low_stock)


def take(db: Database, customer: int, *, value: Decimal = TEN, low_stock: int = 20,
         key: bytes = KEY) -> Issued:
    got = issue(db, operator="Orange", value=value, currency="EUR", customer_id=customer,
                key=key, low_stock=low_stock)
    assert isinstance(got, Issued)
    return got


def pool_rows(db: Database) -> list[tuple[str, str, int | None]]:
    with db.transaction() as s:
        return [(c.status, c.operator, c.customer_id)
                for c in s.scalars(select(RechargeCode).order_by(RechargeCode.id))]


CODES = [f"7{n:013d}" for n in range(1, 6)]  # 14 digits each


# --------------------------------------------------------------------------- import


def test_import_issue_and_reveal(db: Database, tmp_path):
    [alice, bob] = new_customers(db, 2)
    path = tmp_path / "orange.csv"
    path.write_text("\ufeffcode\n# a comment\n"
                    f"{CODES[0][:4]} {CODES[0][4:9]} {CODES[0][9:]}\n"  # grouped by spaces
                    f"{CODES[1][:7]}-{CODES[1][7:]}\r\n"  # dashes, CRLF
                    "\n"
                    f'"{CODES[2]}",\n'  # quoted, a trailing empty field
                    + "".join(f"{c}\n" for c in CODES[3:]))
    result = load(db, path)
    assert result == ImportResult(imported=5, skipped=0, available=5)

    [orange] = stock(db)
    assert (orange.operator, orange.currency, orange.value, orange.available, orange.issued,
            orange.void) == ("Orange", "EUR", TEN, 5, 0, 0)

    first = take(db, alice)
    assert first.code == CODES[0] and first.remaining == 4  # the oldest first
    second = take(db, bob)
    assert second.code == CODES[1] and second.remaining == 3
    assert pool_rows(db)[:3] == [("issued", "Orange", alice), ("issued", "Orange", bob),
                                 ("available", "Orange", None)]
    assert [(p.available, p.issued) for p in stock(db)] == [(3, 2)]

    assert reveal(db, first.code_id, customer_id=alice, key=KEY) == CODES[0]
    assert reveal(db, second.code_id, customer_id=bob, key=KEY) == CODES[1]
    with pytest.raises(RevealRefused):
        reveal(db, first.code_id, customer_id=bob, key=KEY)  # someone else's
    with pytest.raises(RevealRefused):
        reveal(db, first.code_id + 2, customer_id=alice, key=KEY)  # not issued yet
    with pytest.raises(RevealRefused):
        reveal(db, 10_000, customer_id=alice, key=KEY)  # no such code
    with pytest.raises(CodeUnreadable):
        reveal(db, first.code_id, customer_id=alice, key=KEY + b"x")  # another server key


def test_bad_lines_refuse_the_whole_file(db: Database, tmp_path):
    load(db, codes_file(tmp_path / "first.txt", CODES[:2]))
    path = tmp_path / "bad.txt"
    path.write_bytes(
        f"{CODES[2]}\n"  # line 1, good
        "7000000000x003\n"  # 2: a letter
        "12345\n"  # 3: too short
        f"{CODES[3]},{CODES[4]}\n"  # 4: two fields
        "code\n".encode()  # 5: a header only counts on the first line
        + b"\xff\xfe9999999\n"  # 6: not UTF-8
        + b"70000000009999\n")  # 7: good
    with pytest.raises(CodeFileError) as caught:
        load(db, path)
    assert [line for line, _ in caught.value.problems] == [2, 3, 4, 5, 6]
    message = str(caught.value)
    assert "line 2: not a code" in message and "line 6: not UTF-8" in message
    for secret in ("7000000000x003", CODES[2], CODES[3], "70000000009999"):
        assert secret not in message
    # Nothing imported, not even the good lines; the pool is as it was.
    assert [(p.available, p.issued) for p in stock(db)] == [(2, 0)]
    assert len(pool_rows(db)) == 2


def test_repeated_codes_are_skipped_and_counted(db: Database, tmp_path):
    path = codes_file(tmp_path / "a.txt", [CODES[0], CODES[1], CODES[0], CODES[2]])
    assert load(db, path) == ImportResult(3, 1, 3)
    assert load(db, path) == ImportResult(0, 4, 3)  # the same file again: harmless
    # A file larger than one chunk, repeating codes across chunks and from the pool.
    many = [f"8{n:013d}" for n in range(700)]
    big = codes_file(tmp_path / "big.txt", [CODES[1], *many, many[3], many[650], CODES[3]])
    assert load(db, big) == ImportResult(701, 3, 704)
    # Another operator may have the same digits: a pool of its own.
    assert load(db, path, operator="Vodafone") == ImportResult(3, 1, 3)
    # The same code for the same operator at another value: one of the files is wrong.
    clash = codes_file(tmp_path / "clash.txt", [CODES[4], CODES[2]])
    with pytest.raises(CodeFileError) as caught:
        load(db, clash, value=Decimal("20"))
    assert caught.value.problems == [(2, "already in the pool of Orange 10.00 EUR")]
    assert {(p.operator, p.value): p.available for p in stock(db)} == {
        ("Orange", TEN): 704, ("Vodafone", TEN): 3}


def test_none_left_and_unknown_customer(db: Database, tmp_path):
    [alice] = new_customers(db, 1)
    assert issue(db, operator="Orange", value=TEN, currency="EUR", customer_id=alice,
                 key=KEY) is NONE_LEFT  # no such pool
    load(db, codes_file(tmp_path / "one.txt", CODES[:1]))
    with pytest.raises(LookupError):
        take(db, alice + 100)
    assert take(db, alice).remaining == 0
    assert issue(db, operator="Orange", value=TEN, currency="EUR", customer_id=alice,
                 key=KEY) is NONE_LEFT
    assert issue(db, operator="Orange", value=Decimal(20), currency="EUR",
                 customer_id=alice, key=KEY) is NONE_LEFT  # another value's pool


def test_a_code_moved_to_another_pool_is_not_issued(db: Database, tmp_path):
    [alice] = new_customers(db, 1)
    load(db, codes_file(tmp_path / "ten.txt", CODES[:1]))
    load(db, codes_file(tmp_path / "twenty.txt", CODES[1:2]), value=Decimal(20))
    with db.transaction() as s:  # copy the 10 EUR code's ciphertext into the 20 EUR row
        ten, twenty = s.scalars(select(RechargeCode).order_by(RechargeCode.id)).all()
        twenty.code_enc = ten.code_enc
    with pytest.raises(CodeUnreadable):
        take(db, alice, value=Decimal(20))
    assert pool_rows(db)[1] == ("available", "Orange", None)  # nothing issued


def test_void(db: Database, tmp_path):
    [alice] = new_customers(db, 1)
    load(db, codes_file(tmp_path / "c.txt", CODES[:3]))
    with pytest.raises(ValueError, match="has 3 available"):
        void_codes(db, operator="Orange", value=TEN, currency="EUR", count=4)
    assert void_codes(db, operator="Orange", value=TEN, currency="EUR", count=2) == 2
    assert [(p.available, p.issued, p.void) for p in stock(db)] == [(1, 0, 2)]
    assert take(db, alice).code == CODES[0]  # the newest were voided
    assert issue(db, operator="Orange", value=TEN, currency="EUR", customer_id=alice,
                 key=KEY) is NONE_LEFT


# --------------------------------------------------------------------------- at once


def race(db: Database, customers: list[int], **kwargs: Any) -> list[Any]:
    """Each customer's thread issues one code, all released at the same moment."""
    start = threading.Barrier(len(customers))
    results: list[Any] = [None] * len(customers)

    def buy(i: int) -> None:
        start.wait()
        try:
            results[i] = issue(db, operator="Orange", value=TEN, currency="EUR",
                               customer_id=customers[i], key=KEY, **kwargs)
        except BaseException as exc:  # reported below, not lost in the thread
            results[i] = exc

    threads = [threading.Thread(target=buy, args=(i,)) for i in range(len(customers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors
    return results


def test_twenty_threads_race_for_the_last_code(db: Database, tmp_path):
    customers = new_customers(db, 21)
    load(db, codes_file(tmp_path / "c.txt", CODES[:2]))
    take(db, customers[20])  # one left
    results = race(db, customers[:20])
    winners = [(customers[i], r) for i, r in enumerate(results) if isinstance(r, Issued)]
    assert len(winners) == 1 and results.count(NONE_LEFT) == 19
    [(winner, issued)] = winners
    assert issued.code == CODES[1] and issued.remaining == 0
    with db.transaction() as s:
        row = s.get(RechargeCode, issued.code_id)
        assert row is not None and (row.status, row.customer_id) == ("issued", winner)
    assert [(p.available, p.issued) for p in stock(db)] == [(0, 2)]


def test_twenty_threads_get_distinct_codes_and_one_low_stock_notice(db: Database, tmp_path):
    customers = new_customers(db, 20)
    codes = [f"9{n:013d}" for n in range(30)]
    load(db, codes_file(tmp_path / "c.txt", codes), low_stock=15)
    results = race(db, customers, low_stock=15)
    assert all(isinstance(r, Issued) for r in results)
    issued = [r for r in results if isinstance(r, Issued)]
    assert sorted(r.code for r in issued) == codes[:20]
    assert len({r.code_id for r in issued}) == 20
    # The pool went from 30 to 10 past the level 15: exactly one issue got the notice.
    notices = [r.notice for r in issued if r.notice is not None]
    assert len(notices) == 1 and notices[0].remaining <= 15
    assert [(p.available, p.issued) for p in stock(db)] == [(10, 20)]


# --------------------------------------------------------------------------- low stock


class Mailbox:
    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, SmtpSender]]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield mailbox, SmtpSender("127.0.0.1", port, FROM, timeout=10)
    finally:
        controller.stop()


async def test_low_stock_notice_once_per_dip(db: Database, tmp_path, smtp):
    mailbox, sender = smtp
    [alice] = new_customers(db, 1)
    batch = iter(f"6{n:013d}" for n in range(100))

    def refill(n: int) -> ImportResult:
        path = codes_file(tmp_path / f"refill{n}.txt", [next(batch) for _ in range(n)])
        return load(db, path, low_stock=2)

    async def buy() -> Issued:
        issued = take(db, alice, low_stock=2)
        if issued.notice is not None:
            assert await send_low_stock_notice(db, issued.notice, sender=sender,
                                               to=OPERATOR_EMAIL)
        return issued

    refill(4)
    assert (await buy()).notice is None  # 3 left
    second = await buy()  # 2 left: at the level
    assert second.notice == LowStock("Orange", TEN, "EUR", 2, 2)
    assert len(mailbox.envelopes) == 1
    envelope = mailbox.envelopes[0]
    assert envelope.mail_from == FROM and envelope.rcpt_tos == [OPERATOR_EMAIL]
    message = message_from_bytes(envelope.content, policy=default_policy)
    assert message["Subject"] == "Recharge codes running low: Orange 10.00 EUR"
    body = message.get_content()
    assert "2 code(s) left" in body and "ivr codes import" in body
    assert (await buy()).notice is None  # 1 left: noticed already
    assert refill(1).available == 2  # not above the level: still noticed
    assert (await buy()).notice is None
    assert stock(db)[0].low_stock_noticed_at is not None
    assert refill(5).available == 6  # above the level: the next dip notices again
    assert stock(db)[0].low_stock_noticed_at is None
    assert [(await buy()).notice is None for _ in range(4)] == [True, True, True, False]
    assert len(mailbox.envelopes) == 2
    assert all(b"6000000000" not in e.content for e in mailbox.envelopes)  # no code in it


async def test_a_notice_that_cannot_be_sent_is_claimed_again(db: Database, tmp_path, smtp,
                                                             caplog):
    mailbox, sender = smtp
    [alice] = new_customers(db, 1)
    load(db, codes_file(tmp_path / "c.txt", CODES), low_stock=3)
    take(db, alice, low_stock=3)
    notice = take(db, alice, low_stock=3).notice
    assert notice is not None and notice.remaining == 3
    closed = SmtpSender("127.0.0.1", free_port(), FROM, timeout=5)  # nothing listens
    assert not await send_low_stock_notice(db, notice, sender=closed, to=OPERATOR_EMAIL)
    retry = take(db, alice, low_stock=3).notice  # claimed again
    assert retry is not None and retry.remaining == 2
    # No SMTP server or no address configured: logged once, kept as sent.
    with caplog.at_level(logging.WARNING, logger="ivr.revalue.codes"):
        assert not await send_low_stock_notice(db, retry, sender=None, to=OPERATOR_EMAIL)
        assert not await send_low_stock_notice(db, retry, sender=sender, to="")
    assert "2 code(s) left" in caplog.text
    assert take(db, alice, low_stock=3).notice is None
    assert mailbox.envelopes == []


# --------------------------------------------------------------------------- in clear


def text_values(db: Database) -> Iterator[tuple[str, str, str]]:
    """(table, column, value) of every text value in every table, as the database has
    them (reflected: tables and columns added later are scanned too)."""
    meta = MetaData()
    meta.reflect(db.engine)
    with db.engine.connect() as conn:
        for table in meta.sorted_tables:
            for row in conn.execute(table.select()):
                for column, value in row._mapping.items():
                    if isinstance(value, bytes):
                        value = value.decode("latin-1")
                    if isinstance(value, str):
                        yield table.name, str(column), value


def test_no_code_in_clear_in_the_database_or_the_logs(db: Database, tmp_path, caplog):
    [alice] = new_customers(db, 1)
    codes = [f"5{n:013d}" for n in range(1, 4)]
    path = codes_file(tmp_path / "c.txt", [f"{c[:4]}-{c[4:]}" for c in codes])
    with caplog.at_level(logging.DEBUG):
        load(db, path, low_stock=5)
        issued = take(db, alice, low_stock=5)
        assert issued.notice is not None
        assert reveal(db, issued.code_id, customer_id=alice, key=KEY) == codes[0]
        void_codes(db, operator="Orange", value=TEN, currency="EUR", count=1)
    assert issued.code == codes[0]
    forms = [form for c in codes for form in (c, f"{c[:4]}-{c[4:]}", c[-8:])]
    scanned = 0
    for table, column, value in text_values(db):
        scanned += 1
        for form in forms:
            assert form not in value, (table, column)
    assert scanned > 6  # the codes' rows at least
    with db.transaction() as s:
        stored = s.scalars(select(RechargeCode.code_enc)).all()
    assert len(stored) == 3 and all(v.startswith("v1:") for v in stored)
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert "issued to customer" in caplog.text  # the log was captured
    for form in forms:
        assert form not in logged
    if db.is_sqlite:  # the file itself, write-ahead log included
        database = Path(db.engine.url.database or "")
        raw = b"".join(p.read_bytes() for p in (database, Path(f"{database}-wal"))
                       if p.exists())
        assert raw and not any(form.encode() in raw for form in forms)


# --------------------------------------------------------------------------- commands


@pytest.fixture
def ivr(tmp_path, monkeypatch, ivr_cli):
    monkeypatch.setenv("IVR_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.sqlite3'}")
    monkeypatch.setenv("IVR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("IVR_CODE_LOW_STOCK", "3")
    monkeypatch.chdir(tmp_path)
    return ivr_cli


@pytest.fixture
def refused(ivr, capsys):
    """Run ``ivr ARGS --json`` expecting a refusal: its error object, alone on stdout."""
    from ivr.cli import main

    def run(*args: str) -> dict[str, str]:
        code = main([*args, "--json"])
        out, err = capsys.readouterr()
        assert code == 1, (args, out, err)
        error: dict[str, str] = json.loads(out)["error"]
        return error

    return run


def test_codes_commands(ivr, refused, tmp_path):
    ivr("plans", "create", "retail", "--currency", "EUR", "--decimals", "2")
    codes = [f"4{n:013d}" for n in range(1, 6)]
    codes_file(tmp_path / "codes.txt", codes, header="code\n")
    out = ivr("codes", "import", "codes.txt", "--operator", "Orange", "--value", "10")
    assert out.strip() == ("5 code(s) imported into Orange 10.00 EUR (0 already in the pool, "
                           "skipped); 5 available")
    again = json.loads(ivr("codes", "import", "codes.txt", "--operator", "Orange", "--value",
                           "10", "--currency", "eur", "--json"))
    assert again == {"imported": 0, "skipped": 5, "available": 5, "operator": "Orange",
                     "value": "10.00", "currency": "EUR"}
    codes_file(tmp_path / "five.txt", [f"3{n:013d}" for n in range(2)])
    ivr("codes", "import", "five.txt", "--operator", "Vodafone", "--value", "5")
    table = ivr("codes", "stock")
    assert table.splitlines() == [
        "operator  currency       value  available  issued  void",
        "Orange    EUR            10.00          5       0     0",
        "Vodafone  EUR             5.00          2       0     0  LOW"]
    ivr("codes", "void", "--operator", "Orange", "--value", "10", "--count", "2")
    data = json.loads(ivr("codes", "stock", "--json"))
    assert data["low_stock_level"] == 3
    assert [(p["operator"], p["value"], p["available"], p["void"], p["low"])
            for p in data["pools"]] == [("Orange", "10.00", 3, 2, True),
                                        ("Vodafone", "5.00", 2, 0, True)]

    (tmp_path / "bad.txt").write_text(f"{codes[0]}\n12-34-x\n")
    err = ivr("codes", "import", "bad.txt", "--operator", "Orange", "--value", "10", expect=1)
    assert "line 2: not a code" in err and "nothing was imported" in err
    assert refused("codes", "void", "--operator", "Orange", "--value", "10",
                   "--count", "9")["code"] == "bad_argument"
    assert refused("codes", "import", "bad.txt", "--operator", "Orange", "--value",
                   "10.001")["code"] == "bad_amount"
    assert refused("codes", "import", "missing.txt", "--operator", "Orange",
                   "--value", "10")["code"] == "not_found"
    error = refused("codes", "import", "bad.txt", "--operator", "Orange", "--value", "10")
    assert error["code"] == "bad_file" and "line 2" in error["message"]
    for text in (out, table, json.dumps(data), err):
        assert not any(c in text for c in codes)
