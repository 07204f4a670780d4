"""Failed SIP attempts per source address, and the temporary blocks they lead to.

Asterisk refuses a request from an unknown address, with an unknown user or a wrong
password, with the same answer, and raises a security event for it (AMI class
``security``: ``InvalidAccountID``, ``ChallengeResponseFailed``, ``InvalidPassword``;
``RemoteAddress`` like ``IPV4/UDP/203.0.113.9/5060``). The server follows them
(:class:`SipGuard`): ``sip_block_failures`` failures from one address within
``sip_block_window`` seconds block it for ``sip_block_seconds`` (0 failures: never).

A block is a row of ``sip_blocks``, so ``ivr sip blocks list`` shows it and ``ivr sip
blocks remove`` lifts it. It is applied like any SIP change (:func:`ivr.sip.apply_objects`):
rendered into the instance's ``pjsip-objects.conf`` as the ACL ``ivr-blocked``, which
res_pjsip_acl checks before anything else (a blocked source gets 403, whatever it sends),
then res_pjsip reloaded (live calls are not touched). The server lifts expired blocks the
same way, and applies blocks another server made, within :data:`CHECK_INTERVAL`.

Counting is :class:`FailureCounter`: no I/O, its clock injected.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .db.models import SipBlock
from .sip import SipError, SipNotFound

if TYPE_CHECKING:
    from .ami import AmiClient
    from .config import Settings
    from .db import Database

log = logging.getLogger("ivr.sipguard")

# The security events that count as a failed attempt. Not ChallengeSent (every client's
# first request is challenged), nor FailedACL (a blocked source's requests: counted once).
FAILURE_EVENTS = frozenset({"invalidaccountid", "challengeresponsefailed", "invalidpassword"})
SERVICE = "PJSIP"  # AMI logins raise the same events; they are loopback only
# The account of the stand-in endpoint Asterisk challenges an unknown user with: its
# ChallengeResponseFailed follows the InvalidAccountID of the same request, counted already.
UNKNOWN_ACCOUNT = "<unknown>"
CHECK_INTERVAL = 5.0  # seconds between looks at the blocks in the database
CLOSE_TIMEOUT = 5.0  # seconds close() waits for the loop and block tasks to end
MAX_SOURCES = 10_000  # addresses counted at once (a spoofed-source flood stays bounded)


def failed_attempt(event: Mapping[str, Any]) -> str | None:
    """The source address of a security event that counts as one failed SIP request
    (measured on Asterisk 22: a wrong password is one ChallengeResponseFailed; an unknown
    user is one InvalidAccountID per request, its challenge answered or not); None for
    any other event."""
    name = str(event.get("Event", "")).lower()
    if name not in FAILURE_EVENTS or str(event.get("Service", "")) != SERVICE:
        return None
    if name == "challengeresponsefailed" and event.get("AccountID") == UNKNOWN_ACCOUNT:
        return None
    return source_address(str(event.get("RemoteAddress", "")))


def source_address(remote: str) -> str | None:
    """The address of a security event's ``RemoteAddress`` (``IPV4/UDP/1.2.3.4/5060``,
    ``IPV6/UDP/[::1]/5060``), normalised; None when it is not one."""
    parts = remote.split("/")
    if len(parts) < 3:
        return None
    try:
        return str(ipaddress.ip_address(parts[2].strip("[]")))
    except ValueError:
        return None


class FailureCounter:
    """Failures per source address in a sliding window. :meth:`failed` says when one
    reaches the threshold; the address then counts as blocked for ``block_seconds`` and
    its failures are not counted again meanwhile. ``threshold`` 0: nothing is counted."""

    def __init__(self, threshold: int, window: float, block_seconds: float, *,
                 clock: Callable[[], float] = time.monotonic,
                 max_sources: int = MAX_SOURCES) -> None:
        if threshold < 0 or window <= 0 or block_seconds <= 0:
            raise ValueError("threshold >= 0, window and block_seconds > 0")
        self.threshold = threshold
        self.window = window
        self.block_seconds = block_seconds
        self._clock = clock
        self._max_sources = max_sources
        self._failures: dict[str, deque[float]] = {}
        self._blocked: dict[str, float] = {}  # address -> until, on the clock

    def failed(self, address: str) -> bool:
        """Count one failure from ``address``; True when it makes the address blocked
        (then once only, until the block ends)."""
        if self.threshold == 0:
            return False
        now = self._clock()
        if self.is_blocked(address):
            return False
        times = self._failures.pop(address, None)
        if times is None:
            if len(self._failures) >= self._max_sources:
                self.prune()
            if len(self._failures) >= self._max_sources:  # drop the longest quiet one
                del self._failures[next(iter(self._failures))]
            times = deque()
        self._failures[address] = times  # last in the order: the latest failure
        times.append(now)
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) < self.threshold:
            return False
        del self._failures[address]
        self._blocked[address] = now + self.block_seconds
        return True

    def is_blocked(self, address: str) -> bool:
        until = self._blocked.get(address)
        if until is None:
            return False
        if until <= self._clock():
            del self._blocked[address]
            return False
        return True

    def count(self, address: str) -> int:
        """Failures from ``address`` within the window now."""
        now = self._clock()
        return sum(1 for t in self._failures.get(address, ()) if t > now - self.window)

    def block(self, address: str, seconds: float) -> None:
        """A block made elsewhere (another server, the database at start)."""
        self._failures.pop(address, None)
        self._blocked[address] = self._clock() + seconds

    def lift(self, address: str) -> None:
        """The block ended early (``ivr sip blocks remove``): count afresh."""
        self._blocked.pop(address, None)
        self._failures.pop(address, None)

    def sync(self, blocks: Mapping[str, float]) -> None:
        """The live blocks are exactly ``blocks`` (address -> seconds left)."""
        for address in list(self._blocked):
            if address not in blocks:
                self.lift(address)
        for address, left in blocks.items():
            self.block(address, left)

    def prune(self) -> None:
        """Forget addresses with no failure within the window, and ended blocks."""
        now = self._clock()
        for address, times in list(self._failures.items()):
            if not times or times[-1] <= now - self.window:
                del self._failures[address]
        for address, until in list(self._blocked.items()):
            if until <= now:
                del self._blocked[address]

    def next_end(self) -> float | None:
        """Seconds until the soonest block ends; None without a block."""
        now = self._clock()
        return min((until - now for until in self._blocked.values()), default=None)

    @property
    def sources(self) -> int:
        """Addresses being counted."""
        return len(self._failures)


# --------------------------------------------------------------------------- the table


def check_address(text: str) -> str:
    """An IPv4 or IPv6 address, normalised; SipError otherwise."""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise SipError(f"not an IP address: {text!r}") from None


def add_block(session: Session, address: str, reason: str, seconds: float,
              now: datetime) -> SipBlock | None:
    """Block ``address`` until ``now + seconds``; None when a live block is there
    already (another server made it first). An ended block's row is reused."""
    address = check_address(address)
    row = session.scalar(select(SipBlock).where(SipBlock.address == address))
    until = now + timedelta(seconds=seconds)
    if row is not None:
        if aware(row.until) > now:
            return None
        row.reason, row.created_at, row.until = reason[:200], now, until
    else:
        row = SipBlock(address=address, reason=reason[:200], created_at=now, until=until)
        session.add(row)
    session.flush()
    return row


def list_blocks(session: Session, now: datetime | None = None) -> Sequence[SipBlock]:
    """The live blocks, oldest first."""
    now = now or datetime.now(UTC)
    return session.scalars(select(SipBlock).where(SipBlock.until > now)
                           .order_by(SipBlock.created_at, SipBlock.address)).all()


def remove_block(session: Session, address: str) -> None:
    """Lift a block now (SipNotFound when there is no live one)."""
    address = check_address(address)
    row = session.scalar(select(SipBlock).where(SipBlock.address == address))
    if row is None or aware(row.until) <= datetime.now(UTC):
        raise SipNotFound(f"{address} is not blocked")
    session.delete(row)


def drop_ended(session: Session, now: datetime) -> list[str]:
    """Delete the blocks ended by ``now``; their addresses."""
    ended = list(session.scalars(select(SipBlock.address).where(SipBlock.until <= now)))
    if ended:
        session.execute(delete(SipBlock).where(SipBlock.until <= now))
    return ended


def aware(value: datetime) -> datetime:
    """A time read from the database, timezone-aware (SQLite gives timezone-aware
    columns back naive; they were stored as UTC)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- the server


@dataclass(frozen=True)
class _Look:
    """What one look at the table found."""

    live: dict[str, float]  # address -> seconds left
    ended: list[str]


class SipGuard:
    """The server's side: counts the failures an Asterisk box reports over AMI, records
    a block in the database when an address reaches the threshold, and applies the
    blocks to the instance beside the server (``apply``: blocking, run in a thread;
    :func:`ivr.sip.apply_objects` in ``ivr serve``). Every :data:`CHECK_INTERVAL`
    seconds, and when the next block ends, it lifts ended blocks and applies any change
    made elsewhere (another server, ``ivr sip blocks remove``)."""

    def __init__(self, settings: Settings, db: Database, ami: AmiClient | None,
                 apply: Callable[[], bool], *, check_interval: float = CHECK_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.db = db
        self.ami = ami
        self._apply = apply
        self.check_interval = check_interval
        self.counter = FailureCounter(settings.sip_block_failures, settings.sip_block_window,
                                      settings.sip_block_seconds, clock=clock)
        # The addresses the instance was last given (None: not yet, or that failed).
        self.applied: frozenset[str] | None = None
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._unsubscribe: Callable[[], None] | None = None
        self._loop: asyncio.Task[None] | None = None
        self._closed = False
        self._unapplied_warned = False

    def start(self) -> None:
        if self.ami is not None:
            self._unsubscribe = self.ami.on_event("*", self.on_event)
        self._loop = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        """Stop following events and looking at the table. The loop also ends by its own
        flag: a cancellation can be lost when it lands as a database step completes
        (``asyncio.wait_for`` in Python 3.11), and the server's shutdown must not wait
        on a loop that went on."""
        self._closed = True
        self._wake.set()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        tasks = [t for t in (self._loop, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT)
        self._loop = None

    # ------------------------------------------------------------------ events

    def on_event(self, event: Mapping[str, Any]) -> None:
        """An AMI event: a failed SIP attempt is counted against its source address."""
        address = failed_attempt(event)
        if address is None:
            return
        if self.counter.failed(address):
            account = "".join(c for c in str(event.get("AccountID", "?"))[:40]
                              if c.isprintable())  # what the far end sent as its user
            reason = (f"{self.counter.threshold} failed SIP attempts within "
                      f"{self.counter.window:g}s (last: {event.get('Event')}, account "
                      f"{account})")
            task = asyncio.ensure_future(self._block(address, reason))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _block(self, address: str, reason: str) -> None:
        seconds = self.counter.block_seconds
        try:
            made = await self.db.run(self._add, address, reason, seconds)
        except Exception as exc:
            log.error("SIP block of %s not recorded (%s); retried at its next failures",
                      address, exc)
            self.counter.lift(address)
            return
        if made:
            log.warning("SIP source %s blocked for %gs: %s", address, seconds, reason)
        try:
            await self.check()
        except Exception as exc:  # the periodic look applies it
            log.error("SIP block of %s not applied yet (%s); next look in %gs", address,
                      exc, self.check_interval)

    def _add(self, address: str, reason: str, seconds: float) -> bool:
        try:
            with self.db.transaction() as s:
                return add_block(s, address, reason, seconds, datetime.now(UTC)) is not None
        except IntegrityError:  # another server inserted it between our read and write
            return False

    # ------------------------------------------------------------------ the table

    async def check(self) -> None:
        """Lift ended blocks, and give the instance the live ones when they changed."""
        async with self._lock:
            look = await self.db.run(self._look)
            for address in look.ended:
                log.info("SIP block of %s ended", address)
            self.counter.sync(look.live)
            live = frozenset(look.live)
            if live == self.applied:
                return
            if self.applied is None and not live and not look.ended:
                # The first look, with no block live or just ended: the instance's
                # objects were written from this table when it started (`ivr run`,
                # `ivr asterisk up`), so there is nothing to reload.
                self.applied = live
                return
            try:
                done = await asyncio.to_thread(self._apply)
            except Exception as exc:
                self.applied = None
                log.error("SIP blocks not applied (%s); retried in %gs", exc,
                          self.check_interval)
                return
            self.applied = live
            if not done and live and not self._unapplied_warned:
                self._unapplied_warned = True
                log.warning("SIP blocks recorded but not applied: this server's Asterisk "
                            "instance is not running (they apply when it starts)")
            self._wake.set()  # the next end may have changed

    def _look(self) -> _Look:
        """A read (no write lock) every look; a write only when a block has ended."""
        now = datetime.now(UTC)
        with self.db.reading() as s:
            live = {b.address: (aware(b.until) - now).total_seconds()
                    for b in list_blocks(s, now)}
            ended = any(True for _ in s.scalars(
                select(SipBlock.id).where(SipBlock.until <= now).limit(1)))
        if not ended:
            return _Look(live, [])
        with self.db.transaction() as s:
            return _Look(live, drop_ended(s, now))

    async def _run(self) -> None:
        while not self._closed:
            try:
                await self.check()
            except Exception as exc:
                log.error("SIP blocks not checked (%s); next look in %gs", exc,
                          self.check_interval)
            self.counter.prune()
            if self._closed:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._next_look())

    def _next_look(self) -> float:
        """Seconds to the next look: the interval, or sooner when a block ends sooner."""
        end = self.counter.next_end()
        soonest = self.check_interval if end is None else end + 0.05
        return max(0.05, min(self.check_interval, soonest))
