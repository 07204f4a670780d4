"""Mid-call top-up in a real Asterisk: *9 during a call holds the other party on music,
the caller pays through the menu, and the call goes on with a later limit."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import inspect, select, text

from ivr.ami import AmiClient
from ivr.asterisk import AsteriskInstance
from ivr.db.models import Account, EntryKind, Payment, PaymentMethod
from ivr.money import vouchers
from ivr.payments import SandboxGateway
from ivr.testing import free_port
from ivr.testing.access import AccessLine, Caller, account_state, cdrs
from ivr.testing.phone import Call, Phone

pytestmark = pytest.mark.asterisk

SANDBOX_OK = "4111111111111111"
SANDBOX_DECLINED = "4000000000000002"
CVV = "918"
TOPUP = {"low_balance_warning": 0, "final_warning": 0, "topup_amounts": "0.40,1.00"}


class Legs:
    """AMI events of one call: answer, hold music on the called leg, hang-ups."""

    def __init__(self, ami: AmiClient) -> None:
        self.events: list[tuple[float, dict[str, str]]] = []
        self._off = [ami.on_event(n, self._seen) for n in
                     ("DialEnd", "Hangup", "MusicOnHoldStart", "MusicOnHoldStop")]

    def _seen(self, event: object) -> None:
        self.events.append((time.monotonic(), dict(event)))  # type: ignore[call-overload]

    def close(self) -> None:
        for off in self._off:
            off()

    def first(self, name: str, **match: str) -> tuple[float, dict[str, str]] | None:
        for t, e in self.events:
            if e.get("Event") == name and all(e.get(k) == v for k, v in match.items()):
                return t, e
        return None

    async def wait(self, call: Call, name: str, timeout: float = 60, **match: str):
        deadline = time.monotonic() + timeout
        while (found := self.first(name, **match)) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {name} {match}; AGI: {[c.raw for c in call.commands]}")
            await asyncio.sleep(0.05)
        return found


async def answered_call(line: AccessLine, phone: Phone, legs: Legs, balance: str):
    card = line.card(balance)
    call = await phone.call("ivr-access", callerid="15550009000")
    caller = Caller(call)
    await caller.log_in(card)
    await caller.dial("2125550100")  # answers and stays on the line
    answered_at, dial_end = await legs.wait(call, "DialEnd", Uniqueid=call.id,
                                            DialStatus="ANSWER")
    return card, call, caller, answered_at, dial_end["DestChannel"]


async def pay_by_card(caller: Caller, number: str) -> None:
    await caller.answer("topup-menu", "1")
    await caller.answer("enter-credit-card", number + "#")
    await caller.answer("enter-expiry", "1239")
    await caller.answer("enter-cvv", CVV + "#")
    await caller.answer("confirm-or-reenter", "1")
    await caller.wait_prompt("choose-amount")
    await caller.call.send_dtmf("1")  # the first amount: 0.40


@pytest.mark.parametrize("access_line", [TOPUP], indirect=True)
async def test_star9_top_up_by_card_moves_the_limit_without_dropping_the_call(
    access_line: AccessLine, phone: Phone, ami: AmiClient, asterisk: AsteriskInstance,
    caplog: pytest.LogCaptureFixture,
):
    caplog.set_level(logging.DEBUG)
    legs = Legs(ami)
    try:
        # 0.20 buys 20 s to the US; the top-up of 0.40 makes it 60 s from answer.
        card, call, caller, answered_at, callee = await answered_call(
            access_line, phone, legs, "0.20")
        await asyncio.sleep(2)
        await call.send_dtmf("*9")
        held_at, _ = await legs.wait(call, "MusicOnHoldStart", Channel=callee)
        await pay_by_card(caller, SANDBOX_OK)
        await caller.wait_prompt("returning-to-call")
        resumed_at, _ = await legs.wait(call, "MusicOnHoldStop", Channel=callee)
        ended_at, _ = await legs.wait(call, "Hangup", timeout=90, Channel=callee)
        await caller.wait_prompt("call-cost")
        await call.hangup()
        await call.wait_ended()
        await access_line.server.wait_idle()
    finally:
        legs.close()

    assert held_at - answered_at < 5  # the called party was put on hold at once
    assert resumed_at - answered_at > 20  # the menu outlasted the original grant ...
    assert abs((ended_at - answered_at) - 60) <= 1.0, ended_at - answered_at  # ... new cut
    heard = caller.heard
    assert heard.index("topup-done") < heard.index("returning-to-call")
    assert "number:1111" not in heard and "digits:1111" in heard  # last four read back
    balance, reserved, entries = account_state(access_line, card.account)
    assert [e.kind for e in entries] == [EntryKind.TOPUP, EntryKind.TOPUP, EntryKind.CALL]
    assert entries[1].amount == Decimal("0.40") and entries[2].amount == Decimal("-0.60")
    assert balance == 0 and reserved == 0
    (cdr,) = cdrs(access_line)
    assert cdr.billable_seconds == 60
    # Neither the card number nor the CVV is anywhere: our logs, Asterisk's, the database.
    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("ivr"))
    assert "payment" in ours
    assert_nowhere(access_line, asterisk, ours, [SANDBOX_OK, CVV])


@pytest.mark.parametrize("access_line", [TOPUP], indirect=True)
async def test_declined_card_and_wrong_code_leave_the_old_limit(
    access_line: AccessLine, phone: Phone, ami: AmiClient
):
    legs = Legs(ami)
    try:
        card, call, caller, answered_at, callee = await answered_call(
            access_line, phone, legs, "0.30")
        await asyncio.sleep(1)
        await call.send_dtmf("*9")
        await legs.wait(call, "MusicOnHoldStart", Channel=callee)
        await pay_by_card(caller, SANDBOX_DECLINED)
        await caller.wait_prompt("payment-declined")
        await caller.wait_prompt("returning-to-call")
        await legs.wait(call, "MusicOnHoldStop", Channel=callee)
        await call.send_dtmf("*9")
        await caller.answer("topup-menu", "2")
        await caller.answer("enter-voucher", "12345678901234#")
        await caller.wait_prompt("invalid-voucher")
        await caller.wait_prompt("returning-to-call")
        back_at = time.monotonic()
        ended_at, _ = await legs.wait(call, "Hangup", timeout=90, Channel=callee)
        await call.hangup()
        await call.wait_ended()
        await access_line.server.wait_idle()
    finally:
        legs.close()
    # The old limit held: the call ended at its 30-second grant, or, when the menu was
    # still open then, as soon as it closed; and only the 30 seconds were charged.
    assert ended_at - answered_at >= 29
    assert ended_at <= max(answered_at + 30, back_at) + 3, (ended_at - answered_at,
                                                             back_at - answered_at)
    balance, reserved, entries = account_state(access_line, card.account)
    assert [e.kind for e in entries] == [EntryKind.TOPUP, EntryKind.CALL]
    assert balance == 0 and reserved == 0
    assert cdrs(access_line)[0].billable_seconds == 30
    with access_line.db.transaction() as s:
        assert [p.status for p in s.scalars(select(Payment))] == ["declined"]


@pytest.mark.parametrize("access_line", [TOPUP], indirect=True)
async def test_a_hash_after_each_fixed_length_entry_is_taken_as_its_end(
    access_line: AccessLine, phone: Phone
):
    """A caller who ends every entry with # by habit, the 1-key menu choice and the
    4-digit expiry included: each # ends its own entry, never the next one."""
    card = access_line.card("0")
    call = await phone.call("ivr-access")
    caller = Caller(call)
    await caller.log_in(card)
    await caller.wait_prompt("card-empty")
    await caller.answer("topup-menu", "1#")
    await caller.answer("enter-credit-card", SANDBOX_OK + "#")
    await caller.answer("enter-expiry", "1239#")
    await caller.answer("enter-cvv", CVV + "#")
    await caller.answer("confirm-or-reenter", "1#")
    await caller.wait_prompt("choose-amount")
    await call.send_dtmf("1")
    await caller.wait_prompt("topup-done")
    # A key typed while a prompt that takes none plays is not the next entry's first.
    await call.send_dtmf("5")
    await caller.dial("9996021234")  # a 2-second call
    await caller.wait_prompt("call-cost")
    await call.hangup()
    await call.wait_ended()
    await access_line.server.wait_idle()
    assert "card-not-valid" not in caller.heard and "no-input" not in caller.heard
    balance, _, entries = account_state(access_line, card.account)
    assert [e.kind for e in entries] == [EntryKind.TOPUP, EntryKind.CALL]
    assert entries[0].amount == Decimal("0.40") and balance == Decimal("0.40") + entries[1].amount
    assert [c.destination for c in cdrs(access_line)] == ["19996021234"]  # no 5 before it


@pytest.mark.parametrize("access_line", [TOPUP], indirect=True)
async def test_star9_while_returning_to_the_call_opens_the_menu_again(
    access_line: AccessLine, phone: Phone, ami: AmiClient
):
    legs = Legs(ami)
    try:
        card, call, caller, answered_at, callee = await answered_call(
            access_line, phone, legs, "0.60")
        await asyncio.sleep(1)
        await call.send_dtmf("*9")
        await caller.answer("topup-menu", "*")  # leaves the menu
        await caller.wait_prompt("returning-to-call")
        await call.send_dtmf("*9")  # while "returning to your call" plays
        await caller.wait_prompt("topup-menu", timeout=5)
        await call.send_dtmf("*")
        await caller.wait_prompt("returning-to-call")
        await legs.wait(call, "MusicOnHoldStop", Channel=callee)
        await call.hangup()
        await call.wait_ended()
        await access_line.server.wait_idle()
    finally:
        legs.close()
    assert caller.heard.count("topup-menu") == 2
    balance, reserved, entries = account_state(access_line, card.account)
    assert [e.kind for e in entries] == [EntryKind.TOPUP, EntryKind.CALL]
    assert reserved == 0 and balance == Decimal("0.60") + entries[1].amount


def assert_nowhere(line: AccessLine, asterisk: AsteriskInstance, ours: str,
                   secrets: list[str]) -> None:
    """No secret in our logs, Asterisk's logs, or any column of any table. A secret is
    looked for as a whole number (not inside a longer run of digits, nor as the
    fraction of a timestamp), so a 3-digit CVV is not "found" in a uniqueid."""
    patterns = [re.compile(rf"(?<![\d.]){s}(?!\d)") for s in secrets]
    texts = {"our log": ours}
    log_dir = Path(asterisk.host(f"{asterisk.state_dir}/log"))
    for path in log_dir.rglob("*"):
        if path.is_file():
            texts[str(path)] = path.read_text(errors="replace")
    with line.db.engine.connect() as conn:
        for table in inspect(conn).get_table_names():
            rows = conn.execute(text(f'SELECT * FROM "{table}"'))
            texts[f"table {table}"] = "\n".join(" ".join(map(str, row)) for row in rows)
    assert len(texts) > 10
    for where, data in texts.items():
        for pattern in patterns:
            assert not pattern.search(data), f"{pattern.pattern} in {where}"


@pytest.mark.parametrize("access_line", [TOPUP], indirect=True)
async def test_auto_recharge_fires_once_when_the_call_crosses_the_threshold(
    access_line: AccessLine, phone: Phone, ami: AmiClient
):
    card = access_line.card("0.15")  # 15 s to the US
    gateway = SandboxGateway(access_line.settings.payment_sandbox_secret.encode())
    with access_line.db.transaction() as s:
        account = s.scalar(select(Account).where(Account.number == card.account))
        assert account is not None
        # Below 0.10 (after 5 s of this call), charge 0.20 to the linked card.
        account.auto_recharge_threshold = Decimal("0.10")
        account.auto_recharge_amount = Decimal("0.20")
        account.auto_recharge_daily_cap = Decimal("1.00")
        s.add(PaymentMethod(account_id=account.id, token=gateway.token_for(SANDBOX_OK),
                            last4="1111", brand="visa", expiry="1239", active=True,
                            created_at=datetime.now(UTC)))
    legs = Legs(ami)
    try:
        call = await phone.call("ivr-access", callerid="15550009100")
        caller = Caller(call)
        await caller.log_in(card)
        await caller.dial("2125550100")
        answered_at, dial_end = await legs.wait(call, "DialEnd", Uniqueid=call.id,
                                                DialStatus="ANSWER")
        ended_at, _ = await legs.wait(call, "Hangup", timeout=90,
                                      Channel=dial_end["DestChannel"])
        await caller.wait_prompt("call-cost")
        await call.hangup()
        await call.wait_ended()
        await access_line.server.wait_idle()
    finally:
        legs.close()
    # 0.15 + 0.20 buys 35 s: the call ran past its first grant of 15 s.
    assert abs((ended_at - answered_at) - 35) <= 1.0, ended_at - answered_at
    balance, reserved, entries = account_state(access_line, card.account)
    assert [(e.kind, e.amount) for e in entries] == [
        (EntryKind.TOPUP, Decimal("0.15")), (EntryKind.TOPUP, Decimal("0.20")),
        (EntryKind.CALL, Decimal("-0.35"))]
    assert balance == 0 and reserved == 0
    with access_line.db.transaction() as s:
        payments = list(s.scalars(select(Payment)))
    assert [(p.source, p.status, p.amount) for p in payments] == [
        ("auto", "approved", Decimal("0.20"))]


@pytest.mark.parametrize("access_line", [TOPUP], indirect=True)
async def test_an_empty_card_is_offered_the_menu_and_a_recharge_code_lets_it_call(
    access_line: AccessLine, phone: Phone, tmp_path: Path
):
    card = access_line.card("0")
    (voucher,) = vouchers.generate(access_line.db, 1, Decimal("0.50"), "USD",
                                   tmp_path / "vouchers.csv", key=access_line.app.secret_key)
    call = await phone.call("ivr-access")
    caller = Caller(call)
    await caller.log_in(card)
    await caller.wait_prompt("card-empty")
    await caller.answer("topup-menu", "2")
    await caller.answer("enter-voucher", voucher.code + "#")
    await caller.wait_prompt("topup-done")
    await caller.dial("9996021234")  # a 2-second call, paid from the code
    await caller.wait_prompt("call-cost")
    await call.hangup()
    await call.wait_ended()
    await access_line.server.wait_idle()
    balance, _, entries = account_state(access_line, card.account)
    assert [(e.kind, e.amount) for e in entries] == [
        (EntryKind.VOUCHER, Decimal("0.50")), (EntryKind.CALL, Decimal("-0.02"))]
    assert balance == Decimal("0.48")
    # The code is spent: a second caller cannot use it.
    other = access_line.card("0")
    call = await phone.call("ivr-access")
    caller = Caller(call)
    await caller.log_in(other)
    await caller.answer("topup-menu", "2")
    await caller.answer("enter-voucher", voucher.code + "#")
    await caller.wait_prompt("voucher-used")
    await call.hangup()
    await call.wait_ended()


class _Mailbox:
    def __init__(self) -> None:
        self.envelopes: list[object] = []

    async def handle_DATA(self, server: object, session: object, envelope: object) -> str:
        self.envelopes.append(envelope)
        return "250 accepted"


SMTP_PORT = free_port()


@pytest.mark.parametrize(
    "access_line", [{**TOPUP, "smtp_host": "127.0.0.1", "smtp_port": SMTP_PORT}], indirect=True)
async def test_a_call_that_takes_the_balance_low_sends_one_e_mail(
    access_line: AccessLine, phone: Phone
):
    mailbox = _Mailbox()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=SMTP_PORT)
    smtp.start()
    try:
        card = access_line.card("1.00")
        with access_line.db.transaction() as s:
            account = s.scalar(select(Account).where(Account.number == card.account))
            assert account is not None
            account.email = "holder@example.test"
            account.low_balance_notice = Decimal("0.99")
        for _ in range(2):  # two calls below the line: one notice
            call = await phone.call("ivr-access")
            caller = Caller(call)
            await caller.log_in(card)
            await caller.dial("9996021234")  # 2 s: 0.02
            await caller.wait_prompt("call-cost")
            await call.hangup()
            await call.wait_ended()
            await access_line.server.wait_idle()
        for _ in range(50):
            if mailbox.envelopes:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
    finally:
        smtp.stop()
    assert len(mailbox.envelopes) == 1
    body = mailbox.envelopes[0].content.decode()  # type: ignore[attr-defined]
    assert card.account in body and "0.98" in body  # sent after the first call


@pytest.mark.parametrize("access_line", [TOPUP], indirect=True)
async def test_sigterm_hands_a_caller_in_the_menu_back_to_the_call(
    access_line: AccessLine, phone: Phone, ami: AmiClient, tmp_path: Path,
):
    """`ivr serve` stopped (SIGTERM) while a caller is in the *9 menu: the caller goes back
    to the call at once (the bridge goes on, its limit restored), not after the grace. The
    access route's session, which holds the bridged call, gets the grace, then is ended
    (the call goes on under Asterisk's limit; the next server adopts it). No traceback,
    and one line says what shutdown did."""
    await access_line.server.shutdown(grace=1)  # its port goes to a real `ivr serve`
    s = access_line.settings
    env = dict(
        os.environ, IVR_DATA_DIR=str(s.data_dir), IVR_DATABASE_URL=s.database_url,
        IVR_AGI_PORT=str(s.agi_port), IVR_AMI_PORT=str(s.ami_port), IVR_AMI_SECRET=s.ami_secret,
        IVR_ASTERISK_INSTANCE=s.asterisk_instance,
        IVR_ASTERISK_SANDBOX_DIR=str(s.asterisk_sandbox_dir), IVR_ACCESS_LANGUAGES="en",
        IVR_DIAL_TIMEOUT="4", IVR_LOW_BALANCE_WARNING="0", IVR_FINAL_WARNING="0",
        IVR_TOPUP_AMOUNTS="0.40,1.00", IVR_SHUTDOWN_GRACE="15",
        IVR_WEB_BIND="127.0.0.1:0",  # the console on a free port: tests run side by side
    )
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as out:
        server = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ivr.cli", "serve", env=env, stdout=out, stderr=out)
    legs = Legs(ami)
    try:
        deadline = time.monotonic() + 30
        while "FastAGI listening" not in log_path.read_text():
            assert server.returncode is None and time.monotonic() < deadline, \
                log_path.read_text()
            await asyncio.sleep(0.1)
        card, call, caller, answered_at, callee = await answered_call(
            access_line, phone, legs, "1.00")
        await call.send_dtmf("*9")
        await legs.wait(call, "MusicOnHoldStart", Channel=callee)
        await caller.wait_prompt("topup-menu")
        server.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()
        resumed_at, _ = await legs.wait(call, "MusicOnHoldStop", timeout=30, Channel=callee)
        assert resumed_at - stopped_at < 5, resumed_at - stopped_at  # not after the grace
        assert await asyncio.wait_for(server.wait(), 30) == 0
        assert legs.first("Hangup", Channel=callee) is None  # the call goes on
        await call.hangup()
        await call.wait_ended()
    finally:
        legs.close()
        if server.returncode is None:
            server.kill()
            await server.wait()
    log = log_path.read_text()
    assert "shutdown: 1 call(s) handed back to the dialplan, 1 cancelled" in log, log
    assert "Traceback" not in log and "CancelledError" not in log, log
