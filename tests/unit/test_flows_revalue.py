"""The revalue line (ivr.flows.revalue) against the scripted fake Asterisk, on an
application built for each test: the caller-ID and withheld paths, wrong first codes
locking, a code issued and read out, none left, a refusal for lack of money with its SMS,
a direct recharge completed through the simulated operator (served on loopback), one that
times out (pending, settled later by the reconciler) and a hang-up mid-way. The money is
checked exactly: balance, held amount and ledger entries of the customer's account."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from ivr.config import ConfigError, load_settings
from ivr.db.models import EntryKind
from ivr.flows.revalue import code_groups, parse_products, products_for
from ivr.revalue import codes, customers, lookup, service
from ivr.revalue.callbacks import callback_server
from ivr.revalue.direct import HttpOperatorApi
from ivr.revalue.messages import sms_notifier
from ivr.revalue.simulator import SimulatedOperator
from ivr.testing import free_port
from ivr.testing.access import account_state, new_account
from ivr.testing.scripted import Line, LineFactory, ScriptedCaller

MOBILE = "+12015550123"  # the customer's mobile (a valid US number)
OPERATOR = "Sim"
CODES = ["111122223333", "444455556666"]


@dataclass
class Sms:
    """An SMS sender that keeps what it was given (App.notice_senders replaced)."""

    sent: list[tuple[str, str]] = field(default_factory=list)

    async def send(self, to: str, subject: str, body: str) -> None:
        self.sent.append((to, body))


@dataclass
class Rig:
    line: Line
    sms: Sms
    account: str  # the customer's account's number
    first_code: str

    async def call(self, caller: ScriptedCaller, *, callerid: str = MOBILE[1:]) -> list[str]:
        return await self.line.call(caller, route="revalue", callerid=callerid)

    def money(self) -> tuple[Decimal, Decimal, list[tuple[EntryKind, Decimal]]]:
        balance, reserved, entries = account_state(self.line.db, self.account)
        return balance, reserved, [(e.kind, e.amount) for e in entries]

    def revaluations(self) -> list[service.RevaluationInfo]:
        return service.list_revaluations(self.line.db)


async def make_rig(make_line: LineFactory, tmp_path: Path, *, balance: str = "50.00",
                   mode: str = "code", codes_: list[str] | None = None,
                   **settings: object) -> Rig:
    line = await make_line(revalue_products=f"{OPERATOR}=5,10,20",
                           revalue_default_amount="10", **settings)
    sms = Sms()
    line.app.notice_senders = lambda ami: (None, sms)  # type: ignore[method-assign]
    db = line.db
    account = new_account(db, Decimal(balance))
    added = customers.add_customer(db, MOBILE, region="US", mode=mode, account=account)
    lookup.add_ported(db, MOBILE, OPERATOR)
    if codes_:
        path = tmp_path / "codes.txt"
        path.write_text("\n".join(codes_) + "\n")
        codes.import_codes(db, path, operator=OPERATOR, value=Decimal("10"), currency="USD",
                           key=line.app.secret_key, low_stock=0)
    return Rig(line, sms, account, added.code)


def first_code(rig: Rig, *more: str) -> dict[str, list[str | None]]:
    return {"enter-first-code": [rig.first_code, *more]}


UP_TO_AMOUNT = ["revalue-welcome", "enter-first-code", "choose-recharge-amount"]


# --------------------------------------------------------------------------- settings


def test_products_setting() -> None:
    table = parse_products("OperatorA=5,10,20; *=5,10\n")
    assert table == {"operatora": [Decimal(5), Decimal(10), Decimal(20)],
                     "*": [Decimal(5), Decimal(10)]}
    settings = load_settings(environ={}).replace(revalue_products="OperatorA=1.50;*=5")
    assert products_for(settings, "operatora") == [Decimal("1.50")]
    assert products_for(settings, "Other") == [Decimal(5)]
    assert products_for(settings.replace(revalue_products=""), "Other") == []
    for bad in ("A=", "A=x", "A=-5", "=5", "A=5;a=10", "A=" + ",".join(["1"] * 10)):
        with pytest.raises(ConfigError):
            parse_products(bad)
    assert code_groups("1234567890") == ["1234", "5678", "90"]


# --------------------------------------------------------------------------- code mode


async def test_caller_id_path_code_issued_read_in_groups_and_sent(
        make_line: LineFactory, tmp_path: Path) -> None:
    rig = await make_rig(make_line, tmp_path, codes_=CODES, loyalty_points_per_unit="1")
    caller = ScriptedCaller({**first_code(rig), "choose-recharge-amount": ["2"],
                             "confirm-amount": ["1"], "repeat-code": ["*"]})
    commands = await rig.call(caller)

    said = ["your-code-is", "digits:1111", "digits:2222", "digits:3333", "code-sent-by-sms",
            "repeat-code"]
    assert caller.heard[:3] == UP_TO_AMOUNT
    tail = caller.heard[caller.heard.index("you-chose-amount"):]
    assert tail == ["you-chose-amount", "number:10", "digits/dollars", "confirm-amount",
                    *said, *said, "points-earned", "number:10", "loyalty-points", "goodbye"]
    assert 'SET VARIABLE "IVR_DONE" "1"' in commands and commands[-1] == "HANGUP"
    assert caller.left() == {}

    assert rig.money() == (Decimal("40.00"), Decimal(0),
                           [(EntryKind.TOPUP, Decimal("50.00")),
                            (EntryKind.REVALUATION, Decimal("-10.00"))])
    [rev] = rig.revaluations()
    assert (rev.state, rev.mode, rev.amount, rev.operator, rev.points) == (
        "issued", "code", Decimal("10.00"), OPERATOR, 10)
    assert rig.sms.sent == [(MOBILE, "Your Sim recharge code of 10.00 USD: 1111 2222 3333")]


async def test_the_issue_that_leaves_the_pool_low_sends_the_notice(
        make_line: LineFactory, tmp_path: Path) -> None:
    rig = await make_rig(make_line, tmp_path, codes_=CODES, code_low_stock=1,
                         operator_email="stock@example.org")
    email = Sms()
    rig.line.app.notice_senders = lambda ami: (email, rig.sms)  # type: ignore[method-assign]
    caller = ScriptedCaller({**first_code(rig), "choose-recharge-amount": ["2"],
                             "confirm-amount": ["1"]})
    await rig.call(caller)
    [(to, body)] = email.sent
    assert to == "stock@example.org" and "has 1 code(s) left" in body
    assert CODES[0] not in body and CODES[1] not in body


async def test_withheld_caller_id_keys_the_number_and_default_amount(
        make_line: LineFactory, tmp_path: Path) -> None:
    rig = await make_rig(make_line, tmp_path, codes_=CODES)
    caller = ScriptedCaller({"enter-mobile-number": ["12345", "2015550123"],
                             **first_code(rig), "choose-recharge-amount": ["#"],
                             "confirm-amount": ["1"]})
    await rig.call(caller, callerid="unknown")

    assert caller.prompts[:5] == ["revalue-welcome", "enter-mobile-number", "invalid-number",
                                  "enter-mobile-number", "enter-first-code"]
    assert "not-registered" not in caller.prompts  # withheld: nothing to say about it
    assert "digits:1111" in caller.heard
    assert rig.money()[:2] == (Decimal("40.00"), Decimal(0))


async def test_unregistered_caller_id_is_told_and_asked_for_the_number(
        make_line: LineFactory, tmp_path: Path) -> None:
    rig = await make_rig(make_line, tmp_path, codes_=CODES)
    caller = ScriptedCaller({"enter-mobile-number": [MOBILE[2:]], **first_code(rig),
                             "choose-recharge-amount": ["1", "1"],
                             "confirm-amount": ["2", "1"]})
    await rig.call(caller, callerid="12125550100")
    assert caller.prompts[:3] == ["revalue-welcome", "not-registered", "enter-mobile-number"]
    # 2 chose again: the menu twice, then 5.00 confirmed; no 5.00 code in the pool.
    assert caller.prompts.count("choose-recharge-amount") == 2
    assert "no-codes-left" in caller.prompts
    assert rig.money()[:2] == (Decimal("50.00"), Decimal(0))
    [rev] = rig.revaluations()
    assert (rev.state, rev.reason, rev.amount) == ("refused", "none_left", Decimal("5.00"))
    assert rig.sms.sent == [(MOBILE, "Your Sim recharge of 5.00 USD was refused: no "
                             "recharge code of that value is available. You have not "
                             "been charged.")]


async def test_wrong_code_n_times_locks_and_nothing_is_held(
        make_line: LineFactory, tmp_path: Path) -> None:
    rig = await make_rig(make_line, tmp_path, codes_=CODES, pin_max_failures=3)
    wrong = "0" if rig.first_code != "000000" else "1"
    caller = ScriptedCaller({"enter-first-code": [wrong * 6] * 3})
    commands = await rig.call(caller)
    assert caller.prompts == ["revalue-welcome", *["enter-first-code", "wrong-first-code"] * 3,
                              "too-many-attempts", "goodbye"]
    assert not any(rig.first_code in c or wrong * 6 in c for c in commands if
                   not c.startswith("GET DATA"))
    info = customers.get_customer(rig.line.db, MOBILE, region="US")
    assert info.locked and info.failures == 3

    # Locked: the right code is told so, and nothing is recharged.
    again = ScriptedCaller(first_code(rig))
    await rig.call(again)
    assert again.prompts == ["revalue-welcome", "enter-first-code", "revalue-locked", "goodbye"]
    assert rig.revaluations() == []
    assert rig.money()[:2] == (Decimal("50.00"), Decimal(0))


async def test_insufficient_funds_refused_with_the_reason_and_an_sms(
        make_line: LineFactory, tmp_path: Path) -> None:
    rig = await make_rig(make_line, tmp_path, balance="7.50", codes_=CODES)
    caller = ScriptedCaller({**first_code(rig), "choose-recharge-amount": ["2"],
                             "confirm-amount": ["1"]})
    await rig.call(caller)
    assert caller.prompts[-2:] == ["refused-insufficient-funds", "goodbye"]
    assert rig.money() == (Decimal("7.50"), Decimal(0), [(EntryKind.TOPUP, Decimal("7.50"))])
    [rev] = rig.revaluations()
    assert (rev.state, rev.reason) == ("refused", "insufficient_funds")
    assert rig.sms.sent == [(MOBILE, "Your Sim recharge of 10.00 USD was refused: your "
                             "account does not have enough credit (available 7.50). You "
                             "have not been charged.")]
    assert codes.stock(rig.line.db)[0].available == 2  # no code taken


async def test_hang_up_while_the_code_is_read_loses_nothing(
        make_line: LineFactory, tmp_path: Path) -> None:
    rig = await make_rig(make_line, tmp_path, codes_=CODES)
    caller = ScriptedCaller({**first_code(rig), "choose-recharge-amount": ["2"],
                             "confirm-amount": ["1"]}, hangup_at="your-code-is")
    await rig.call(caller)
    assert caller.heard[-1] == "your-code-is" and caller.dead
    # Issued and paid once; the customer has it by SMS.
    assert rig.money()[:2] == (Decimal("40.00"), Decimal(0))
    [rev] = rig.revaluations()
    assert rev.state == "issued"
    assert rig.sms.sent == [(MOBILE, "Your Sim recharge code of 10.00 USD: 1111 2222 3333")]


async def test_hang_up_at_the_confirmation_holds_nothing(
        make_line: LineFactory, tmp_path: Path) -> None:
    rig = await make_rig(make_line, tmp_path, codes_=CODES)
    caller = ScriptedCaller({**first_code(rig), "choose-recharge-amount": ["2"]},
                            hangup_at="confirm-amount")
    await rig.call(caller)
    assert rig.revaluations() == [] and rig.sms.sent == []
    assert rig.money()[:2] == (Decimal("50.00"), Decimal(0))


# --------------------------------------------------------------------------- direct mode


@pytest.fixture
async def operator_url() -> AsyncIterator[tuple[SimulatedOperator, str]]:
    sim = SimulatedOperator(name=OPERATOR)
    async with sim.serving(port=free_port()) as server:
        yield sim, server.url


async def test_direct_recharge_completed(make_line: LineFactory, tmp_path: Path,
                                         operator_url: tuple[SimulatedOperator, str]) -> None:
    sim, url = operator_url
    rig = await make_rig(make_line, tmp_path, mode="direct",
                         revalue_operators=f"{OPERATOR}=http:{url}@")
    caller = ScriptedCaller({**first_code(rig), "choose-recharge-amount": ["3"],
                             "confirm-amount": ["1"]})
    await rig.call(caller)
    assert caller.prompts[-2:] == ["recharge-applied", "goodbye"]
    assert sim.recharged(MOBILE) == Decimal("20.00") and sim.recharges == 1
    assert rig.money() == (Decimal("30.00"), Decimal(0),
                           [(EntryKind.TOPUP, Decimal("50.00")),
                            (EntryKind.REVALUATION, Decimal("-20.00"))])
    [rev] = rig.revaluations()
    assert (rev.state, rev.mode) == ("completed", "direct")
    assert rig.sms.sent == [(MOBILE, "Your Sim mobile was recharged with 20.00 USD.")]


async def test_direct_recharge_declined_is_released(
        make_line: LineFactory, tmp_path: Path,
        operator_url: tuple[SimulatedOperator, str]) -> None:
    sim, url = operator_url
    sim.set_behaviour("decline")
    rig = await make_rig(make_line, tmp_path, mode="direct",
                         revalue_operators=f"{OPERATOR}=http:{url}@")
    caller = ScriptedCaller({**first_code(rig), "choose-recharge-amount": ["1"],
                             "confirm-amount": ["1"]})
    await rig.call(caller)
    assert caller.prompts[-2:] == ["recharge-failed", "goodbye"]
    assert rig.money() == (Decimal("50.00"), Decimal(0), [(EntryKind.TOPUP, Decimal("50.00"))])
    assert rig.revaluations()[0].state == "declined"
    assert rig.sms.sent == [(MOBILE, "Your Sim recharge of 5.00 USD could not be made. "
                             "You have not been charged.")]


async def test_direct_operator_timing_out_is_pending_then_reconciled_once(
        make_line: LineFactory, tmp_path: Path,
        operator_url: tuple[SimulatedOperator, str]) -> None:
    sim, url = operator_url
    sim.set_behaviour("timeout:5000")
    rig = await make_rig(make_line, tmp_path, mode="direct",
                         revalue_operators=f"{OPERATOR}=http:{url}@", revalue_timeout=1.5,
                         revalue_wait_timeout=1.2)
    caller = ScriptedCaller({**first_code(rig), "choose-recharge-amount": ["2"],
                             "confirm-amount": ["1"]})
    commands = await rig.call(caller)
    heard = caller.prompts[caller.prompts.index("confirm-amount") + 1:]
    assert heard[0] == "recharge-in-progress" and "revalue-advert" in heard
    assert heard[-2:] == ["recharge-pending", "goodbye"]
    assert commands[-1] == "HANGUP"
    # The operator never answered in time: the money stays held.
    assert rig.money()[:2] == (Decimal("50.00"), Decimal("10.00"))
    [rev] = rig.revaluations()
    assert rev.state == "unknown"
    assert rig.sms.sent == [(MOBILE, "Your Sim recharge of 10.00 USD is being processed; "
                             "we will confirm it by text message.")]

    async with HttpOperatorApi(url, operator=OPERATOR, timeout=2) as api:
        for _ in range(2):  # a second pass finds nothing to do, and sends nothing
            await service.reconcile(rig.line.db, {OPERATOR: api}, older_than=timedelta(0),
                                    notify=sms_notifier(lambda: rig.sms))
    assert rig.money() == (Decimal("40.00"), Decimal(0),
                           [(EntryKind.TOPUP, Decimal("50.00")),
                            (EntryKind.REVALUATION, Decimal("-10.00"))])
    assert rig.revaluations()[0].state == "completed"
    assert sim.recharges == 1
    # The SMS the caller was promised, once.
    assert rig.sms.sent[1:] == [(MOBILE, "Your Sim mobile was recharged with 10.00 USD.")]


async def test_direct_settled_first_by_a_callback_is_texted_once(
        make_line: LineFactory, tmp_path: Path) -> None:
    port = free_port()
    rig = await make_rig(make_line, tmp_path, mode="direct", revalue_timeout=5,
                         revalue_operators=f"{OPERATOR}=http:http://127.0.0.1:{port}@")
    callbacks = callback_server({OPERATOR: b"secret"}, service.callback_handler(
        rig.line.db, notify=sms_notifier(lambda: rig.sms)), f"127.0.0.1:{free_port()}")
    await callbacks.start()
    # Recharged and called back at once, the answer to the request held 300 ms.
    sim = SimulatedOperator("timeout:300", name=OPERATOR, callback_secret=b"secret",
                            callback_url=f"{callbacks.url}/callbacks/{OPERATOR}")
    try:
        async with sim.serving(port=port):
            caller = ScriptedCaller({**first_code(rig), "choose-recharge-amount": ["2"],
                                     "confirm-amount": ["1"]})
            await rig.call(caller)
    finally:
        await callbacks.stop()
    assert sim.callbacks_sent == 1
    assert caller.prompts[-2:] == ["recharge-applied", "goodbye"]  # heard in the call
    assert rig.revaluations()[0].state == "completed"
    # Sent by the callback's path; the line does not send it again.
    assert rig.sms.sent == [(MOBILE, "Your Sim mobile was recharged with 10.00 USD.")]


async def test_direct_customer_without_an_interface_gets_a_code(
        make_line: LineFactory, tmp_path: Path) -> None:
    rig = await make_rig(make_line, tmp_path, mode="direct", codes_=CODES)
    caller = ScriptedCaller({**first_code(rig), "choose-recharge-amount": ["2"],
                             "confirm-amount": ["1"]})
    await rig.call(caller)
    assert "digits:1111" in caller.heard
    assert rig.revaluations()[0].mode == "code"


async def test_unknown_operator_is_told_and_nothing_held(
        make_line: LineFactory, tmp_path: Path) -> None:
    rig = await make_rig(make_line, tmp_path, codes_=CODES)
    lookup.remove_ported(rig.line.db, MOBILE)  # carrier data knows no operator for it
    caller = ScriptedCaller(first_code(rig))
    await rig.call(caller)
    assert caller.prompts == ["revalue-welcome", "enter-first-code", "operator-unknown",
                              "goodbye"]
    assert rig.revaluations() == []


async def test_two_callers_at_once_for_the_last_code(make_line: LineFactory,
                                                     tmp_path: Path) -> None:
    rig = await make_rig(make_line, tmp_path, codes_=CODES[:1])
    keys = {**first_code(rig), "choose-recharge-amount": ["2"], "confirm-amount": ["1"]}
    callers = [ScriptedCaller(keys), ScriptedCaller(keys)]
    await asyncio.gather(*(rig.call(c) for c in callers))
    got = [c for c in callers if "digits:1111" in c.heard]
    none = [c for c in callers if "no-codes-left" in c.prompts]
    assert len(got) == 1 and len(none) == 1
    assert rig.money()[:2] == (Decimal("40.00"), Decimal(0))
    assert sorted(r.state for r in rig.revaluations()) == ["issued", "refused"]
