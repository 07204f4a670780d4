"""Direct recharge IVR to IVR against a real Asterisk: the server dials the simulated
operator's IVR (dialplan/ivr-test.conf, context ivr-test-operator) through the test trunk,
keys the request in and reads the acknowledgement (ivr.revalue.ivr_operator)."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select

from ivr.ami import AmiClient
from ivr.asterisk import AsteriskInstance
from ivr.db import Database
from ivr.db.models import Account, Customer, EntryKind, LedgerEntry
from ivr.money.accounts import create_account
from ivr.revalue import service
from ivr.revalue.direct import parse_operators
from ivr.revalue.ivr_operator import IvrOperator
from ivr.revalue.service import State
from ivr.testing.access import AccessLine

pytestmark = pytest.mark.asterisk

OPERATOR = "SimIVR"
CODE = "864209753"  # the code the simulated operator accepts
_numbers = itertools.count(1)


@dataclass(frozen=True)
class Money:
    balance: Decimal
    reserved: Decimal
    captured: int  # REVALUATION ledger entries


def new_customer(db: Database, balance: str) -> tuple[int, str]:
    msisdn = f"+1555300{next(_numbers):04d}"
    with db.transaction() as s:
        account = create_account(s, "retail", balance=Decimal(balance))
        row = Customer(msisdn=msisdn, code_hash="not-used", mode="direct", pay="account",
                       account_id=account.id, language="en", failures=0, locked=False,
                       created_at=datetime.now(UTC))
        s.add(row)
        s.flush()
        return row.id, msisdn


def money(db: Database, customer_id: int) -> Money:
    with db.reading() as s:
        account = s.get_one(Account, s.get_one(Customer, customer_id).account_id)
        kinds = list(s.scalars(select(LedgerEntry.kind)
                               .where(LedgerEntry.account_id == account.id)))
        return Money(account.balance, account.reserved, kinds.count(EntryKind.REVALUATION))


class OperatorEvents:
    """What the simulated operator's IVR received (its UserEvent IvrTestOperator)."""

    def __init__(self, ami: AmiClient) -> None:
        self.seen: list[dict[str, str]] = []
        self._unsubscribe = ami.on_event("UserEvent", self._on_event)

    def _on_event(self, event: Any) -> None:
        if event.get("UserEvent") == "IvrTestOperator":
            self.seen.append({k: str(event.get(k, "")) for k in
                              ("Number", "Amount", "CodeSha1", "Ack")})

    def of(self, msisdn: str) -> list[dict[str, str]]:
        return [e for e in self.seen if e["Number"] == msisdn.removeprefix("+")]

    def close(self) -> None:
        self._unsubscribe()


@pytest.fixture
def operator_events(ami: AmiClient) -> Iterator[OperatorEvents]:
    events = OperatorEvents(ami)
    yield events
    events.close()


def ivr_operator(line: AccessLine, number: str, code: str = CODE,
                 timeout: float = 25) -> IvrOperator:
    """Built as the settings build it: ``NAME=ivr:NUMBER@CODE``."""
    iface = parse_operators(f"{OPERATOR}=ivr:{number}@{code}", timeout=timeout)[OPERATOR]
    client = iface.client(line.app)
    assert isinstance(client, IvrOperator)
    client.pause = 0.3
    return client


async def recharge(line: AccessLine, api: IvrOperator, amount: str
                   ) -> tuple[int, str, service.Outcome]:
    customer_id, msisdn = await asyncio.to_thread(new_customer, line.db, "150.00")
    held = await service.request(line.db, customer_id=customer_id, amount=Decimal(amount),
                                 operator=OPERATOR)
    assert held.state is State.HELD
    assert money(line.db, customer_id).reserved == Decimal(amount)
    outcome = await service.fulfil_direct(line.db, api, held.request_id)
    return customer_id, msisdn, outcome


async def until(check: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


async def test_acknowledged_recharge_is_completed_and_captured(
    access_line: AccessLine, operator_events: OperatorEvents, asterisk: AsteriskInstance,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    api = ivr_operator(access_line, "19994000")
    customer_id, msisdn, outcome = await recharge(access_line, api, "25.50")
    assert outcome.state is State.COMPLETED, outcome.reason
    assert money(access_line.db, customer_id) == Money(Decimal("124.50"), Decimal(0), 1)
    # What the operator's IVR received is what was sent.
    await until(lambda: operator_events.of(msisdn))
    assert operator_events.of(msisdn) == [
        {"Number": msisdn[1:], "Amount": "2550", "CodeSha1": sha1(CODE), "Ack": "1"}]
    # The acknowledgement is remembered: status says it, a repeat sends nothing again.
    assert (await api.status(outcome.request_id)).state.name == "COMPLETED"
    # Neither the code nor the keys in any record of the server's, at any level (the
    # panoramisk records are mostly the test phone's AMI user's, which reads the
    # simulated operator's dialplan events).
    keys = f"{msisdn[1:]}#2550#{CODE}#"
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("ivr"))
    assert "revalue-ivr" in logged or "recharge" in logged
    assert CODE not in logged and keys not in logged
    # Asterisk's log: the code only where the simulated operator's Read() printed what it
    # read (the operator's side); never a line of the server's side.
    await until(lambda: CODE in asterisk.log_file.read_text(errors="replace"))
    lines = [line for line in asterisk.log_file.read_text(errors="replace").splitlines()
             if CODE in line]
    assert lines and all("User entered" in line for line in lines), lines


async def test_declined_by_the_operator_is_released(
    access_line: AccessLine, operator_events: OperatorEvents,
) -> None:
    api = ivr_operator(access_line, "19994000", code="1111")
    customer_id, msisdn, outcome = await recharge(access_line, api, "10.00")
    assert outcome.state is State.DECLINED
    assert "declined by the operator" in outcome.reason
    assert money(access_line.db, customer_id) == Money(Decimal("150.00"), Decimal(0), 0)
    await until(lambda: operator_events.of(msisdn))
    assert operator_events.of(msisdn)[0]["CodeSha1"] == sha1("1111")
    # Over 100.00 the simulated operator declines a right code too.
    customer_id, _, outcome = await recharge(access_line, ivr_operator(access_line, "19994000"),
                                             "120.00")
    assert outcome.state is State.DECLINED
    assert money(access_line.db, customer_id).reserved == 0


async def test_no_acknowledgement_stays_unknown_and_held(
    access_line: AccessLine, operator_events: OperatorEvents,
) -> None:
    # The operator's IVR reads the request and hangs up without a key.
    api = ivr_operator(access_line, "19993000")
    customer_id, msisdn, outcome = await recharge(access_line, api, "5.00")
    assert outcome.state is State.UNKNOWN
    assert "without acknowledging" in outcome.reason
    assert money(access_line.db, customer_id) == Money(Decimal("150.00"), Decimal("5.00"), 0)
    await until(lambda: operator_events.of(msisdn))
    assert operator_events.of(msisdn)[0]["Ack"] == "0"
    assert (await api.status(outcome.request_id)).state.name == "UNKNOWN"
    # The reconciler cannot ask an IVR: it stays held.
    decided = await service.reconcile(access_line.db, {OPERATOR: api},
                                      older_than=timedelta(0))
    assert decided == []
    assert money(access_line.db, customer_id).reserved == Decimal("5.00")


async def test_silent_operator_times_out_unknown(access_line: AccessLine) -> None:
    # 1999620...: answers and stays silent for 20 s; the recharge allows 8 s in all.
    api = ivr_operator(access_line, "1999620000", timeout=8)
    started = asyncio.get_running_loop().time()
    customer_id, _, outcome = await recharge(access_line, api, "5.00")
    took = asyncio.get_running_loop().time() - started
    assert outcome.state is State.UNKNOWN
    assert "acknowledg" in outcome.reason
    assert 7 < took < 14
    assert money(access_line.db, customer_id).reserved == Decimal("5.00")


async def test_busy_operator_sends_nothing_and_releases(access_line: AccessLine) -> None:
    api = ivr_operator(access_line, "19999000")
    customer_id, _, outcome = await recharge(access_line, api, "5.00")
    assert outcome.state is State.DECLINED
    assert "busy" in outcome.reason and "nothing was sent" in outcome.reason
    assert money(access_line.db, customer_id) == Money(Decimal("150.00"), Decimal(0), 0)
