"""The 0800 revalue line in a real Asterisk (context ivr-revalue, route revalue), called
from the Local-channel test phone: a code issued, read out with SAY DIGITS and sent by
SMS (to a local HTTP receiver, sms_mode http); a direct recharge completed by the
simulated operator over HTTP; an operator timing out (the caller told it is pending, the
money held, the reconciler settling it once); the withheld caller-ID path; codes never in
clear in our logs, Asterisk's logs or the database; and twenty callers at once for the
last code of a value."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from ivr.agi import AgiServer
from ivr.ami import AmiClient
from ivr.app import App
from ivr.asterisk import AsteriskInstance
from ivr.config import Settings
from ivr.db import Database
from ivr.db.models import EntryKind
from ivr.prompts import Voice
from ivr.revalue import codes, customers, lookup, service
from ivr.revalue.direct import HttpOperatorApi
from ivr.revalue.simulator import SimulatedOperator
from ivr.testing import free_port
from ivr.testing.access import Caller, account_state, create_test_plan, heard, new_account
from ivr.testing.phone import Call, Phone

pytestmark = pytest.mark.asterisk

OPERATOR = "Sim"
MOBILE = "+12015550123"
RECHARGE_CODE = "987654321012"


class Inbox:
    """An SMS gateway on loopback: keeps each POSTed {"to", "text"}."""

    def __init__(self) -> None:
        self.messages: list[dict[str, str]] = []
        inbox = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                inbox.messages.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/sms"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def inbox() -> Iterator[Inbox]:
    box = Inbox()
    yield box
    box.close()


@dataclass
class RevalueLine:
    app: App
    server: AgiServer
    db_file: Path
    accounts: dict[str, str] = field(default_factory=dict)  # msisdn -> account number

    @property
    def db(self) -> Database:
        return self.app.db

    def customer(self, msisdn: str, balance: str, mode: str = "code") -> str:
        """A customer of ``balance``, with ``OPERATOR``; returns their first code."""
        account = new_account(self.db, Decimal(balance))
        added = customers.add_customer(self.db, msisdn, region="US", mode=mode,
                                       account=account)
        lookup.add_ported(self.db, msisdn, OPERATOR)
        self.accounts[msisdn] = account
        return added.code

    def load_codes(self, tmp_path: Path, items: list[str], value: str = "10") -> None:
        path = tmp_path / "codes.txt"
        path.write_text("\n".join(items) + "\n")
        codes.import_codes(self.db, path, operator=OPERATOR, value=Decimal(value),
                           currency="USD", key=self.app.secret_key, low_stock=0)

    def money(self, msisdn: str = MOBILE) -> tuple[Decimal, Decimal, list[tuple[str, Decimal]]]:
        balance, reserved, entries = account_state(self.db, self.accounts[msisdn])
        return balance, reserved, [(e.kind.value, e.amount) for e in entries]


MakeLine = Callable[..., Awaitable[RevalueLine]]


@pytest.fixture
async def make_revalue_line(
    asterisk: AsteriskInstance, test_settings: Settings, instance_voice: Voice,
    server_ami: AmiClient, tmp_path: Path, inbox: Inbox,
) -> AsyncIterator[MakeLine]:
    """The revalue line as `ivr serve` wires it (the server's AMI), on a fresh SQLite
    file, SMS through the local inbox."""
    made: list[RevalueLine] = []

    async def make(**overrides: object) -> RevalueLine:
        db_file = tmp_path / "ivr.sqlite3"
        settings = test_settings.replace(**{
            "database_url": f"sqlite:///{db_file}",
            "sms_mode": "http", "sms_http_url": inbox.url,
            "revalue_products": f"{OPERATOR}=5,10,20", "revalue_default_amount": "10",
            "code_low_stock": 0,
            **overrides,
        })
        app = await asyncio.to_thread(App.build, settings, voice=instance_voice)
        create_test_plan(app.db)
        app.add_asterisk(server_ami)
        server = AgiServer(app.routes(), "127.0.0.1", settings.agi_port, header_timeout=2)
        await server.start()
        line = RevalueLine(app, server, db_file)
        made.append(line)
        return line

    yield make
    for line in made:
        await line.server.shutdown(grace=5)
        await line.app.close()
        line.app.dispose()


async def recharge_by_phone(phone: Phone, first_code: str, *, callerid: str = MOBILE[1:],
                            key: str = "2") -> tuple[Call, Caller]:
    """Call, give the first code, choose the amount by ``key`` and confirm."""
    call = await phone.call("ivr-revalue", callerid=callerid, timeout=30)
    caller = Caller(call)
    await caller.answer("enter-first-code", first_code + "#")
    await caller.answer("choose-recharge-amount", key)
    await caller.answer("confirm-amount", "1")
    return call, caller


def said_digits(call: Call) -> list[str]:
    return [c.args[0] for c in call.commands if c.verb == "SAY DIGITS"]


def database_bytes(directory: Path) -> bytes:
    """The SQLite database's files (with its journal or WAL) as they are on disk."""
    return b"".join(p.read_bytes() for p in sorted(directory.glob("ivr.sqlite3*")))


async def wait_for(check: Callable[[], bool], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


# --------------------------------------------------------------------------- code mode


async def test_code_read_out_sent_by_sms_and_never_in_clear_in_any_log(
        make_revalue_line: MakeLine, phone: Phone, inbox: Inbox, asterisk: AsteriskInstance,
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    line = await make_revalue_line()
    first_code = line.customer(MOBILE, "50.00")
    line.load_codes(tmp_path, [RECHARGE_CODE])
    log_file = asterisk.log_file
    log_start = log_file.stat().st_size if log_file.exists() else 0

    call, caller = await recharge_by_phone(phone, first_code)
    await caller.wait_prompt("repeat-code")
    await call.send_dtmf("*")  # once more, then let it end
    await caller.wait_prompt("repeat-code")
    await call.wait_ended(timeout=30)

    groups = ["9876", "5432", "1012"]
    assert said_digits(call)[-6:] == groups * 2  # the code, twice, in groups of four
    assert "goodbye" in caller.heard
    await wait_for(lambda: len(inbox.messages) == 1)
    assert inbox.messages == [{"to": MOBILE,
                               "text": "Your Sim recharge code of 10.00 USD: 9876 5432 1012"}]
    assert line.money() == (Decimal("40.00"), Decimal(0),
                            [("topup", Decimal("50.00")), ("revaluation", Decimal("-10.00"))])
    [rev] = service.list_revaluations(line.db)
    assert rev.state == "issued"

    # Neither code in our logs (the AGI commands are logged at DEBUG), in Asterisk's
    # log files, or in the database's files.
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("ivr.")
                     and not r.name.startswith("ivr.ami"))
    assert "SAY DIGITS" in ours or "<redacted>" in ours  # the commands were logged
    for secret in (RECHARGE_CODE, *groups[:2], first_code):
        assert secret not in ours
    log_dir = log_file.parent
    for path in log_dir.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if path == log_file:
                data = data[log_start:]
            for secret in (RECHARGE_CODE, "9876 5432", first_code):
                assert secret.encode() not in data, path
    await line.server.wait_idle()
    stored = database_bytes(tmp_path)
    assert stored  # the database is there
    for secret in (RECHARGE_CODE, first_code):
        assert secret.encode() not in stored


async def test_withheld_caller_id_keys_the_number(
        make_revalue_line: MakeLine, phone: Phone, inbox: Inbox, tmp_path: Path) -> None:
    line = await make_revalue_line()
    first_code = line.customer(MOBILE, "50.00")
    line.load_codes(tmp_path, [RECHARGE_CODE])
    call = await phone.call("ivr-revalue", callerid="", timeout=30)
    caller = Caller(call)
    await caller.answer("enter-mobile-number", MOBILE[2:] + "#")
    await caller.answer("enter-first-code", first_code + "#")
    await caller.answer("choose-recharge-amount", "#")  # the default, 10.00
    await caller.answer("confirm-amount", "1")
    await caller.wait_prompt("repeat-code")
    await call.send_dtmf("#")
    await call.wait_ended(timeout=30)
    assert "not-registered" not in caller.heard
    assert said_digits(call)[-3:] == ["9876", "5432", "1012"]
    assert line.money()[:2] == (Decimal("40.00"), Decimal(0))
    await wait_for(lambda: len(inbox.messages) == 1)


# --------------------------------------------------------------------------- direct mode


async def test_direct_http_recharge_completed(
        make_revalue_line: MakeLine, phone: Phone, inbox: Inbox) -> None:
    sim = SimulatedOperator(name=OPERATOR, answer_ms=50)
    async with sim.serving(port=free_port()) as served:
        line = await make_revalue_line(revalue_operators=f"{OPERATOR}=http:{served.url}@")
        first_code = line.customer(MOBILE, "50.00", mode="direct")
        call, caller = await recharge_by_phone(phone, first_code, key="3")
        await caller.wait_prompt("recharge-applied")
        await call.wait_ended(timeout=30)
        assert sim.recharged(MOBILE) == Decimal("20.00") and sim.recharges == 1
    assert line.money() == (Decimal("30.00"), Decimal(0),
                            [("topup", Decimal("50.00")), ("revaluation", Decimal("-20.00"))])
    [rev] = service.list_revaluations(line.db)
    assert (rev.state, rev.mode) == ("completed", "direct")
    await wait_for(lambda: len(inbox.messages) == 1)
    assert inbox.messages[0]["text"] == "Your Sim mobile was recharged with 20.00 USD."


async def test_operator_timing_out_is_pending_then_reconciled_completed_once(
        make_revalue_line: MakeLine, phone: Phone, inbox: Inbox) -> None:
    sim = SimulatedOperator(name=OPERATOR, behaviour="timeout:8000")
    async with sim.serving(port=free_port()) as served:
        line = await make_revalue_line(revalue_operators=f"{OPERATOR}=http:{served.url}@",
                                       revalue_timeout=4.0, revalue_wait_timeout=2.0)
        first_code = line.customer(MOBILE, "50.00", mode="direct")
        call, caller = await recharge_by_phone(phone, first_code)
        await caller.wait_prompt("recharge-pending", timeout=30)
        await call.wait_ended(timeout=30)
        assert "recharge-in-progress" in caller.heard
        # Told pending; the operator has not answered: the money is held.
        await line.server.wait_idle()  # the route waited for the operator's timeout
        assert line.money()[:2] == (Decimal("50.00"), Decimal("10.00"))
        [rev] = service.list_revaluations(line.db)
        assert rev.state == "unknown"
        assert [m["text"] for m in inbox.messages] == [
            "Your Sim recharge of 10.00 USD is being processed; we will confirm it by "
            "text message."]

        async with HttpOperatorApi(served.url, operator=OPERATOR, timeout=5) as api:
            first = await service.reconcile(line.db, {OPERATOR: api}, older_than=timedelta(0))
            again = await service.reconcile(line.db, {OPERATOR: api}, older_than=timedelta(0))
        assert [o.state for o in first] == [service.State.COMPLETED] and again == []
        assert sim.recharges == 1
    assert line.money() == (Decimal("40.00"), Decimal(0),
                            [("topup", Decimal("50.00")), ("revaluation", Decimal("-10.00"))])


# --------------------------------------------------------------------------- the last code


CALLERS = 20


async def test_twenty_callers_at_once_for_the_last_code(
        make_revalue_line: MakeLine, phone: Phone, inbox: Inbox, tmp_path: Path) -> None:
    line = await make_revalue_line()
    numbers = [f"+1201555{1000 + i:04d}" for i in range(CALLERS)]
    first_codes = [line.customer(n, "20.00") for n in numbers]
    line.load_codes(tmp_path, [RECHARGE_CODE])

    async def one(msisdn: str, first_code: str) -> Call:
        call, caller = await recharge_by_phone(phone, first_code, callerid=msisdn[1:])
        await call.wait_ended(timeout=120)
        return call

    calls = await asyncio.gather(*(one(n, c) for n, c in zip(numbers, first_codes,
                                                               strict=True)))
    got = [i for i, c in enumerate(calls) if RECHARGE_CODE[:4] in said_digits(c)]
    refused = [i for i, c in enumerate(calls) if "no-codes-left" in heard(c.commands)]
    assert len(got) == 1 and len(refused) == CALLERS - 1
    for i, msisdn in enumerate(numbers):
        expected = Decimal("10.00") if i in got else Decimal("20.00")
        balance, reserved, entries = line.money(msisdn)
        assert (balance, reserved) == (expected, Decimal(0))
        assert sum(1 for kind, _ in entries if kind == EntryKind.REVALUATION.value) == (
            1 if i in got else 0)
    states = sorted(r.state for r in service.list_revaluations(line.db, limit=50))
    assert states == ["issued"] + ["refused"] * (CALLERS - 1)
