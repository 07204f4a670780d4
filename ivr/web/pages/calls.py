"""Live calls (from the database: every server's active reservations), refreshing by
themselves; hang-up over AMI (support and above); and any call's trace, live or ended
(ivr.live.trace), by the caller channel's uniqueid or a CDR's call key."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ...ami import AmiError
from ...db import Database
from ...live.trace import LiveRow, add_steps, live_calls, live_channel, read_trace
from .. import audit
from ..audit import Actor
from ..http import actor, console, form, page, render
from ..users import Role, Who

REASON_MAX = 500


async def _rows(request: Request) -> dict[str, Any]:
    c = console(request)
    return {"rows": await c.run(live_calls, c.db), "now": datetime.now(UTC),
            "ami": c.ami is not None}


@page()
async def calls_page(request: Request, who: Who) -> Response:
    return render(request, "calls/list.html", who, **await _rows(request))


@page()
async def calls_rows(request: Request, who: Who) -> Response:
    """The table's body alone: what the page's htmx asks for every 2 s."""
    return render(request, "calls/rows.html", who, **await _rows(request))


@page(Role.SUPPORT)
async def hangup(request: Request, who: Who) -> Response:
    """Hang up a live call's caller channel over AMI: only a channel of a live call,
    never any string posted."""
    c = console(request)
    data = await form(request)
    channel = str(data.get("channel") or "").strip()
    reason = str(data.get("reason") or "").strip()[:REASON_MAX]

    async def answer(status: int, **message: str) -> Response:
        return render(request, "calls/list.html", who, status=status, reason=reason,
                      **message, **await _rows(request))

    if c.ami is None or not c.ami.connected:
        return await answer(503, error="No AMI connection to Asterisk here: nothing was "
                                       "done (the call ends at its limit).")
    row = await c.run(live_channel, c.db, channel)
    if row is None:
        return await answer(400, error=f"{channel or 'that channel'} is not a live call's "
                                       "channel (it may have ended): nothing was done.")
    try:
        await c.ami.action("Hangup", Channel=row.channel)
    except AmiError as exc:
        return await answer(502, error=f"Asterisk did not hang up {row.channel}: {exc}")
    await c.run(_audit_hangup, c.db, actor(request, who), row, reason)
    return await answer(200, message=f"Hung up {row.channel} (call {row.call_key} to "
                                     f"{row.number}).")


def _audit_hangup(db: Database, who: Actor, row: LiveRow, reason: str) -> None:
    with db.transaction() as s:
        audit.record(s, who, "call.hangup", row.channel,
                     detail={"call": row.call_key, "number": row.number, "card": row.card},
                     reason=reason)
        add_steps(s, [(row.call_id, time.time(), "hangup",
                       {"by": "console", "user": who.who.name, "reason": reason})])


SETTLING = timedelta(seconds=10)


async def _trace(request: Request) -> dict[str, Any]:
    c = console(request)
    call = request.path_params["call_id"]
    events = await c.run(read_trace, c.db, call)
    if not events:
        raise HTTPException(404, f"No trace of call {call}: not a call's uniqueid or key, "
                                 f"or older than {c.app.settings.call_trace_days} day(s).")
    call_id = events[0].call_id
    # Followed while the call is up, and for a while after its last step: the last
    # steps (the settlement) reach the database up to a second after they happen.
    live = (events[-1].at > datetime.now(UTC) - SETTLING
            or any(r.call_id == call_id for r in await c.run(live_calls, c.db)))
    return {"call": call, "call_id": call_id, "events": events, "live": live}


@page()
async def trace_page(request: Request, who: Who) -> Response:
    return render(request, "calls/trace.html", who, **await _trace(request))


@page()
async def trace_events(request: Request, who: Who) -> Response:
    """The timeline alone (a live call's page asks for it every 2 s)."""
    return render(request, "calls/events.html", who, **await _trace(request))


routes: list[BaseRoute] = [
    Route("/calls", calls_page, methods=["GET"]),
    Route("/calls/rows", calls_rows, methods=["GET"]),
    Route("/calls/hangup", hangup, methods=["POST"]),
    Route("/calls/{call_id}/trace", trace_page, methods=["GET"]),
    Route("/calls/{call_id}/trace/events", trace_events, methods=["GET"]),
]
