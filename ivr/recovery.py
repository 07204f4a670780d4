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
was connected (``Reservation.alive_at``, ivr.servers), never more than its grant.

The first sweep runs as soon as AMI is logged in, and again at once after each reconnect
(an Asterisk that restarted); then every ``recovery_interval`` seconds. With a server
lease (ivr.servers), only the reservations of this server, or of a server whose lease
ended, are touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .ami import AmiError
from .calls import ASTDB_FAMILY, CallController, CallOutcome, LiveCall
from .ledger import LedgerError
from .servers import DatabaseOutage, as_utc

if TYPE_CHECKING:
    from .servers import Lease

log = logging.getLogger("ivr.recovery")

AMI_POLL = 0.2  # seconds between looks at whether AMI (re)connected
LOST_CAUSE = "recovered: asterisk lost"


@dataclass
class RecoveryReport:
    settled: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    live: list[str] = field(default_factory=list)  # still up in Asterisk, not bridged
    adopted: list[str] = field(default_factory=list)  # still up and bridged: followed again


class Recovery:
    """The sweep over open reservations no flow of this process owns."""

    def __init__(self, controller: CallController, lease: Lease | None = None) -> None:
        self.controller = controller
        self.lease = lease  # None: every reservation is this server's to recover
        self.ami = controller.ami
        self.ledger = controller.ledger
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
                key = res.call_key
                if key is None or (self.controller.claimed(key) and self._adopted(key) is None):
                    continue
                if res.server_id in others:
                    continue  # another live server's call
                try:
                    await self._recover(res, report)
                except (AmiError, LedgerError) as exc:
                    log.warning("recovery of call %s postponed: %s", key, exc)
        if report.settled or report.released or report.adopted:
            log.info("recovery: settled %s, released %s, adopted %s", report.settled,
                     report.released, report.adopted)
        return report

    async def _recover(self, res: Any, report: RecoveryReport) -> None:
        key = res.call_key
        record = await self._astdb_get(key)
        if self._adopted(key) is not None:
            if record is None:
                return  # still going (its Hangup event makes the next sweep settle it)
            self.controller.done(key)  # ended, though its Hangup event was missed
        elif record is None:
            if await self._channel_alive(res.channel, key):
                # Asterisk enforces its limit; settle when it ends.
                if await self._adopt(res, key):
                    report.adopted.append(key)
                else:
                    report.live.append(key)
                return
            record = await self._astdb_get(key)  # it may have ended just now
        if record is None and (seen := _seconds_seen(res)) is not None:
            # Answered, but gone without a record: Asterisk died with it. Bill it up to
            # the last time a server saw it up with Asterisk alive.
            settled = await self.ledger.db.run(self.ledger.settle, res.id, seen, uniqueid=key,
                                              hangup_cause=LOST_CAUSE)
            log.warning("[%s] answered call gone without a record (Asterisk lost it): "
                        "billed %ss, from its answer to when it was last seen up (%s)",
                        key, settled.seconds, as_utc(res.alive_at).isoformat(" ", "seconds"))
            report.settled.append(key)
            return
        if record is None:
            # The channel is gone and never reached Dial's hang-up handler: nothing was
            # dialled, so nothing is charged.
            await self.ledger.db.run(self.ledger.release, res.id, uniqueid=key,
                                    hangup_cause="recovered: no record")
            report.released.append(key)
            return
        outcome = CallOutcome.parse(record)
        if outcome.dial_status == "ANSWER":
            await self.ledger.db.run(self.ledger.settle, res.id, outcome.billsec, uniqueid=key,
                                    hangup_cause=f"recovered: {outcome.dial_status}")
            report.settled.append(key)
        else:
            await self.ledger.db.run(self.ledger.release, res.id, uniqueid=key,
                                    hangup_cause=f"recovered: {outcome.dial_status}")
            report.released.append(key)
        assert self.ami is not None
        with contextlib.suppress(AmiError):
            await forget_record(self.ami, key)

    def _adopted(self, key: str) -> LiveCall | None:
        call = self.controller.live_call(key.rsplit("-", 1)[0])
        return call if call is not None and call.adopted and call.key == key else None

    async def _adopt(self, res: Any, key: str) -> bool:
        """Follow again a bridged call whose flow died with an earlier server: its hold is
        renewed (else Asterisk would cut it when the hold runs out, money left or not)
        and its warnings planned. False when it is not bridged (ringing, or in a menu)."""
        peer = await self._getvar(res.channel, "BRIDGEPEER")
        if not peer or await self._getvar(peer, "IVR_CALL_KEY") != key:
            return False
        try:
            answered_at = float(await self._getvar(peer, "IVR_ANSWERED_AT"))
        except ValueError:
            return False
        # The answer time is Asterisk's wall clock; Asterisk runs on this host.
        elapsed = max(0.0, time.time() - answered_at)
        language = (await self._getvar(res.channel, "CHANNEL(language)") or "en")
        call = LiveCall(key, key.rsplit("-", 1)[0], res.channel, res.id, res.seconds,
                        language.split("_")[0].lower(), card_id=res.card_id,
                        hold=self.controller.reservation_hold, dest_channel=peer,
                        answered_at=self.controller.now() - elapsed, adopted=True)
        self.controller.track(call)
        log.info("[%s] call %s adopted %.1fs after answer", call.uniqueid, key, elapsed)
        await self.controller.renew(call.uniqueid)
        return True

    async def _getvar(self, channel: str, variable: str) -> str:
        """A channel variable's value, "" when unset or the channel is gone."""
        assert self.ami is not None
        try:
            reply = await self.ami.action("Getvar", Channel=channel, Variable=variable)
        except AmiError as exc:
            if "no such channel" in str(exc).lower():
                return ""
            raise
        return str(reply.get("Value") or "")

    async def _astdb_get(self, key: str) -> str | None:
        assert self.ami is not None
        try:
            # as_list left to panoramisk: a hit is an event list, a miss a plain Error
            # (as_list=True would wait for a list that never comes).
            reply = await self.ami.action("DBGet", Family=ASTDB_FAMILY, Key=key)
        except AmiError as exc:
            if "not found" in str(exc).lower():
                return None
            raise
        for message in reply if isinstance(reply, list) else [reply]:
            if message.get("Event") == "DBGetResponse":
                return str(message.get("Val", ""))
        return None

    async def _channel_alive(self, channel: str | None, key: str) -> bool:
        if not channel:
            return False
        uniqueid = await self._getvar(channel, "CHANNEL(uniqueid)")
        return bool(uniqueid) and key.startswith(f"{uniqueid}-")

    def start(self, interval: float) -> None:
        """Sweep as soon as AMI is logged in (and again at once after each reconnect),
        then every ``interval`` seconds, until :meth:`close`. A database outage is logged
        once when it starts and once when it ends."""
        async def loop() -> None:
            outage = DatabaseOutage("recovery sweep", log)
            loop_time = asyncio.get_running_loop().time
            swept_login: int | None = None
            next_at = 0.0
            while True:
                ami = self.ami
                if ami is not None and ami.connected and (
                        getattr(ami, "logins", 0) != swept_login or loop_time() >= next_at):
                    swept_login = getattr(ami, "logins", 0)
                    next_at = loop_time() + interval
                    try:
                        await self.recover_once()
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


def _seconds_seen(res: Any) -> int | None:
    """Whole seconds from the call's answer to the last time it was seen up with
    Asterisk alive; None when no server saw it answered."""
    if res.answered_at is None or res.alive_at is None:
        return None
    return max(0, math.floor((as_utc(res.alive_at) - as_utc(res.answered_at)).total_seconds()))


# The dialplan context that deletes a call's AstDB record (dialplan/ivr-access.conf).
FORGET_CHANNEL = "Local/s@ivr-forget/n"


async def forget_record(ami: Any, key: str) -> None:
    """Delete a settled call's AstDB record. AMI's DBDel needs the "system" class, which
    also allows running shell commands, so the server's AMI user has no such class: a
    Local channel into the ``ivr-forget`` context deletes it (class "originate")."""
    await ami.action("Originate", Channel=FORGET_CHANNEL, Application="NoOp",
                     Variable=f"__IVR_FORGET={key}", Async="true", Timeout=5000)
