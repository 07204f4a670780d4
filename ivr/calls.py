"""The call controller: live calls seen from AMI, their holds and mid-call warnings.

The access flow (``ivr.flows.access``) dials; this module watches. For each live call it
learns from AMI when the destination answered (``DialEnd``), and schedules two warnings
for the caller alone: one when the time left falls below ``low_balance_warning`` seconds,
a last one ``final_warning`` seconds before the cut. A warning is whispered into the
caller's channel with ChanSpy (``w``), so the called party hears nothing.

It does not enforce the limit: Asterisk does (``TIMEOUT(absolute)`` on the called channel,
set at answer by the ``ivr-access-answered`` Gosub), so a dead server or a lost AMI
connection can never let a call run unpaid. :meth:`CallController.extend` moves that limit
during a call (AMI ``Setvar`` of ``TIMEOUT(absolute)``, to the millisecond).

Holds: a call reserves at most ``reservation_hold`` seconds of its account's balance at a
time (ivr.ledger, ``hold``; a share of what is not held while other cards of the account
are idle). Before a hold runs out (halfway through a short one) the controller renews it
from what the balance, less the other calls' holds, still buys, and moves the limit. The
warnings are planned from what all that money buys, not from the hold, and planned again
at each renewal. So cards sharing an account can call at once and together never spend
more than the balance.

Calls that outlive this server are settled or adopted by :mod:`ivr.recovery`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .ami import AmiClient, AmiError
from .ledger import Ledger

log = logging.getLogger("ivr.calls")

ASTDB_FAMILY = "ivr-calls"
WHISPER_CHANNEL = "Local/s@ivr-whisper/n"
MIN_WARNING_GAP = 9  # seconds: the first warning is spoken before the last one starts
RENEW_MARGIN = 10  # seconds: a hold is renewed this long before its first warning is due
BACKSTOP_MARGIN = 30  # seconds the caller channel's own limit lies beyond the call's


@dataclass
class LiveCall:
    key: str  # <caller uniqueid>-<attempt>: AstDB key and settlement idempotency key
    uniqueid: str  # the caller's channel
    channel: str
    reservation_id: int
    granted: int  # seconds the call may last from answer (its hold)
    language: str = "en"
    card_id: int | None = None
    callerid: str | None = None
    auto_recharge: bool = False  # the account has it set (Grant.auto_recharge)
    hold: int = 0  # seconds held at a time, renewed as the call goes on; 0: no renewal
    held_at: float = 0.0  # seconds after answer when the present grant was made
    affordable: int = 0  # seconds from answer the money bought at the last look
    adopted: bool = False  # its flow died with an earlier server: recovery settles it
    dest_channel: str = ""
    answered_at: float | None = None  # loop time
    whispers: list[tuple[str, float]] = field(default_factory=list)  # (kind, seconds after answer)
    _timers: list[asyncio.TimerHandle] = field(default_factory=list, repr=False)  # plan
    _recharge_timer: asyncio.TimerHandle | None = field(default=None, repr=False)

    def cancel_plan(self) -> None:
        """Cancel the planned warnings and hold renewal."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    def cancel_timers(self) -> None:
        """The call is over: cancel everything planned for it."""
        self.cancel_plan()
        if self._recharge_timer is not None:
            self._recharge_timer.cancel()
            self._recharge_timer = None


@dataclass(frozen=True)
class CallOutcome:
    """How a dialled call ended, as Asterisk recorded it in AstDB."""

    dial_status: str  # ANSWER, BUSY, NOANSWER, CONGESTION, CHANUNAVAIL, CANCEL, ...
    billsec: int  # whole seconds from answer to hang-up

    @classmethod
    def parse(cls, record: str) -> CallOutcome:
        """``ANSWER,<ms>`` (the called channel's hang-up handler) or ``<DIALSTATUS>,0``
        (the caller's, when nobody answered)."""
        status, _, ms = record.partition(",")
        millis = int(ms) if ms.strip().isdigit() else 0
        return cls(status.strip() or "UNKNOWN", millis // 1000)


class CallController:
    def __init__(
        self,
        ami: AmiClient | None,
        ledger: Ledger,
        *,
        low_balance_warning: int = 60,
        final_warning: int = 10,
        clock: Callable[[], float] | None = None,
        auto_recharge: Callable[[LiveCall], Awaitable[bool]] | None = None,
        reservation_hold: int = 0,
    ) -> None:
        self.ami = ami
        self.reservation_hold = reservation_hold  # for calls adopted by recovery
        # Charges the account's linked payment method for a call crossing its threshold;
        # True when money was added (the controller then renews the call's hold).
        self.auto_recharge = auto_recharge
        self.ledger = ledger
        self.low_balance_warning = low_balance_warning
        self.final_warning = final_warning
        self._clock = clock
        self._claimed: set[str] = set()
        self._live: dict[str, LiveCall] = {}  # by caller uniqueid
        self._unsubscribe: list[Callable[[], None]] = []
        if ami is not None:
            for name, handler in (("DialBegin", self._on_dial_begin),
                                  ("DialEnd", self._on_dial_end),
                                  ("Hangup", self._on_hangup)):
                self._unsubscribe.append(ami.on_event(name, handler))

    @classmethod
    def from_settings(cls, ami: AmiClient | None, ledger: Ledger, settings: Any,
                      **kwargs: Any) -> CallController:
        return cls(ami, ledger, low_balance_warning=settings.low_balance_warning,
                   final_warning=settings.final_warning,
                   reservation_hold=settings.reservation_hold, **kwargs)

    def now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    # ------------------------------------------------------------------ registry

    def claimed(self, key: str) -> bool:
        """A flow of this process owns this call (recovery leaves it alone)."""
        return key in self._claimed

    def claim(self, key: str) -> None:
        """A flow of this process owns this call key (recovery leaves it alone). Claim
        before reserving, so the recovery sweep never sees an unowned reservation."""
        self._claimed.add(key)

    def track(self, call: LiveCall) -> None:
        self._claimed.add(call.key)
        self._live[call.uniqueid] = call

    def done(self, key: str) -> None:
        """The flow has settled (or released) this call."""
        self._claimed.discard(key)
        for uniqueid, call in list(self._live.items()):
            if call.key == key:
                call.cancel_timers()
                del self._live[uniqueid]

    def live_call(self, uniqueid: str) -> LiveCall | None:
        return self._live.get(uniqueid)

    @property
    def live_calls(self) -> int:
        return len(self._live)

    def seen_alive(self) -> list[tuple[int, datetime]]:
        """The answered calls followed now, while AMI is connected (so Asterisk is up):
        (reservation id, answer time). The server's heartbeat records them as seen alive
        now, the time up to which such a call is billed if Asterisk loses it
        (ivr.servers, ivr.recovery)."""
        if self.ami is None or not self.ami.connected:
            return []
        now, wall = self.now(), time.time()
        return [(call.reservation_id, datetime.fromtimestamp(wall - (now - call.answered_at), UTC))
                for call in self._live.values() if call.answered_at is not None]

    # ------------------------------------------------------------------ AMI events

    def _on_dial_begin(self, event: Any) -> None:
        call = self._live.get(event.get("Uniqueid", ""))
        if call is not None:
            call.dest_channel = event.get("DestChannel", "")

    def _on_dial_end(self, event: Any) -> None:
        call = self._live.get(event.get("Uniqueid", ""))
        if call is None or event.get("DialStatus") != "ANSWER":
            return
        call.answered_at = self.now()
        call.dest_channel = event.get("DestChannel", call.dest_channel)
        self._plan(call)
        if self.auto_recharge is not None and call.auto_recharge:
            asyncio.ensure_future(self._plan_auto_recharge(call))

    def _on_hangup(self, event: Any) -> None:
        uniqueid = event.get("Uniqueid", "")
        call = self._live.get(uniqueid)
        if call is not None:
            call.cancel_timers()
            if call.adopted:  # no flow will settle it: the next sweep does
                self.done(call.key)
            return
        for call in self._live.values():  # the called party hung up: no more warnings
            if call.dest_channel and call.dest_channel == event.get("Channel"):
                call.cancel_timers()

    # ------------------------------------------------------------------ warnings

    def warning_times(self, granted: int) -> list[tuple[str, float]]:
        """When, in seconds after answer, each warning is whispered."""
        times: list[tuple[str, float]] = []
        if self.low_balance_warning <= 0 and self.final_warning <= 0:
            return times
        final_at = granted - self.final_warning if self.final_warning > 0 else 0
        first_at = max(0.5, granted - self.low_balance_warning)
        if self.low_balance_warning > max(self.final_warning, 0) and (
            final_at <= 0 or first_at <= final_at - MIN_WARNING_GAP
        ):
            times.append(("warning", first_at))
        if final_at > 0:
            times.append(("final", final_at))
        return times

    def renewal_at(self, call: LiveCall) -> float | None:
        """When, in seconds after answer, the call's hold is renewed; None when the hold
        covers all the money bought at the last look. A short hold (a share of a small
        balance) is renewed halfway through, so a renewal never takes at once what other
        cards of the account could still start a call with."""
        if not call.hold or call.affordable <= call.granted:
            return None
        lead = min(self.low_balance_warning + RENEW_MARGIN, (call.granted - call.held_at) / 2)
        return max(0.0, call.granted - lead)

    def _plan(self, call: LiveCall) -> None:
        """Plan the call's next steps: renew its hold, and warn the caller before what
        all the money bought at the last look runs out."""
        call.cancel_plan()
        if call.answered_at is None:
            return
        loop = asyncio.get_running_loop()
        elapsed = self.now() - call.answered_at
        renew_at = self.renewal_at(call)
        if renew_at is not None:
            call._timers.append(loop.call_later(
                max(0.0, renew_at - elapsed), lambda: asyncio.ensure_future(self._renew(call))
            ))
        total = max(call.affordable, call.granted)
        whispered = {kind for kind, _ in call.whispers}
        for kind, at in self.warning_times(total):
            delay = at - elapsed
            if delay < 0:
                # Learned late (a renewal found the money short): warn now if there is
                # time and it was not said already.
                if kind != "warning" or kind in whispered or (
                    total - elapsed < self.final_warning + MIN_WARNING_GAP
                ):
                    continue
                delay = 0
            call._timers.append(loop.call_later(
                delay, lambda c=call, k=kind: asyncio.ensure_future(self.whisper(c, k))
            ))

    async def whisper(self, call: LiveCall, kind: str) -> None:
        """Whisper a warning to the caller's leg only (ChanSpy in whisper mode)."""
        left = self.seconds_affordable(call)
        if self.ami is None or call.answered_at is None:
            return
        call.whispers.append((kind, self.now() - call.answered_at))
        log.info("[%s] %s warning: %ss left", call.uniqueid, kind, left)
        try:
            await self.ami.action(
                "Originate",
                Channel=WHISPER_CHANNEL,
                Application="ChanSpy",
                Data=f"{call.channel},qwE",
                CallerID='"ivr warning" <0>',
                Async="true",
                Timeout=5000,
                Variable=[f"__IVR_WHISPER={kind}", f"__IVR_SECONDS_LEFT={left}",
                          f"__IVR_LANGUAGE={call.language}"],
            )
        except AmiError as exc:
            # The call goes on and Asterisk still ends it at its limit; only the warning
            # is lost.
            log.warning("[%s] could not whisper the %s warning: %s", call.uniqueid, kind, exc)

    def seconds_left(self, call: LiveCall) -> int:
        """Seconds until the call's present limit."""
        return max(0, round(call.granted - self._elapsed(call)))

    def seconds_affordable(self, call: LiveCall) -> int:
        """Seconds the money still buys for this call (beyond its hold when renewed)."""
        return max(0, round(max(call.affordable, call.granted) - self._elapsed(call)))

    def _elapsed(self, call: LiveCall) -> float:
        return 0.0 if call.answered_at is None else self.now() - call.answered_at

    # ------------------------------------------------------------------ auto-recharge

    async def _plan_auto_recharge(self, call: LiveCall) -> None:
        """At the moment this call takes the balance below the account's auto-recharge
        threshold, charge the linked payment method once and extend the call."""
        try:
            due = await self.ledger.db.run(self.ledger.seconds_until_below, call.reservation_id)
        except Exception:
            log.exception("[%s] auto-recharge not planned", call.uniqueid)
            return
        if due is None or call.answered_at is None:
            return
        delay = max(0.0, due - (self.now() - call.answered_at))
        log.info("[%s] auto-recharge due in %.1fs", call.uniqueid, delay)
        call._recharge_timer = asyncio.get_running_loop().call_later(
            delay, lambda: asyncio.ensure_future(self._auto_recharge(call)))

    async def _auto_recharge(self, call: LiveCall) -> None:
        assert self.auto_recharge is not None
        if self._live.get(call.uniqueid) is not call:
            return  # ended meanwhile
        try:
            added = await self.auto_recharge(call)
        except Exception:
            log.exception("[%s] auto-recharge failed", call.uniqueid)
            return
        if added and self._live.get(call.uniqueid) is call:
            await self.renew(call.uniqueid)

    # ------------------------------------------------------------------ extension

    async def hold_open(self, uniqueid: str, seconds: int) -> None:
        """The caller is in the top-up menu: make sure the call has at least ``seconds``
        left, so paying cannot drop it, and hold the warnings. :meth:`extend` ends this
        (with the new grant, or the old one when nothing was added). Time beyond the grant
        is never charged (settle caps at the grant)."""
        call = self._live.get(uniqueid)
        if call is None:
            raise LookupError(f"no live call {uniqueid}")
        call.cancel_plan()
        if (call.answered_at is not None and call.dest_channel and self.ami is not None
                and self.seconds_left(call) < seconds):
            await self._set_limit(call, float(seconds))

    async def extend(self, uniqueid: str, granted: int) -> None:
        """Let a live call last ``granted`` seconds from its answer (its hold grew):
        moves Asterisk's limit and re-plans the renewal or the warnings. When the limit
        cannot be moved (AmiError) the call keeps its old grant."""
        call = self._live.get(uniqueid)
        if call is None:
            raise LookupError(f"no live call {uniqueid}")
        if call.answered_at is not None and call.dest_channel:
            if self.ami is None:
                raise AmiError("no AMI connection to move the call's limit")
            await self._set_limit(call, granted - (self.now() - call.answered_at))
        call.granted = granted
        call.held_at = self._elapsed(call)
        self._plan(call)

    def next_hold(self, call: LiveCall) -> int | None:
        """The hold to ask the ledger for now, in seconds from answer (None: all)."""
        if not call.hold:
            return None
        return max(call.granted, math.ceil(self._elapsed(call)) + call.hold)

    async def renew(self, uniqueid: str) -> None:
        """Grow the call's hold from the money there is now (after a top-up, or as its
        hold runs out) and move its limit. When the ledger cannot be reached the call
        keeps its grant, and the caller is warned before Asterisk ends it there."""
        call = self._live.get(uniqueid)
        if call is None:
            raise LookupError(f"no live call {uniqueid}")
        try:
            grant = await self.ledger.db.run(self.ledger.extend, call.reservation_id,
                                            hold=self.next_hold(call))
        except Exception:
            log.exception("[%s] hold of call %s not renewed", uniqueid, call.key)
            granted = call.granted
            call.affordable = 0
        else:
            granted = grant.seconds
            call.affordable = grant.affordable
        await self.extend(uniqueid, granted)

    async def _renew(self, call: LiveCall) -> None:
        if self._live.get(call.uniqueid) is not call:
            return  # ended meanwhile
        try:
            await self.renew(call.uniqueid)
        except (AmiError, LookupError) as exc:
            # Asterisk still ends the call at its present limit; the caller is warned.
            log.warning("[%s] limit not moved at renewal: %s", call.uniqueid, exc)
            call.affordable = 0
            self._plan(call)

    async def _set_limit(self, call: LiveCall, seconds: float) -> None:
        """End the call ``seconds`` from now: TIMEOUT(absolute) on the called channel, set
        over AMI to the millisecond (the AbsoluteTimeout action takes whole seconds). Our
        answer time is the DialEnd event's, a few ms after the answer Gosub's, so the cut
        never comes before the grant the ledger charges. The caller channel's looser
        limit (a backstop, set by the access route) moves with it."""
        assert self.ami is not None
        seconds = max(0.5, seconds)
        await self.ami.action("Setvar", Channel=call.dest_channel,
                              Variable="TIMEOUT(absolute)", Value=f"{seconds:.3f}")
        with contextlib.suppress(AmiError):  # the dest limit is the one that counts
            await self.ami.action("Setvar", Channel=call.channel, Variable="TIMEOUT(absolute)",
                                  Value=str(math.ceil(seconds) + BACKSTOP_MARGIN))

    async def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        for call in self._live.values():
            call.cancel_timers()
