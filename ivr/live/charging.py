"""A call's money, from claim to settlement: the one place that opens, grows and closes
the reservation of a live call.

Every line that sells airtime goes through :class:`Charging` (one per application, over
all the Asterisk boxes it serves), in this order::

    key = CallKey(uniqueid, attempt)
    grant = await charging.authorize(controller, key, number, card_id=..., channel=...)
    live = charging.track(controller, key, grant, ...)      # the call is dialled
    ...  charging.renew(live) as its hold runs out, after a top-up, after auto-recharge
    await charging.close(key, grant.reservation_id, grant.account_id, outcome, ...)
    charging.done(controller, key)

- :meth:`authorize` claims the key in the call's controller first, so the recovery sweep
  never takes a reservation a flow of this process is still making for a dead one.
- :meth:`close` settles an answered call from its billable seconds and releases any
  other, exactly once per key (the ledger is idempotent per key), then runs the
  after-call hooks (the low-balance notice) in the background. The access flow and the
  recovery sweep (ivr.live.recovery) both close calls through it.
- :meth:`renew` grows a live call's hold from the money there is now and moves the limit
  Asterisk enforces (through the call's controller, ivr.live.calls); :meth:`credited` does it
  for every live call of an account that money just came into.
- :meth:`adopt` follows again a call whose flow died with an earlier server.

The ledger (ivr.money.ledger) does the arithmetic in one transaction per step; the controller
(ivr.live.calls) does what Asterisk must do (limits, warnings, events). This module decides
when each happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from ..ami import AmiError
from ..money.ledger import Grant, Ledger, Refusal, Settlement
from .calls import CallKey, CallOutcome, LiveCall

if TYPE_CHECKING:
    from ..db.models import Reservation
    from .calls import CallController
    from .trace import CallTrace

log = logging.getLogger("ivr.live.charging")


# Sends the after-call low-balance notice of an account (ivr.money.notify.check_low_balance
# with the application's senders); None: notices are off.
NoticeHook = Callable[[int, "CallController | None"], Coroutine[Any, Any, object]]
# Charges an account's linked payment method during a call (ivr.payments.recharge with
# the application's gateway); True when money came in.
RechargeHook = Callable[[LiveCall], Awaitable[bool]]


class Charging:
    """The money of the live calls of one server process."""

    def __init__(self, ledger: Ledger, *, hold: int = 0, notice: NoticeHook | None = None,
                 recharge: RechargeHook | None = None) -> None:
        self.ledger = ledger
        self.db = ledger.db
        self.hold = hold  # seconds held at a time (reservation_hold); 0: all the money
        self.notice = notice
        self.recharge = recharge
        self.trace: CallTrace | None = None  # each call's story (ivr.live.trace)
        self.controllers: dict[str, CallController] = {}  # by Asterisk name
        self._tasks: set[asyncio.Task[Any]] = set()

    def attach(self, controller: CallController) -> None:
        """A controller (one per Asterisk box) whose calls this charges."""
        self.controllers[controller.name] = controller

    # ------------------------------------------------------------------ before dial

    async def authorize(self, controller: CallController | None, key: CallKey, number: str,
                        *, card_id: int, channel: str | None) -> Grant | Refusal:
        """Reserve what the balance buys (at most one hold) for a call to ``number``."""
        if controller is not None:
            controller.claim(key)
        try:
            grant = await self.db.run(
                self.ledger.authorize, number, card_id=card_id, call_key=str(key),
                channel=channel, hold=self.hold or None)
        except BaseException:
            # Unclaimed: if the database commits the reservation after we gave up on it,
            # the recovery sweep releases it once the caller's channel is gone.
            self.done(controller, key)
            raise
        if not isinstance(grant, Grant):
            self.done(controller, key)
            self.step(key.uniqueid, "refused", call=str(key), number=number,
                      reason=grant.value)
        else:
            self.step(key.uniqueid, "grant", call=str(key), number=number,
                      destination=grant.destination, seconds=grant.seconds,
                      amount=grant.amount, currency=grant.currency,
                      affordable=grant.affordable)
        return grant

    def track(self, controller: CallController | None, key: CallKey, grant: Grant, *,
              channel: str, language: str, card_id: int | None,
              callerid: str | None) -> LiveCall | None:
        """Follow a call being dialled: its controller plans renewals and warnings once
        it is answered."""
        if controller is None:
            return None
        call = self._live(controller, key, grant.reservation_id, grant.seconds, channel=channel,
                          language=language, card_id=card_id, account_id=grant.account_id,
                          currency=grant.currency, callerid=callerid,
                          auto_recharge=grant.auto_recharge, affordable=grant.affordable)
        controller.track(call)
        return call

    def _live(self, controller: CallController, key: CallKey, reservation_id: int,
              granted: int, **fields: Any) -> LiveCall:
        """The one place a LiveCall is made (a dialled call or an adopted one)."""
        return LiveCall(key, fields.pop("channel"), reservation_id, granted, hold=self.hold,
                        asterisk=controller.name, server_id=self.ledger.server_id, **fields)

    def done(self, controller: CallController | None, key: CallKey) -> None:
        """The flow has closed this call (or never will): its controller forgets it."""
        if controller is not None:
            controller.done(key)

    # ------------------------------------------------------------------ closing

    async def close(self, key: CallKey, reservation_id: int, account_id: int,
                    outcome: CallOutcome, *, caller: str = "", cause: str = "",
                    controller: CallController | None = None) -> Settlement | None:
        """Settle an answered call from its billable seconds, release any other: exactly
        once per key. After a charge, the account's low-balance notice is checked in the
        background (the caller does not wait for a mail server)."""
        cause = cause or outcome.dial_status
        if outcome.dial_status != "ANSWER":
            await self.db.run(self.ledger.release, reservation_id, uniqueid=str(key),
                              caller=caller, hangup_cause=cause)
            self.step(key.uniqueid, "end", call=str(key), status=outcome.dial_status,
                      cause=cause)
            return None
        settlement = await self.db.run(self.ledger.settle, reservation_id, outcome.billsec,
                                       uniqueid=str(key), caller=caller, hangup_cause=cause)
        if not settlement.duplicate:
            live = controller.live_call(key.uniqueid) if controller is not None else None
            self.step(key.uniqueid, "end", call=str(key), status="ANSWER", cause=cause,
                      billsec=outcome.billsec, seconds=settlement.seconds,
                      cost=settlement.cost, balance=settlement.balance,
                      currency=live.currency if live is not None else "")
            self._after_call(account_id, controller)
        return settlement

    async def release(self, key: CallKey, reservation_id: int, *, caller: str = "",
                      why: str) -> None:
        """Free the hold of a call that never reached Dial. Shielded from the caller's
        hang-up; a failure is logged and left to the recovery sweep (no record, no
        channel: released at no cost)."""
        self.step(key.uniqueid, "released", call=str(key), why=why)
        try:
            await asyncio.shield(self.db.run(
                self.ledger.release, reservation_id, uniqueid=str(key), caller=caller,
                hangup_cause=why))
        except Exception:
            log.exception("[%s] reservation %s not released", key.uniqueid, reservation_id)

    def _after_call(self, account_id: int, controller: CallController | None) -> None:
        if self.notice is not None:
            self.spawn(self.notice(account_id, controller), f"low-balance notice {account_id}")

    # ------------------------------------------------------------------ during the call

    async def renew(self, call: LiveCall) -> None:
        """Grow the call's hold from the money there is now (after a top-up, or as its
        hold runs out) and move its limit. When the ledger cannot be reached the call
        keeps its grant, and the caller is warned before Asterisk ends it there.
        LookupError: the call is no longer live; AmiError: the limit was not moved."""
        controller = self._controller_of(call)
        try:
            grant = await self.db.run(self.ledger.extend, call.reservation_id,
                                      hold=controller.next_hold(call))
        except Exception as exc:
            log.exception("[%s] hold of call %s not renewed", call.uniqueid, call.key)
            granted = call.granted
            call.affordable = 0
            self.step(call.uniqueid, "renew", call=str(call.key), error=str(exc)[:200])
        else:
            granted = grant.seconds
            call.affordable = grant.affordable
            self.step(call.uniqueid, "renew", call=str(call.key), seconds=grant.seconds,
                      amount=grant.amount, affordable=grant.affordable)
        await controller.extend(call.uniqueid, granted)

    async def renew_due(self, call: LiveCall) -> None:
        """The controller's timer: the call's hold is about to run out."""
        try:
            controller = self._controller_of(call)
        except LookupError:
            return  # ended meanwhile
        try:
            await self.renew(call)
        except (AmiError, LookupError) as exc:
            # Asterisk still ends the call at its present limit; the caller is warned.
            log.warning("[%s] limit not moved at renewal: %s", call.uniqueid, exc)
            call.affordable = 0
            controller.replan(call)

    async def credited(self, account_id: int, *, but: CallKey | None = None) -> None:
        """Money came into an account: its other live calls may last longer now."""
        if but is not None:
            self.step(but.uniqueid, "topup", call=str(but), account=account_id)
        for controller in list(self.controllers.values()):
            for call in controller.calls_of(account_id):
                if call.key == but or call.answered_at is None:
                    continue
                self.step(call.uniqueid, "credited", call=str(call.key), account=account_id)
                try:
                    await self.renew(call)
                except (AmiError, LookupError) as exc:
                    log.info("[%s] not extended after a credit: %s", call.uniqueid, exc)

    async def answered(self, call: LiveCall) -> None:
        """The controller saw the call answered: when the account has auto-recharge, plan
        it for the moment this call takes the balance below the threshold."""
        if self.recharge is None or not call.auto_recharge:
            return
        try:
            due = await self.db.run(self.ledger.seconds_until_below, call.reservation_id)
            controller = self._controller_of(call)
        except LookupError:
            return
        except Exception:
            log.exception("[%s] auto-recharge not planned", call.uniqueid)
            return
        if due is None or call.answered_at is None:
            return
        delay = max(0.0, due - (controller.now() - call.answered_at))
        log.info("[%s] auto-recharge due in %.1fs", call.uniqueid, delay)
        call.set_recharge_timer(asyncio.get_running_loop().call_later(
            delay, lambda: self.spawn(self._auto_recharge(call), "auto-recharge")))

    async def _auto_recharge(self, call: LiveCall) -> None:
        assert self.recharge is not None
        try:
            self._controller_of(call)
        except LookupError:
            return  # ended meanwhile
        try:
            added = await self.recharge(call)
        except Exception:
            log.exception("[%s] auto-recharge failed", call.uniqueid)
            return
        if not added:
            return
        self.step(call.uniqueid, "topup", call=str(call.key), account=call.account_id,
                  auto=True)
        with contextlib.suppress(LookupError):
            await self.renew(call)
        await self.credited(call.account_id, but=call.key)

    # ------------------------------------------------------------------ recovery

    async def adopt(self, controller: CallController, res: Reservation, key: CallKey, *,
                    peer: str, language: str, elapsed: float, callerid: str | None,
                    auto_recharge: bool, currency: str) -> LiveCall:
        """Follow again a bridged call whose flow died with an earlier server, answered
        ``elapsed`` seconds ago: its hold is renewed (else Asterisk would cut it when the
        hold runs out, money left or not) and its warnings planned. The next recovery
        sweep after it ends settles it."""
        call = self._live(controller, key, res.id, res.seconds, channel=res.channel or "",
                          language=language, card_id=res.card_id, account_id=res.account_id,
                          currency=currency, callerid=callerid, auto_recharge=auto_recharge,
                          dest_channel=peer, answered_at=controller.now() - elapsed,
                          adopted=True)
        controller.track(call)
        await self.renew(call)
        return call

    # ------------------------------------------------------------------ plumbing

    def step(self, call_id: str, kind: str, **detail: Any) -> None:
        """A step of the call's story (ivr.live.trace), when traces are kept."""
        if self.trace is not None:
            self.trace.event(call_id, kind, **detail)

    def _controller_of(self, call: LiveCall) -> CallController:
        controller = self.controllers.get(call.asterisk)
        if controller is None or controller.live_call(call.uniqueid) is not call:
            raise LookupError(f"no live call {call.uniqueid}")
        return controller

    def spawn(self, work: Coroutine[Any, Any, object], what: str) -> None:
        """Run ``work`` in the background, kept by reference until it ends and awaited
        by :meth:`aclose`; its failure is logged."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)

        def finished(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.warning("%s failed: %s", what, t.exception())

        task.add_done_callback(finished)

    async def aclose(self, timeout: float = 5.0) -> None:
        """Wait (at most ``timeout`` s) for background work (notices, renewals) to end."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1)
