"""The 0800 revalue line in a real Asterisk, mode b (direct recharge): completed by the
simulated operator over HTTP; an operator timing out (the caller told it is pending, the
money held, the reconciler settling it once, COMPLETED in one test and DECLINED in
another); a completed recharge reversed by the operator, its callback coming twice to the
callbacks endpoint (refunded once); a direct recharge IVR to IVR acknowledged by DTMF."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import revalue_lines
from revalue_lines import (
    MOBILE,
    OPERATOR,
    Inbox,
    MakeLine,
    operator_settles,
    recharge_by_phone,
    wait_for,
)

from ivr.ami import AmiClient
from ivr.revalue import loyalty, service
from ivr.revalue.callbacks import callback_server
from ivr.revalue.direct import HttpOperatorApi, operators_from_settings
from ivr.revalue.simulator import SimulatedOperator
from ivr.testing import free_port
from ivr.testing.phone import Phone

pytestmark = pytest.mark.asterisk

# The shared fixtures, under the names the tests take them by.
inbox = revalue_lines.inbox
make_revalue_line = revalue_lines.make_revalue_line



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


async def test_operator_timing_out_is_pending_then_reconciled_declined_once(
        make_revalue_line: MakeLine, phone: Phone) -> None:
    sim = SimulatedOperator(name=OPERATOR, behaviour="timeout:8000")
    async with sim.serving(port=free_port()) as served:
        line = await make_revalue_line(revalue_operators=f"{OPERATOR}=http:{served.url}@",
                                       revalue_timeout=4.0, revalue_wait_timeout=2.0)
        first_code = line.customer(MOBILE, "50.00", mode="direct")
        call, caller = await recharge_by_phone(phone, first_code)
        await caller.wait_prompt("recharge-pending", timeout=30)
        await call.wait_ended(timeout=30)
        await line.server.wait_idle()  # the route waited for the operator's timeout
        assert line.money()[:2] == (Decimal("50.00"), Decimal("10.00"))
        [rev] = service.list_revaluations(line.db)
        assert rev.state == "unknown"

        await operator_settles(served.url, rev.request_id, "DECLINED")
        async with HttpOperatorApi(served.url, operator=OPERATOR, timeout=5) as api:
            first = await service.reconcile(line.db, {OPERATOR: api}, older_than=timedelta(0))
            again = await service.reconcile(line.db, {OPERATOR: api}, older_than=timedelta(0))
        assert [o.state for o in first] == [service.State.DECLINED] and again == []
        assert sim.recharged(MOBILE) == 0
    assert line.money() == (Decimal("50.00"), Decimal(0), [("topup", Decimal("50.00"))])
    history = service.get_revaluation(line.db, rev.request_id).events
    assert [e.state for e in history] == ["requested", "held", "unknown", "declined"]


async def test_reversed_with_its_callback_twice_is_refunded_once(
        make_revalue_line: MakeLine, phone: Phone) -> None:
    token = "sim-callback-secret"
    sim = SimulatedOperator(name=OPERATOR, token=token, callback_secret=token.encode())
    async with sim.serving(port=free_port()) as served:
        line = await make_revalue_line(
            revalue_operators=f"{OPERATOR}=http:{served.url}@{token}",
            revalue_callback_bind="127.0.0.1:0", loyalty_points_per_unit="2")
        # The callbacks endpoint as `ivr serve` starts it.
        settings = line.app.settings
        callbacks = callback_server(operators_from_settings(settings).callback_secrets(),
                                    service.callback_handler(line.db),
                                    settings.revalue_callback_bind)
        await callbacks.start()
        try:
            sim.callback_url = f"{callbacks.url}/callbacks/{OPERATOR}"
            first_code = line.customer(MOBILE, "50.00", mode="direct")
            call, caller = await recharge_by_phone(phone, first_code, key="3")
            await caller.wait_prompt("recharge-applied")
            await caller.wait_prompt("points-earned")
            await call.wait_ended(timeout=30)
            [rev] = service.list_revaluations(line.db)
            assert rev.state == "completed"
            assert loyalty.statement(line.db, rev.customer_id).points == 40

            # The operator reverses it; its callback comes twice.
            await operator_settles(served.url, rev.request_id, "REVERSED")
            await operator_settles(served.url, rev.request_id, "REVERSED")
            await wait_for(lambda: sim.callbacks_sent == 2)
        finally:
            await callbacks.stop()
    assert line.money() == (Decimal("50.00"), Decimal(0), [
        ("topup", Decimal("50.00")), ("revaluation", Decimal("-20.00")),
        ("refund", Decimal("20.00"))])
    assert service.get_revaluation(line.db, rev.request_id).state == "reversed"
    points = loyalty.statement(line.db, rev.customer_id)
    assert points.points == 0 and sorted(e.points for e in points.entries) == [-40, 40]


async def test_direct_recharge_ivr_to_ivr_acknowledged_by_dtmf(
        make_revalue_line: MakeLine, phone: Phone, inbox: Inbox, ami: AmiClient) -> None:
    received: list[dict[str, str]] = []

    def on_event(event: Any) -> None:  # what the simulated operator's IVR read
        if event.get("UserEvent") == "IvrTestOperator":
            received.append({k: str(event.get(k, "")) for k in ("Number", "Amount", "Ack")})

    unsubscribe = ami.on_event("UserEvent", on_event)
    try:
        line = await make_revalue_line(revalue_operators=f"{OPERATOR}=ivr:19994000@864209753",
                                       revalue_timeout=25.0, revalue_wait_timeout=30.0)
        first_code = line.customer(MOBILE, "50.00", mode="direct")
        call, caller = await recharge_by_phone(phone, first_code)
        await caller.wait_prompt("recharge-applied", timeout=40)
        await call.wait_ended(timeout=30)
        await wait_for(lambda: bool(received))
    finally:
        unsubscribe()
    assert received == [{"Number": MOBILE[1:], "Amount": "1000", "Ack": "1"}]
    assert "recharge-in-progress" in caller.heard  # the wait messages played meanwhile
    assert line.money() == (Decimal("40.00"), Decimal(0),
                            [("topup", Decimal("50.00")), ("revaluation", Decimal("-10.00"))])
    [rev] = service.list_revaluations(line.db)
    assert (rev.state, rev.mode) == ("completed", "direct")
    await wait_for(lambda: len(inbox.messages) == 1)
    assert inbox.messages[0]["text"] == "Your Sim mobile was recharged with 10.00 USD."


# --------------------------------------------------------------------------- the last code
