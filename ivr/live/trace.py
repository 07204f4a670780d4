"""Each call's story, step by step: the prompts played, the keys pressed (masked where the
caller types a secret), the grant and each hold renewal, the warnings whispered, top-ups,
limit moves, how the call ended and what it cost.

One :class:`CallTrace` per server process (``App.trace``). Recording a step
(:meth:`CallTrace.event`) only appends to a list: it runs on the call set-up path. The
list is written in one transaction (one multi-row insert) half a second after the first
step buffered, and on :meth:`CallTrace.close`, so a live call's story is in the database
within about a second, readable by any process (``ivr calls trace``, the console).

A call is named by its caller channel's Asterisk uniqueid; the key of one dialled call
(``<uniqueid>-<n>``, ivr.live.calls.CallKey: the CDR's and reservation's) names the same
story. Steps older than ``call_trace_days`` are deleted by the server (:func:`prune`).

Who records what:

- the AGI session (ivr.agi.session) reports each command and reply to the watcher
  :meth:`CallTrace.watcher` gives it (``App`` attaches one per call): prompts, keys,
  numbers said, Dial, hang-ups. Inside ``secret`` (PIN, card number, codes, payment
  menus) keys and digits said are replaced by ``•`` (their count is kept);
- the charging session and the call controller (ivr.live.charging, ivr.live.calls): the
  grant, renewals, limit moves, warnings, credits, the end and its cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import Table, delete, insert, select
from sqlalchemy.orm import Session

from ..agi.protocol import Reply
from ..db import Database
from ..db.models import CallEvent, Card, Reservation, ReservationStatus
from ..db.types import as_utc, display

log = logging.getLogger("ivr.live.trace")

MASK = "•"
FLUSH_INTERVAL = 0.5  # seconds from the first buffered step to its write
MAX_BUFFER = 50_000  # steps kept while the database cannot be written (oldest dropped)
KIND_MAX = 24  # the column's width
CALL_ID_MAX = 150

# One buffered step: (call id, wall time, kind, detail).
_Step = tuple[str, float, str, dict[str, Any]]


@dataclass(frozen=True)
class TraceEvent:
    """One step of a call's story, as read back."""

    call_id: str
    at: datetime  # UTC
    kind: str
    detail: dict[str, Any]

    @property
    def clock(self) -> str:
        """``HH:MM:SS.mmm`` (UTC)."""
        return self.at.strftime("%H:%M:%S.") + f"{self.at.microsecond // 1000:03d}"

    @property
    def text(self) -> str:
        return describe(self.kind, self.detail)

    def line(self) -> str:
        return f"{self.clock}  {self.kind:<9} {self.text}".rstrip()

    def as_json(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "kind": self.kind, "detail": self.detail,
                "text": self.text}


class CallTrace:
    """The step recorder of one server process over its database."""

    def __init__(self, db: Database, *, interval: float = FLUSH_INTERVAL,
                 clock: Any = time.time,
                 write: Callable[[list[_Step]], None] | None = None) -> None:
        """``write``: how a batch is written (a test's own); by default one transaction
        on the database (:func:`write_steps`)."""
        self.db = db
        self.interval = interval
        self._clock = clock
        # Writes go one at a time through a thread of their own and, on PostgreSQL, a
        # connection pool of their own: a write stuck on a database that stopped answering
        # holds that thread and connection only, never one that calls need, and no second
        # write starts beside it (the steps wait in the buffer). On SQLite the writes share
        # the database object, whose lock orders this process's writers.
        self._writer: Database | None = None
        if write is None:
            writer = self._writer = (db if db.is_sqlite
                                     else Database(db.url, timeout=db.timeout))
            write = functools.partial(write_steps, writer)
        self._write = write
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="ivr-trace")
        self._buffer: list[_Step] = []
        self._timer: asyncio.TimerHandle | None = None
        self._writing: asyncio.Task[None] | None = None
        self._closed = False
        self.dropped = 0  # steps lost to a full buffer (the database long unwritable)

    # ------------------------------------------------------------------ recording

    def event(self, call_id: str, kind: str, **detail: Any) -> None:
        """Record one step of a call (no I/O: written within ``interval`` seconds)."""
        if not call_id:
            return
        self._buffer.append((call_id[:CALL_ID_MAX], self._clock(), kind[:KIND_MAX], detail))
        if self._timer is None and self._writing is None and not self._closed:
            self._schedule()

    def watcher(self, call_id: str) -> AgiWatcher:
        """What an AGI session reports its commands to, for the call ``call_id``."""
        return AgiWatcher(self, call_id)

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def _schedule(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a command, a test): written by flush()/close()
            return
        self._timer = loop.call_later(self.interval, self._start_write)

    def _start_write(self) -> None:
        self._timer = None
        self._writing = asyncio.ensure_future(self._write_buffered())
        self._writing.add_done_callback(self._written)

    def _written(self, task: asyncio.Task[None]) -> None:
        self._writing = None
        if self._buffer and not self._closed:
            self._schedule()

    async def _write_buffered(self) -> None:
        batch, self._buffer = self._buffer, []
        if not batch:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._write, batch)
        except Exception as exc:
            # Kept for the next try; the oldest go first when the database stays away.
            self._buffer[:0] = batch
            excess = len(self._buffer) - MAX_BUFFER
            if excess > 0:
                del self._buffer[:excess]
                self.dropped += excess
            log.warning("call trace: %d step(s) not written yet: %s", len(batch), exc)

    async def flush(self) -> None:
        """Write what is buffered now (and wait for a write under way)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._writing is not None:
            await asyncio.wait({self._writing})
        if self._buffer:
            await self._write_buffered()

    async def close(self, timeout: float = 5.0) -> None:
        """Write what is left; never raises (a trace is not worth failing a shutdown)."""
        self._closed = True
        try:
            await asyncio.wait_for(self.flush(), timeout)
        except Exception as exc:
            log.warning("call trace: %d step(s) lost at close: %s", len(self._buffer), exc)
        self._thread.shutdown(wait=False)
        if self._writer is not None and self._writer is not self.db:
            self._writer.dispose()

    async def prune(self, days: int) -> int:
        """Delete the steps older than ``days`` days; the number deleted."""
        return await self.db.run(prune, self.db, days)


class AgiWatcher:
    """Turns one call's AGI commands and replies into steps (ivr.agi.session.Watcher)."""

    def __init__(self, trace: CallTrace, call_id: str) -> None:
        self.trace = trace
        self.call_id = call_id
        self._hung_up = False

    def sent(self, name: str, args: tuple[object, ...], secret: bool) -> None:
        event = self.trace.event
        if name in ("STREAM FILE", "GET DATA") and args:
            event(self.call_id, "prompt", **_prompt(str(args[0]), secret))
        elif name in ("SAY DIGITS", "SAY NUMBER") and args:
            said = str(args[0])
            event(self.call_id, "say", **({"said": MASK * len(said), "masked": True}
                                          if secret else {"said": said}))
        elif name == "EXEC" and args:
            app = str(args[0])
            options = str(args[1]) if len(args) > 1 else ""
            if app.lower() in ("playback", "background"):
                for sound in options.split(",")[0].split("&"):
                    event(self.call_id, "prompt", **_prompt(sound, secret))
            elif app.lower() == "dial":
                parts = options.split(",")
                event(self.call_id, "dial", target=parts[0],
                      **({"timeout": int(parts[1])} if len(parts) > 1 and parts[1].isdigit()
                         else {}))
            else:
                event(self.call_id, "exec", app=app)
        elif name == "HANGUP" and not self._hung_up:
            self._hung_up = True
            event(self.call_id, "hangup", by="ivr")

    def replied(self, name: str, args: tuple[object, ...], reply: Reply, secret: bool) -> None:
        if reply.code != 200:
            return
        if name == "GET DATA":
            typed = reply.result
            if reply.timed_out and typed == "":
                self.trace.event(self.call_id, "keys", keys="", timeout=True)
            elif typed not in ("", "-1"):
                self.trace.event(self.call_id, "keys", **_keys(typed, secret))
        elif name in ("STREAM FILE", "WAIT FOR DIGIT", "SAY DIGITS", "SAY NUMBER"):
            try:
                code = int(reply.result)
            except ValueError:
                return
            if code > 0:
                self.trace.event(self.call_id, "keys", **_keys(chr(code), secret))

    def hung_up(self) -> None:
        """Asterisk said the caller's channel hung up."""
        if not self._hung_up:
            self._hung_up = True
            self.trace.event(self.call_id, "hangup", by="caller")


def _keys(typed: str, secret: bool) -> dict[str, Any]:
    if secret:
        return {"keys": MASK * len(typed), "count": len(typed), "masked": True}
    return {"keys": typed, "count": len(typed)}


def _prompt(path: str, secret: bool) -> dict[str, Any]:
    """A prompt of the store (``.../<lang>/<id>/v<n>``) by id, language and version; any
    other sound by name. A digit said as a sound inside ``secret`` is masked."""
    parts = path.rstrip("/").split("/")
    if len(parts) >= 3 and parts[-1][:1] == "v" and parts[-1][1:].isdigit():
        return {"prompt": parts[-2], "lang": parts[-3], "version": int(parts[-1][1:])}
    if secret and parts[-1].isdigit():
        return {"prompt": MASK, "masked": True}
    return {"prompt": path}


# --------------------------------------------------------------------------- storage


def write_steps(db: Database, steps: list[_Step]) -> None:
    """Write buffered steps in one transaction (one Core executemany: no ORM work for
    the thousands of steps a busy server buffers)."""
    if not steps:
        return
    with db.connection() as conn:
        conn.execute(_NEW_STEP, _rows(steps))


def add_steps(s: Session, steps: list[_Step]) -> None:
    """Insert steps in the transaction ``s`` (a change recorded with its audit line)."""
    if steps:
        s.execute(_NEW_STEP, _rows(steps))


_NEW_STEP = insert(cast(Table, CallEvent.__table__))


def _rows(steps: list[_Step]) -> list[dict[str, Any]]:
    return [{"call_id": call_id[:CALL_ID_MAX], "at": datetime.fromtimestamp(at, UTC),
             "kind": kind[:KIND_MAX],
             "detail": json.dumps(detail, default=_plain, separators=(",", ":"),
                                  ensure_ascii=False)}
            for call_id, at, kind, detail in steps]


def _plain(value: object) -> object:
    if isinstance(value, Decimal):
        return display(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def prune(db: Database, days: int, *, now: datetime | None = None) -> int:
    """Delete steps older than ``days`` days (0 or less: keep everything)."""
    if days <= 0:
        return 0
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    with db.transaction() as s:
        result = s.execute(delete(CallEvent).where(CallEvent.at < cutoff))
    return int(getattr(result, "rowcount", 0) or 0)


def call_ids(call: str) -> list[str]:
    """The call ids a name given by an operator may stand for: itself, and the channel's
    uniqueid when it is a call key ``<uniqueid>-<n>``."""
    from .calls import CallKey

    names = [call.strip()]
    with contextlib.suppress(ValueError):
        names.append(CallKey.parse(names[0]).uniqueid)
    return names


def read_trace(db: Database, call: str) -> list[TraceEvent]:
    """A call's steps in order; ``call`` is the caller channel's uniqueid or a call key
    (a CDR's or reservation's). Empty when there is none (unknown, or pruned)."""
    with db.reading() as s:
        return _read(s, call)


def _read(s: Session, call: str) -> list[TraceEvent]:
    for call_id in call_ids(call):
        if not call_id:
            continue
        rows = s.execute(select(CallEvent.call_id, CallEvent.at, CallEvent.kind,
                                CallEvent.detail)
                         .where(CallEvent.call_id == call_id)
                         .order_by(CallEvent.at, CallEvent.id)).all()
        if rows:
            return _with_currency([TraceEvent(r.call_id, as_utc(r.at), r.kind,
                                              _detail(r.detail)) for r in rows])
    return []


def _detail(text: str) -> dict[str, Any]:
    try:
        found = json.loads(text or "{}")
    except ValueError:
        return {"text": text}
    return found if isinstance(found, dict) else {"value": found}


def _with_currency(events: list[TraceEvent]) -> list[TraceEvent]:
    """An end step written without its currency (a call settled by the recovery sweep)
    takes its grant's."""
    currency: dict[str, str] = {}
    for event in events:
        if event.kind == "grant" and event.detail.get("currency"):
            currency[str(event.detail.get("call"))] = str(event.detail["currency"])
        elif event.kind == "end" and not event.detail.get("currency"):
            found = currency.get(str(event.detail.get("call")))
            if found:
                event.detail["currency"] = found
    return events


# --------------------------------------------------------------------------- text


def describe(kind: str, d: dict[str, Any]) -> str:
    """A step in words, as the CLI and the console show it."""
    if kind == "start":
        return f"call on route {d.get('route', '?')} ({d.get('channel', '')})"
    if kind == "prompt":
        if "lang" in d:
            return f"played {d.get('prompt')} ({d.get('lang')}, v{d.get('version')})"
        return f"played {d.get('prompt')}"
    if kind == "say":
        return f"said {d.get('said')}"
    if kind == "keys":
        if d.get("timeout"):
            return "no keys (timed out)"
        count = d.get("count", len(str(d.get("keys", ""))))
        masked = " (masked)" if d.get("masked") else ""
        return f"pressed {d.get('keys')} [{count} key{'s' if count != 1 else ''}]{masked}"
    if kind == "dial":
        timeout = f" for up to {d['timeout']}s of ringing" if "timeout" in d else ""
        return f"dialled {d.get('target')}{timeout}"
    if kind == "exec":
        return f"ran {d.get('app')}"
    if kind == "hangup" and d.get("channel"):
        cause = f" ({d['cause']})" if d.get("cause") else ""
        return f"the {d['channel']} channel hung up{cause}"
    if kind == "hangup":
        by = {"ivr": "the IVR", "caller": "the caller"}.get(str(d.get("by")), d.get("by"))
        if d.get("by") == "console":
            reason = f": {d['reason']}" if d.get("reason") else ""
            return f"hung up from the console by {d.get('user')}{reason}"
        cause = f" ({d['cause']})" if d.get("cause") else ""
        return f"hung up by {by}{cause}"
    if kind == "grant":
        return (f"granted {d.get('seconds')}s to {d.get('number')} {d.get('destination', '')}"
                f" (held {d.get('amount')} {d.get('currency', '')}; the balance buys "
                f"{d.get('affordable')}s)").replace("  ", " ")
    if kind == "refused":
        return f"refused {d.get('number')}: {d.get('reason')}"
    if kind == "answer":
        return f"answered ({d.get('channel', '')})"
    if kind == "renew":
        if d.get("error"):
            return f"hold not renewed: {d['error']}"
        return (f"hold renewed: {d.get('seconds')}s from answer (held {d.get('amount')}; "
                f"the balance buys {d.get('affordable')}s)")
    if kind == "limit":
        why = f" ({d['why']})" if d.get("why") else ""
        return f"limit moved: {d.get('left')}s left{why}"
    if kind == "warning":
        failed = f"; not whispered: {d['error']}" if d.get("error") else ""
        which = "first" if d.get("warning") == "warning" else d.get("warning")
        return f"{which} warning whispered: {d.get('left')}s left{failed}"
    if kind == "topup":
        how = "auto-recharge" if d.get("auto") else "top-up"
        return f"{how} credited to account {d.get('account')}"
    if kind == "credited":
        return f"money credited to account {d.get('account')}: the call may last longer"
    if kind == "end":
        if d.get("status") != "ANSWER":
            return f"ended: {d.get('status')} ({d.get('cause', '')}), no charge"
        return (f"ended: {d.get('cause', '')}; {d.get('seconds')}s billed "
                f"({d.get('billsec')}s talked), cost {d.get('cost')} {d.get('currency', '')}"
                f", balance {d.get('balance')}").replace("  ", " ")
    if kind == "released":
        return f"hold released: {d.get('why')}"
    return " ".join(f"{k}={v}" for k, v in d.items())


# --------------------------------------------------------------------------- live calls


@dataclass(frozen=True)
class LiveRow:
    """A live call as the database sees it (an active reservation), for the console."""

    reservation_id: int
    call_key: str
    call_id: str  # the caller channel's uniqueid: the trace's name
    card: str
    number: str
    destination: str
    started: datetime
    answered: datetime | None
    granted: int  # seconds from answer
    amount: Decimal  # held
    channel: str

    def left(self, now: datetime) -> int | None:
        """Seconds until the grant runs out (None: not answered yet)."""
        if self.answered is None:
            return None
        return max(0, round(self.granted - (now - self.answered).total_seconds()))


def live_calls(db: Database) -> list[LiveRow]:
    """The active reservations, newest first, with when each was answered: the answer
    step of its trace (written within a second), else the server's heartbeat's."""
    with db.reading() as s:
        rows = s.execute(
            select(Reservation, Card.number)
            .outerjoin(Card, Card.id == Reservation.card_id)
            .where(Reservation.status == ReservationStatus.ACTIVE)
            .order_by(Reservation.created_at.desc(), Reservation.id.desc())).all()
        found: list[LiveRow] = []
        for res, card in rows:
            key = res.call_key or res.uniqueid or ""
            call_id = call_ids(key)[-1] if key else ""
            answered = as_utc(res.answered_at) if res.answered_at else None
            if call_id:
                at = s.scalar(select(CallEvent.at).where(
                    CallEvent.call_id == call_id, CallEvent.kind == "answer",
                    CallEvent.at >= res.created_at)
                    .order_by(CallEvent.at.desc()).limit(1))
                if at is not None:
                    answered = as_utc(at)
            found.append(LiveRow(res.id, key, call_id, card or "", res.number, res.destination,
                                 as_utc(res.created_at), answered, res.seconds, res.amount,
                                 res.channel or ""))
        return found


def live_channel(db: Database, channel: str) -> LiveRow | None:
    """The live call whose caller channel is ``channel`` (None: not a live call's)."""
    if not channel:
        return None
    return next((row for row in live_calls(db) if row.channel == channel), None)
