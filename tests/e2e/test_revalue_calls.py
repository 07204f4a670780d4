"""The 0800 revalue line in a real Asterisk (context ivr-revalue, route revalue), called
from the Local-channel test phone, mode a (codes): a code issued, read out with SAY DIGITS
and sent by SMS (to a local HTTP receiver, sms_mode http), never in clear in our logs,
Asterisk's logs or the database; the withheld caller-ID path; the first code locked after
``pin_max_failures`` wrong ones; twenty callers at once for the last code of a value.
Direct recharges are in test_revalue_direct_calls.py."""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal
from pathlib import Path

import pytest
import revalue_lines
from revalue_lines import (
    MOBILE,
    RECHARGE_CODE,
    Inbox,
    MakeLine,
    database_bytes,
    recharge_by_phone,
    said_digits,
    wait_for,
)

from ivr.asterisk import AsteriskInstance
from ivr.db.models import EntryKind
from ivr.revalue import codes, customers, service
from ivr.testing.access import Caller, heard
from ivr.testing.phone import Call, Phone

pytestmark = pytest.mark.asterisk

# The shared fixtures, under the names the tests take them by.
inbox = revalue_lines.inbox
make_revalue_line = revalue_lines.make_revalue_line



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


async def test_wrong_first_code_locks_the_customer(
        make_revalue_line: MakeLine, phone: Phone, inbox: Inbox, tmp_path: Path) -> None:
    line = await make_revalue_line(pin_max_failures=3)
    first_code = line.customer(MOBILE, "50.00")
    line.load_codes(tmp_path, [RECHARGE_CODE])
    wrong = str((int(first_code) + 1) % 10 ** len(first_code)).zfill(len(first_code))
    call = await phone.call("ivr-revalue", callerid=MOBILE[1:], timeout=30)
    caller = Caller(call)
    for _ in range(3):
        await caller.answer("enter-first-code", wrong + "#")
        await caller.wait_prompt("wrong-first-code")
    await caller.wait_prompt("too-many-attempts")
    await call.wait_ended(timeout=30)
    assert caller.heard.count("enter-first-code") == 3
    locked = customers.get_customer(line.db, MOBILE, region="US")
    assert (locked.locked, locked.failures) == (True, 3)

    # The right code now: told the customer is locked, and nothing more.
    call = await phone.call("ivr-revalue", callerid=MOBILE[1:], timeout=30)
    caller = Caller(call)
    await caller.answer("enter-first-code", first_code + "#")
    await caller.wait_prompt("revalue-locked")
    await call.wait_ended(timeout=30)
    assert "choose-recharge-amount" not in caller.heard
    assert customers.get_customer(line.db, MOBILE, region="US").locked
    assert line.money() == (Decimal("50.00"), Decimal(0), [("topup", Decimal("50.00"))])
    assert service.list_revaluations(line.db) == [] and inbox.messages == []
    assert codes.stock(line.db)[0].available == 1


# --------------------------------------------------------------------------- direct mode


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
