"""Recharge codes on SQLite and on a real PostgreSQL: generation, redemption exactly once
(also under 20 concurrent attempts), wrong codes locking the card."""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import event, func, inspect, select, text

from ivr.db import Database
from ivr.db.models import Account, Card, CardStatus, EntryKind, LedgerEntry, Voucher, VoucherStatus
from ivr.money.accounts import NotFound, create_account
from ivr.money.ledger import LedgerError, ledger_sum
from ivr.money.vouchers import RedeemVerdict, code_hash, find, generate, redeem, void
from ivr.secrets import load_secret_key, luhn_valid
from ivr.testing.access import create_test_plan, new_card

V = RedeemVerdict
KEY = b"test-secret-key"


@pytest.fixture
def plan(db: Database) -> Database:
    create_test_plan(db)  # "retail", USD
    return db


def new_account(db: Database, balance: str = "1") -> int:
    with db.transaction() as s:
        return create_account(s, "retail", balance=Decimal(balance)).id


def make(db: Database, out: Path, count: int = 1, value: str = "5", currency: str = "USD",
         **kw) -> list[str]:
    return [v.code for v in generate(db, count, Decimal(value), currency, out, **kw, key=KEY)]


def balance_of(db: Database, account_id: int) -> tuple[Decimal, Decimal]:
    with db.transaction() as s:
        account = s.get(Account, account_id)
        assert account is not None
        return account.balance, ledger_sum(s, account_id)


def voucher_entries(db: Database) -> list[LedgerEntry]:
    with db.transaction() as s:
        return list(s.scalars(select(LedgerEntry).where(LedgerEntry.kind == EntryKind.VOUCHER)))


def status_of(db: Database, code: str) -> VoucherStatus:
    return find(db, code, key=KEY).status


def mistype(code: str) -> str:
    """The code with its check digit wrong."""
    return code[:-1] + str((int(code[-1]) + 1) % 10)


# --------------------------------------------------------------------------- generate


def test_generate_writes_the_only_clear_copy(plan: Database, tmp_path):
    out = tmp_path / "vouchers.csv"
    issued = generate(plan, 200, Decimal("2.50"), "usd", out, expires_on=date(2027, 6, 30),
                      batch="promo-1", key=KEY)
    codes = [v.code for v in issued]
    assert len(set(codes)) == 200
    assert all(len(c) == 14 and c.isdigit() and luhn_valid(c) and c[0] != "0" for c in codes)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    rows = list(csv.DictReader(out.open()))
    assert [r["code"] for r in rows] == codes
    assert rows[0] == {"code": codes[0], "value": "2.50", "currency": "USD",
                       "expires_on": "2027-06-30", "batch": "promo-1"}

    with plan.transaction() as s:
        vouchers = s.scalars(select(Voucher)).all()
        assert len(vouchers) == 200
        # Keyed hashes: without the server's key a stolen database tells nothing.
        assert {v.code_hash for v in vouchers} == {code_hash(c, KEY) for c in codes}
        assert not {v.code_hash for v in vouchers} & {
            hashlib.sha256(c.encode()).hexdigest() for c in codes}
        assert {v.last4 for v in vouchers} == {c[-4:] for c in codes}
        assert all(v.status is VoucherStatus.NEW and v.value == Decimal("2.50")
                   and v.currency == "USD" and v.batch == "promo-1" for v in vouchers)
    # No code, in clear, anywhere in the database.
    with plan.engine.connect() as conn:
        for table in inspect(conn).get_table_names():
            for row in conn.execute(text(f'SELECT * FROM "{table}"')):
                cells = " ".join(str(cell) for cell in row)
                assert not any(c in cells for c in codes), table

    longer = make(plan, tmp_path / "long.csv", 3, length=20)
    assert all(len(c) == 20 and luhn_valid(c) for c in longer)
    assert find(plan, longer[0], key=KEY).batch.startswith("V")  # a generated batch label


@pytest.mark.parametrize("count, value, currency, length, error", [
    (0, "5", "USD", 14, "count"),
    (100_001, "5", "USD", 14, "count"),
    (1, "0", "USD", 14, "positive"),
    (1, "-5", "USD", 14, "positive"),
    (1, "0.0000001", "USD", 14, "decimal places"),
    (1, "5", "US", 14, "three letters"),
    (1, "5", "USDX", 14, "three letters"),
    (1, "5", "U$D", 14, "three letters"),
    (1, "5", "USD", 6, "length"),
])
def test_generate_refusals(plan: Database, tmp_path, count, value, currency, length, error):
    out = tmp_path / "v.csv"
    with pytest.raises(ValueError, match=error):
        generate(plan, count, Decimal(value), currency, out, length=length, key=KEY)
    assert not out.exists()
    with plan.transaction() as s:
        assert s.scalar(select(func.count()).select_from(Voucher)) == 0


def test_generate_never_overwrites_a_file(plan: Database, tmp_path):
    out = tmp_path / "v.csv"
    out.write_text("precious\n")
    with pytest.raises(FileExistsError):
        generate(plan, 1, Decimal(5), "USD", out, key=KEY)
    assert out.read_text() == "precious\n"
    with plan.transaction() as s:
        assert s.scalar(select(func.count()).select_from(Voucher)) == 0


# --------------------------------------------------------------------------- redeem


def test_redeem_once(plan: Database, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    (code,) = make(plan, tmp_path / "v.csv", value="5")
    first, second = new_account(plan, "1"), new_account(plan, "1")

    done = redeem(plan, code, account_id=first, key=KEY)
    assert (done.verdict, done.amount, done.balance, done.currency, done.last4) == (
        V.OK, Decimal(5), Decimal(6), "USD", code[-4:])
    assert balance_of(plan, first) == (Decimal(6), Decimal(6))
    (entry,) = voucher_entries(plan)
    info = find(plan, code, key=KEY)
    assert (entry.account_id, entry.amount, entry.ref) == (first, Decimal(5),
                                                           f"voucher:{info.id}")
    assert info.status is VoucherStatus.REDEEMED and info.redeemed_at is not None
    with plan.transaction() as s:
        assert info.redeemed_by == s.get(Account, first).number  # type: ignore[union-attr]

    # Spaces or dashes between digit groups are fine; the code is spent all the same.
    again = redeem(plan, f"{code[:4]} {code[4:8]}-{code[8:]}", account_id=first, key=KEY)
    assert (again.verdict, again.amount, again.balance) == (V.USED, Decimal(0), Decimal(6))
    assert redeem(plan, code, account_id=second, key=KEY).verdict is V.USED
    assert balance_of(plan, second) == (Decimal(1), Decimal(1))
    assert len(voucher_entries(plan)) == 1
    assert code not in caplog.text and code[-4:] in caplog.text


def test_expired_void_and_wrong_currency(plan: Database, tmp_path):
    account = new_account(plan, "0")
    (dated,) = make(plan, tmp_path / "dated.csv", expires_on=date(2027, 1, 31))
    assert redeem(plan, dated, account_id=account, today=date(2027, 2, 1),
                  key=KEY).verdict is V.EXPIRED
    assert status_of(plan, dated) is VoucherStatus.NEW
    # The expiry date is the last day of use.
    assert redeem(plan, dated, account_id=account, today=date(2027, 1, 31),
                  key=KEY).verdict is V.OK

    (voided,) = make(plan, tmp_path / "void.csv")
    assert void(plan, voided, key=KEY).status is VoucherStatus.VOID
    assert void(plan, voided, key=KEY).status is VoucherStatus.VOID  # twice: harmless
    assert redeem(plan, voided, account_id=account, key=KEY).verdict is V.VOID
    with pytest.raises(LedgerError, match="already redeemed"):
        void(plan, dated, key=KEY)

    (euros,) = make(plan, tmp_path / "eur.csv", currency="EUR")
    wrong = redeem(plan, euros, account_id=account, key=KEY)
    assert (wrong.verdict, wrong.amount, wrong.balance) == (V.WRONG_CURRENCY, 0, Decimal(5))
    assert status_of(plan, euros) is VoucherStatus.NEW

    assert balance_of(plan, account) == (Decimal(5), Decimal(5))
    assert len(voucher_entries(plan)) == 1
    with pytest.raises(ValueError, match="check digit"):
        find(plan, mistype(euros), key=KEY)
    with pytest.raises(NotFound):
        void(plan, _unknown_code(euros), key=KEY)


def _unknown_code(code: str) -> str:
    """Another code with a valid check digit that was never issued."""
    from ivr.secrets import with_check_digit

    body = code[:-1]
    return with_check_digit(body[:-1] + str((int(body[-1]) + 1) % 10))


def test_wrong_codes_without_a_card(plan: Database, tmp_path):
    account = new_account(plan, "1")
    (code,) = make(plan, tmp_path / "v.csv")
    for typed in (mistype(code), _unknown_code(code), "", "12ab", "7"):
        result = redeem(plan, typed, account_id=account, key=KEY)
        assert (result.verdict, result.failures) == (V.INVALID, 0)
    assert status_of(plan, code) is VoucherStatus.NEW
    assert balance_of(plan, account) == (Decimal(1), Decimal(1))


def test_wrong_codes_lock_the_card_like_pins(plan: Database, tmp_path):
    card = new_card(plan, Decimal("1"))
    with plan.transaction() as s:
        account = s.get(Card, card.card_id).account_id  # type: ignore[union-attr]
    good, later = make(plan, tmp_path / "v.csv", 2, value="3")

    def typed(code: str) -> tuple[V, int]:
        r = redeem(plan, code, account_id=account, card_id=card.card_id, max_failures=3,
                   key=KEY)
        return r.verdict, r.failures

    # A bad check digit is refused without looking the code up, but still counts.
    statements: list[str] = []

    def seen(conn, cursor, statement, *args) -> None:  # noqa: ANN001
        statements.append(statement)

    event.listen(plan.engine, "before_cursor_execute", seen)
    try:
        assert typed(mistype(good)) == (V.INVALID, 1)
    finally:
        event.remove(plan.engine, "before_cursor_execute", seen)
    assert statements and not any("vouchers" in st for st in statements)

    assert typed(_unknown_code(good)) == (V.INVALID, 2)  # looked up: unknown
    assert typed(good) == (V.OK, 0)  # a good code resets the count
    assert typed(good) == (V.USED, 0)  # a spent code is no guess: not counted
    assert typed(mistype(later)) == (V.INVALID, 1)
    assert typed(_unknown_code(later)) == (V.INVALID, 2)
    assert typed(mistype(later)) == (V.LOCKED, 3)
    with plan.transaction() as s:
        row = s.get(Card, card.card_id)
        assert row is not None
        assert (row.status, row.failed_codes) == (CardStatus.LOCKED, 3)
    # Locked, even the right code redeems nothing.
    assert typed(later) == (V.LOCKED, 3)
    assert status_of(plan, later) is VoucherStatus.NEW
    assert balance_of(plan, account) == (Decimal(4), Decimal(4))


def test_card_must_belong_to_the_account(plan: Database, tmp_path):
    card = new_card(plan, Decimal("1"))
    other = new_account(plan)
    (code,) = make(plan, tmp_path / "v.csv")
    with pytest.raises(LedgerError, match="does not belong"):
        redeem(plan, code, account_id=other, card_id=card.card_id, key=KEY)
    with pytest.raises(NotFound):
        redeem(plan, code, account_id=999_999, key=KEY)
    assert status_of(plan, code) is VoucherStatus.NEW


# --------------------------------------------------------------------------- concurrency


@pytest.mark.parametrize("accounts", ["same", "different"])
def test_20_concurrent_redemptions_give_exactly_one_credit(plan: Database, tmp_path,
                                                            accounts: str):
    (code,) = make(plan, tmp_path / "v.csv", value="7.25")
    ids = ([new_account(plan, "1")] * 20 if accounts == "same"
           else [new_account(plan, "1") for _ in range(20)])
    barrier = threading.Barrier(20)

    def attempt(account_id: int):  # noqa: ANN202
        barrier.wait()
        return account_id, redeem(plan, code, account_id=account_id, key=KEY)

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(attempt, ids))

    verdicts = [r.verdict for _, r in results]
    assert verdicts.count(V.OK) == 1 and verdicts.count(V.USED) == 19
    winner = next(a for a, r in results if r.verdict is V.OK)
    (entry,) = voucher_entries(plan)
    assert (entry.account_id, entry.amount) == (winner, Decimal("7.25"))
    info = find(plan, code, key=KEY)
    assert entry.ref == f"voucher:{info.id}" and info.status is VoucherStatus.REDEEMED
    for account_id in set(ids):
        balance, total = balance_of(plan, account_id)
        assert balance == total  # the cached balance is the ledger's sum
        assert balance == (Decimal("8.25") if account_id == winner else Decimal(1))


def test_a_code_stored_by_an_earlier_version_is_still_redeemed_once(plan, tmp_path):
    """Earlier versions stored a plain SHA-256; such a code still works, and a code of
    the new scheme is found only with the right key."""
    account = new_account(plan)
    old_code = make(plan, tmp_path / "old.csv", 1)[0]
    with plan.transaction() as s:
        voucher = s.scalar(select(Voucher))
        assert voucher is not None
        voucher.code_hash = hashlib.sha256(old_code.encode()).hexdigest()
    assert redeem(plan, old_code, account_id=account, key=KEY).verdict is V.OK
    assert redeem(plan, old_code, account_id=account, key=KEY).verdict is V.USED
    new_code = make(plan, tmp_path / "new.csv", 1)[0]
    assert redeem(plan, new_code, account_id=account, key=b"another key").verdict is V.INVALID
    assert redeem(plan, new_code, account_id=account, key=KEY).verdict is V.OK


def test_the_secret_key_is_made_once_and_kept_private(tmp_path):
    path = tmp_path / "data" / "secret.key"
    key = load_secret_key("", path)
    assert len(key) == 32 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_secret_key("", path) == key  # the same key on every start
    assert load_secret_key("configured", path) == b"configured"
