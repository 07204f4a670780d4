"""Recovery: calls that outlived the server that dialled them.

When the server was down while a call ended, Asterisk's hang-up handlers recorded how it
ended in AstDB (family ``ivr-calls``, key = the call key: ``ANSWER,<ms>`` from the called
channel, ``<DIALSTATUS>,0`` from the caller's when nobody answered).
:meth:`Recovery.recover_once`, run at start and every ``recovery_interval`` seconds,
settles each open reservation that no flow of this process owns from that record, exactly
once (settlement is idempotent per call key). A call still up in Asterisk is adopted:
the call controller follows it again from its channels (the called channel keeps its
answer time), so its hold is renewed and the caller warned as if nothing happened; when
it ends, the next sweep settles it. A reservation whose channel is gone without a record
never reached Dial, and is released at no cost, unless a server saw it answered: then
Asterisk lost it (killed, or the machine reset) before its hang-up handler ran, and it is
billed from its answer up to the last time a server's heartbeat saw it up while Asterisk
was connected (``Reservation.alive_at``, ivr.live.servers), never more than its grant.

The first sweep runs as soon as AMI is logged in, and again at once after each reconnect
(an Asterisk that restarted); then every ``recovery_interval`` seconds. With a server
lease (ivr.live.servers), only the reservations of this server, or of a server whose lease
ended, are touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from .. import login
from ..ami import AmiError
from ..db.models import Account
from ..money.ledger import LedgerError
from ..numbers import normalise_callerid
from .calls import ASTDB_FAMILY, CallController, CallKey, CallOutcome, LiveCall
from .servers import DatabaseOutage, as_utc

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..db.models import Reservation
    from .charging import Charging
    from .servers import Lease

log = logging.getLogger("ivr.live.recovery")

AMI_POLL = 0.2  # seconds between looks at whether AMI (re)connected
LOST_CAUSE = "recovered: asterisk lost"


@dataclass
class RecoveryReport:
    settled: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    live: list[str] = field(default_factory=list)  # still up in Asterisk, not bridged
    adopted: list[str] = field(default_factory=list)  # still up and bridged: followed again


AUTH_FAILURES_KEPT = timedelta(days=1)  # log-in failures older than this are pruned
PRUNE_EVERY = 3600.0  # seconds between prunings, done by the sweep


class Recovery:
    """The sweep over open reservations no flow of this process owns, on one Asterisk
    box (its controller); calls are closed and adopted through the charging session."""

    def __init__(self, controller: CallController, lease: Lease | None = None, *,
                 region: str = "US", failure_window: int = 3600,
                 wall_clock: Callable[[], float] = time.time) -> None:
        if controller.charging is None:
            raise ValueError("recovery needs a controller with a charging session")
        self.controller = controller
        self.charging: Charging = controller.charging
        self.lease = lease  # None: every reservation is this server's to recover
        self.ami = controller.ami
        self.ledger = self.charging.ledger
        self.region = region  # for the caller IDs of adopted calls
        self.wall_clock = wall_clock  # Asterisk's answer stamps are wall-clock times
        # Log-in failures are kept a day, or the throttle's window when that is longer.
        self.failures_kept = max(AUTH_FAILURES_KEPT, timedelta(seconds=failure_window))
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def recover_once(self) -> RecoveryReport:
        """Settle or release every open reservation no flow of this process owns."""
        report = RecoveryReport()
        if self.ami is None or not self.ami.connected:
            return report
        async with self._lock:
            others = (await self.ledger.db.run(self.lease.live_others)
                      if self.lease is not None else set())
            for res in await self.ledger.db.run(self.ledger.open_reservations):
                try:
                    key = CallKey.parse(res.call_key or "")
                except ValueError:
                    continue  # not a call's (an operator's test reservation, say)
                if self.controller.claimed(key) and self._adopted(key) is None:
                    continue
                if res.server_id in others:
                    continue  # another live server's call
                try:
                    await self._recover(res, key, report)
                except (AmiError, LedgerError) as exc:
                    log.warning("recovery of call %s postponed: %s", key, exc)
        if report.settled or report.released or report.adopted:
            log.info("recovery: settled %s, released %s, adopted %s", report.settled,
                     report.released, report.adopted)
        return report

    async def _recover(self, res: Reservation, key: CallKey,
                       report: RecoveryReport) -> None:
        record = await self._astdb_get(key)
        if self._adopted(key) is not None:
            if record is None:
                return  # still going (its Hangup event makes the next sweep settle it)
            self.controller.done(key)  # ended, though its Hangup event was missed
        elif record is None:
            if await self._channel_alive(res.channel, key):
                # Asterisk enforces its limit; settle when it ends.
                if await self._adopt(res, key):
                    report.adopted.append(str(key))
                else:
                    report.live.append(str(key))
                return
            record = await self._astdb_get(key)  # it may have ended just now
        if record is None and (seen := _seconds_seen(res)) is not None:
            # Answered, but gone without a record: Asterisk died with it. Bill it up to
            # the last time a server saw it up with Asterisk alive.
            settled = await self._close(res, key, CallOutcome("ANSWER", seen), LOST_CAUSE)
            assert settled is not None and res.alive_at is not None
            log.warning("[%s] answered call gone without a record (Asterisk lost it): "
                        "billed %ss, from its answer to when it was last seen up (%s)",
                        key, settled.seconds, as_utc(res.alive_at).isoformat(" ", "seconds"))
            report.settled.append(str(key))
            return
        if record is None:
            # The channel is gone and never reached Dial's hang-up handler: nothing was
            # dialled, so nothing is charged.
            await self._close(res, key, CallOutcome("NOANSWER", 0), "recovered: no record")
            report.released.append(str(key))
            return
        outcome = CallOutcome.parse(record)
        settled = await self._close(res, key, outcome, f"recovered: {outcome.dial_status}")
        (report.settled if settled is not None else report.released).append(str(key))
        assert self.ami is not None
        with contextlib.suppress(AmiError):
            await forget_record(self.ami, key)

    async def _close(self, res: Reservation, key: CallKey, outcome: CallOutcome,
                     cause: str) -> Any:
        return await self.charging.close(key, res.id, res.account_id, outcome, cause=cause,
                                         controller=self.controller)

    def _adopted(self, key: CallKey) -> LiveCall | None:
        call = self.controller.live_call(key.uniqueid)
        return call if call is not None and call.adopted and call.key == key else None

    async def _adopt(self, res: Reservation, key: CallKey) -> bool:
        """Follow again a bridged call whose flow died with an earlier server: its hold is
        renewed (else Asterisk would cut it when the hold runs out, money left or not)
        and its warnings planned. False when it is not bridged (ringing, or in a menu)."""
        channel = res.channel or ""
        peer = await self._getvar(channel, "BRIDGEPEER")
        if not peer or await self._getvar(peer, "IVR_CALL_KEY") != str(key):
            return False
        try:
            answered_at = float(await self._getvar(peer, "IVR_ANSWERED_AT"))
        except ValueError:
            return False
        # The answer time is Asterisk's wall clock; Asterisk runs on this host.
        elapsed = max(0.0, self.wall_clock() - answered_at)
        language = (await self._getvar(channel, "CHANNEL(language)") or "en")
        callerid = normalise_callerid(await self._getvar(channel, "CALLERID(num)"),
                                      self.region)
        auto_recharge, currency = await self.ledger.db.run(_account_terms, self.ledger,
                                                           res.account_id)
        log.info("[%s] call %s adopted %.1fs after answer", key.uniqueid, key, elapsed)
        await self.charging.adopt(self.controller, res, key, peer=peer,
                                  language=language.split("_")[0].lower(), elapsed=elapsed,
                                  callerid=callerid, auto_recharge=auto_recharge,
                                  currency=currency)
        return True

    async def _getvar(self, channel: str, variable: str) -> str:
        """A channel variable's value, "" when unset or the channel is gone."""
        assert self.ami is not None
        try:
            reply = await self.ami.action("Getvar", Channel=channel, Variable=variable)
        except AmiError as exc:
            if exc.no_such_channel:
                return ""
            raise
        return str(reply.get("Value") or "")

    async def _astdb_get(self, key: CallKey) -> str | None:
        assert self.ami is not None
        try:
            # as_list left to panoramisk: a hit is an event list, a miss a plain Error
            # (as_list=True would wait for a list that never comes).
            reply = await self.ami.action("DBGet", Family=ASTDB_FAMILY, Key=str(key))
        except AmiError as exc:
            if exc.not_found:
                return None
            raise
        for message in reply if isinstance(reply, list) else [reply]:
            if message.get("Event") == "DBGetResponse":
                return str(message.get("Val", ""))
        return None

    async def _channel_alive(self, channel: str | None, key: CallKey) -> bool:
        if not channel:
            return False
        return await self._getvar(channel, "CHANNEL(uniqueid)") == key.uniqueid

    async def prune(self, now: datetime | None = None) -> int:
        """Forget log-in failures older than a day (or the throttle's window, when longer):
        the throttle only looks at the last ``callerid_failure_window`` seconds
        (ivr.login), and the table must not grow for ever."""
        cutoff = (now or datetime.now(UTC)) - self.failures_kept
        return await self.ledger.db.run(login.forget_failures, self.ledger.db, cutoff)

    def start(self, interval: float) -> None:
        """Sweep as soon as AMI is logged in (and again at once after each reconnect),
        then every ``interval`` seconds, until :meth:`close`. A database outage is logged
        once when it starts and once when it ends."""
        async def loop() -> None:
            outage = DatabaseOutage("recovery sweep", log)
            loop_time = asyncio.get_running_loop().time
            swept_login: int | None = None
            next_at = next_prune = 0.0
            while True:
                ami = self.ami
                if ami is not None and ami.connected and (
                        getattr(ami, "logins", 0) != swept_login or loop_time() >= next_at):
                    swept_login = getattr(ami, "logins", 0)
                    next_at = loop_time() + interval
                    try:
                        await self.recover_once()
                        if loop_time() >= next_prune:
                            await self.prune()
                            next_prune = loop_time() + PRUNE_EVERY
                    except Exception as exc:
                        if not outage.failed(exc):
                            log.exception("recovery sweep failed")
                    else:
                        outage.ended()
                await asyncio.sleep(min(AMI_POLL, interval))

        self._task = asyncio.ensure_future(loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _account_terms(ledger: Any, account_id: int) -> tuple[bool, str]:
    """(auto-recharge set, currency) of an account, for an adopted call."""
    with ledger.db.reading() as s:
        account = s.get(Account, account_id)
        if account is None:
            return False, ""
        return (account.auto_recharge_threshold is not None
                and account.auto_recharge_amount is not None), account.currency


def _seconds_seen(res: Reservation) -> int | None:
    """Whole seconds from the call's answer to the last time it was seen up with
    Asterisk alive; None when no server saw it answered."""
    if res.answered_at is None or res.alive_at is None:
        return None
    return max(0, math.floor((as_utc(res.alive_at) - as_utc(res.answered_at)).total_seconds()))


# The dialplan context that deletes a call's AstDB record (dialplan/ivr-access.conf).
FORGET_CHANNEL = "Local/s@ivr-forget/n"


async def forget_record(ami: Any, key: CallKey) -> None:
    """Delete a settled call's AstDB record. AMI's DBDel needs the "system" class, which
    also allows running shell commands, so the server's AMI user has no such class: a
    Local channel into the ``ivr-forget`` context deletes it (class "originate")."""
    await ami.action("Originate", Channel=FORGET_CHANNEL, Application="NoOp",
                     Variable=f"__IVR_FORGET={key!s}", Async="true", Timeout=5000)
