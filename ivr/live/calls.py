"""The call controller: live calls seen from AMI, their holds and mid-call warnings.

One controller per Asterisk box. The access flow (``ivr.flows.access``) dials and the
charging session (``ivr.live.charging``) owns the call's money; this module watches. For each
live call it learns from AMI when the destination answered (``DialEnd``), and schedules two warnings
for the caller alone: one when the time left falls below ``low_balance_warning`` seconds,
a last one ``final_warning`` seconds before the cut. A warning is whispered into the
caller's channel with ChanSpy (``w``), so the called party hears nothing.

It does not enforce the limit: Asterisk does (``TIMEOUT(absolute)`` on the called channel,
set at answer by the ``ivr-access-answered`` Gosub), so a dead server or a lost AMI
connection can never let a call run unpaid. :meth:`CallController.extend` moves that limit
during a call (AMI ``Setvar`` of ``TIMEOUT(absolute)``, to the millisecond).

Holds: a call reserves at most ``reservation_hold`` seconds of its account's balance at a
time (ivr.money.ledger, ``hold``; a share of what is not held while other cards of the account
are idle). Before a hold runs out (halfway through a short one) the controller asks the
charging session to renew it from what the balance, less the other calls' holds, still
buys; the session moves the limit through :meth:`CallController.extend`. The
warnings are planned from what all that money buys, not from the hold, and planned again
at each renewal. So cards sharing an account can call at once and together never spend
more than the balance.

Calls that outlive this server are settled (through the charging session) or adopted
by :mod:`ivr.live.recovery`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..ami import AmiClient, AmiError

if TYPE_CHECKING:
    from ..config import Settings
    from .charging import Charging

log = logging.getLogger("ivr.live.calls")

ASTDB_FAMILY = "ivr-calls"
WHISPER_CHANNEL = "Local/s@ivr-whisper/n"
MIN_WARNING_GAP = 9  # seconds: the first warning is spoken before the last one starts
RENEW_MARGIN = 10  # seconds: a hold is renewed this long before its first warning is due
BACKSTOP_MARGIN = 30  # seconds the caller channel's own limit lies beyond the call's


def backstop(seconds: float) -> int:
    """The caller channel's own TIMEOUT(absolute) for a call that may last ``seconds``
    more: a looser limit than the called channel's (the one that counts), so the caller's
    leg never outlives a dead server by long. Every writer of that limit (the access
    flow before Dial, the top-up menu, :meth:`CallController._set_limit`) takes it from
    here."""
    return math.ceil(seconds) + BACKSTOP_MARGIN


@dataclass(frozen=True, order=True)
class CallKey:
    """A dialled call: the caller channel's uniqueid and the attempt number within that
    channel's session (a caller may make several calls). Its text ``<uniqueid>-<n>`` is
    the AstDB key of the call's record, the reservation's ``call_key`` and the
    settlement's idempotency key."""

    uniqueid: str
    attempt: int

    def __str__(self) -> str:
        return f"{self.uniqueid}-{self.attempt}"

    @classmethod
    def parse(cls, text: str) -> CallKey:
        """The key ``str(key)`` wrote; ValueError for anything else."""
        uniqueid, sep, attempt = text.rpartition("-")
        if not sep or not uniqueid or not attempt.isdigit():
            raise ValueError(f"not a call key: {text!r}")
        return cls(uniqueid, int(attempt))

    @classmethod
    def of(cls, key: CallKey | str) -> CallKey:
        return key if isinstance(key, CallKey) else cls.parse(key)



@dataclass
class LiveCall:
    key: CallKey  # AstDB key and settlement idempotency key
    channel: str  # the caller's
    reservation_id: int
    granted: int  # seconds the call may last from answer (its hold)
    language: str = "en"
    card_id: int | None = None
    account_id: int = 0
    currency: str = ""
    callerid: str | None = None
    asterisk: str = "asterisk"  # the name of the Asterisk box (its controller) it is on
    server_id: int | None = None  # the server (ivr.live.servers) whose reservation it is
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

    @property
    def uniqueid(self) -> str:
        """The caller's channel."""
        return self.key.uniqueid

    def set_recharge_timer(self, timer: asyncio.TimerHandle) -> None:
        if self._recharge_timer is not None:
            self._recharge_timer.cancel()
        self._recharge_timer = timer

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
    billsec: int  # seconds from answer to hang-up, to the nearest second

    @classmethod
    def parse(cls, record: str) -> CallOutcome:
        """``ANSWER,<ms>`` (the called channel's hang-up handler) or ``<DIALSTATUS>,0``
        (the caller's, when nobody answered).

        The milliseconds are rounded to the nearest second (half up, as Asterisk's
        ``initiatedseconds`` CDR option rounds), not floored: the record counts from the
        moment the answered-call Gosub stamps the answer, a few milliseconds after it (more
        on a loaded box), so a call that ended on a whole second, a callee hanging up
        3.000 s after answering, reads 2998 ms and a floor would bill it 2 s. A call
        under half a second is free; one cut at its limit is capped at its grant when
        settled."""
        status, _, ms = record.partition(",")
        millis = int(ms) if ms.strip().isdigit() else 0
        return cls(status.strip() or "UNKNOWN", (millis + 500) // 1000)


class CallController:
    """The live calls on one Asterisk box, seen from its AMI connection."""

    def __init__(
        self,
        ami: AmiClient | None,
        charging: Charging | None = None,
        *,
        name: str = "asterisk",
        low_balance_warning: int = 60,
        final_warning: int = 10,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.ami = ami
        self.name = name
        # The money side: renewals and auto-recharge are its decisions (ivr.live.charging).
        self.charging = charging
        self.low_balance_warning = low_balance_warning
        self.final_warning = final_warning
        self._clock = clock
        self._claimed: set[CallKey] = set()
        self._live: dict[str, LiveCall] = {}  # by caller uniqueid
        self._tasks: set[asyncio.Task[Any]] = set()
        self._unsubscribe: list[Callable[[], None]] = []
        if charging is not None:
            charging.attach(self)
        if ami is not None:
            for event, handler in (("DialBegin", self._on_dial_begin),
                                   ("DialEnd", self._on_dial_end),
                                   ("Hangup", self._on_hangup)):
                self._unsubscribe.append(ami.on_event(event, handler))

    @classmethod
    def from_settings(cls, ami: AmiClient | None, charging: Charging | None,
                      settings: Settings, *, name: str = "asterisk",
                      clock: Callable[[], float] | None = None) -> CallController:
        return cls(ami, charging, name=name, low_balance_warning=settings.low_balance_warning,
                   final_warning=settings.final_warning, clock=clock)

    def now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    # ------------------------------------------------------------------ registry

    def claimed(self, key: CallKey | str) -> bool:
        """A flow of this process owns this call (recovery leaves it alone)."""
        return CallKey.of(key) in self._claimed

    def claim(self, key: CallKey) -> None:
        """A flow of this process owns this call key (recovery leaves it alone). The
        charging session claims before reserving, so the recovery sweep never sees an
        unowned reservation."""
        self._claimed.add(key)

    def track(self, call: LiveCall) -> None:
        self._claimed.add(call.key)
        self._live[call.uniqueid] = call

    def done(self, key: CallKey | str) -> None:
        """The flow has settled (or released) this call."""
        key = CallKey.of(key)
        self._claimed.discard(key)
        for uniqueid, call in list(self._live.items()):
            if call.key == key:
                call.cancel_timers()
                del self._live[uniqueid]

    def live_call(self, uniqueid: str) -> LiveCall | None:
        return self._live.get(uniqueid)

    def calls_of(self, account_id: int) -> list[LiveCall]:
        return [call for call in self._live.values() if call.account_id == account_id]

    @property
    def live_calls(self) -> int:
        return len(self._live)

    def seen_alive(self) -> list[tuple[int, datetime]]:
        """The answered calls followed now, while AMI is connected (so Asterisk is up):
        (reservation id, answer time). The server's heartbeat records them as seen alive
        now, the time up to which such a call is billed if Asterisk loses it
        (ivr.live.servers, ivr.live.recovery)."""
        if self.ami is None or not self.ami.connected:
            return []
        now, wall = self.now(), time.time()
        return [(call.reservation_id, datetime.fromtimestamp(wall - (now - answered), UTC))
                for call in self._live.values() if (answered := call.answered_at) is not None]

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
        self._step(call, "answer", channel=call.dest_channel)
        self._plan(call)
        if self.charging is not None:
            self._spawn(self.charging.answered(call))

    def _on_hangup(self, event: Any) -> None:
        uniqueid = event.get("Uniqueid", "")
        call = self._live.get(uniqueid)
        if call is not None:
            self._step(call, "hangup", channel="caller", cause=event.get("Cause-txt", ""))
            call.cancel_timers()
            if call.adopted:  # no flow will settle it: the next sweep does
                self.done(call.key)
            return
        for call in self._live.values():  # the called party hung up: no more warnings
            if call.dest_channel and call.dest_channel == event.get("Channel"):
                self._step(call, "hangup", channel="called",
                           cause=event.get("Cause-txt", ""))
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
        if renew_at is not None and self.charging is not None:
            charging = self.charging
            call._timers.append(loop.call_later(
                max(0.0, renew_at - elapsed), lambda: self._spawn(charging.renew_due(call))
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
            call._timers.append(loop.call_later(delay, self._whisper_later, call, kind))

    def _whisper_later(self, call: LiveCall, kind: str) -> None:
        self._spawn(self.whisper(call, kind))

    def replan(self, call: LiveCall) -> None:
        """Plan the call's warnings again (its money changed)."""
        self._plan(call)

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
            self._step(call, "warning", warning=kind, left=left, error=str(exc)[:200])
        else:
            self._step(call, "warning", warning=kind, left=left)

    def seconds_left(self, call: LiveCall) -> int:
        """Seconds until the call's present limit."""
        return max(0, round(call.granted - self._elapsed(call)))

    def seconds_affordable(self, call: LiveCall) -> int:
        """Seconds the money still buys for this call (beyond its hold when renewed)."""
        return max(0, round(max(call.affordable, call.granted) - self._elapsed(call)))

    def _elapsed(self, call: LiveCall) -> float:
        return 0.0 if call.answered_at is None else self.now() - call.answered_at

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
            self._step(call, "limit", left=seconds, why="top-up menu open")

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
            left = granted - (self.now() - call.answered_at)
            await self._set_limit(call, left)
            self._step(call, "limit", seconds=granted, left=max(0, round(left)))
        call.granted = granted
        call.held_at = self._elapsed(call)
        self._plan(call)

    def next_hold(self, call: LiveCall) -> int | None:
        """The hold to ask the ledger for now, in seconds from answer (None: all)."""
        if not call.hold:
            return None
        return max(call.granted, math.ceil(self._elapsed(call)) + call.hold)

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
                                  Value=str(backstop(seconds)))

    def _step(self, call: LiveCall, kind: str, **detail: Any) -> None:
        """A step of the call's story (ivr.live.trace), through the charging session."""
        if self.charging is not None:
            self.charging.step(call.uniqueid, kind, **detail)

    def _spawn(self, work: Any) -> None:
        """Run a warning or a renewal in the background, kept by reference until it ends
        (an unreferenced task may be collected mid-way) and awaited by :meth:`close`."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        for call in self._live.values():
            call.cancel_timers()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=5)
