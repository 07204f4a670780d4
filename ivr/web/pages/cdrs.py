"""Call records: filtered (the filters of ``ivr cdrs list``, read by the same service
function), newest first, 50 a page with a keyset (``?before=<id of the last row shown>``),
each row linking to its call's trace; and the filtered records as CSV (the columns of
``ivr cdrs list --csv``), streamed piece by piece. Support and admin only: the records
show the callers' numbers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from ...db import Database
from ...money import reports
from ...money.reports import CdrFilter, CdrRow
from ..http import console, page, render
from ..users import Role, Who

PER_PAGE = 50
# A search stops after this long, or sooner under a short database timeout: a filter no
# index covers (a destination few records match) would otherwise scan the whole table on
# a database worker thread that calls need too, long after its page gave up.
SEARCH_SECONDS = 3.0
SLOW = ("this search stopped after {seconds:g} s: few call records match and no index "
        "covers this filter; narrow it with a time range, a card or an account")
FIELDS = ("from", "to", "card", "account", "destination", "status", "cause")


def _read_filter(params: Mapping[str, str]) -> tuple[dict[str, str], CdrFilter | None,
                                                     dict[str, str]]:
    """The typed filter values, the filter (None when one cannot be read) and the errors
    by field. Times are UTC."""
    values = {name: str(params.get(name) or "").strip() for name in FIELDS}
    try:
        found = reports.cdr_filter(
            start=values["from"], end=values["to"], card=values["card"],
            account=values["account"], destination=values["destination"],
            status=values["status"], cause=values["cause"])
    except reports.FilterError as exc:
        return values, None, {exc.field: str(exc)}
    return values, found, {}


def _seconds(db: Database) -> float:
    return SEARCH_SECONDS if db.timeout is None else min(SEARCH_SECONDS, db.timeout * 0.8)


def _piece_seconds(db: Database) -> float | None:
    """An export's pieces get as long as the database's timeout lets a step wait (a
    little less, so that the worker is free when the download gives up): a piece is
    short (reports.CSV_CHUNK records), and one slowed by a busy disk should not cut a
    long download short."""
    return None if db.timeout is None else db.timeout * 0.9


def _listing(db: Database, f: CdrFilter, before: int | None,
             count: int) -> tuple[list[CdrRow], dict[str, int]]:
    with db.reading() as s:
        with reports.time_limit(s, _seconds(db)):
            rows = list(reports.iter_cdrs(s, f, newest_first=True, after=before,
                                          limit=count, page_size=count))
        return rows, reports.currency_decimals(s)


def _query(values: dict[str, str], **more: Any) -> str:
    return urlencode({**{k: v for k, v in values.items() if v}, **more})


def _show(request: Request, who: Who, values: dict[str, str], errors: dict[str, str],
          rows: list[CdrRow] | None = None, decimals: dict[str, int] | None = None,
          more: int | None = None, first: bool = True) -> Response:
    return render(request, "cdrs/list.html", who, status=400 if errors else 200,
                  values=values, errors=errors, rows=rows or [], decimals=decimals or {},
                  query=_query(values), more=_query(values, before=more) if more else None,
                  first=first, statuses=[("", "any"), *[(s, s) for s in reports.STATUSES]],
                  per_page=PER_PAGE)


@page(Role.SUPPORT)
async def cdr_list(request: Request, who: Who) -> Response:
    values, found, errors = _read_filter(request.query_params)
    before_text = request.query_params.get("before")
    if before_text is not None and not before_text.isdigit():
        raise HTTPException(400, "before: not a call record id")
    before = int(before_text) if before_text else None
    if found is None:
        return _show(request, who, values, errors)
    c = console(request)
    try:
        rows, decimals = await c.run(_listing, c.db, found, before, PER_PAGE + 1)
    except reports.UnknownNumber as exc:
        return _show(request, who, values, {exc.what: str(exc)})
    except reports.TooSlow:
        return _show(request, who, values, {"search": SLOW.format(seconds=_seconds(c.db))})
    more = rows[PER_PAGE - 1].id if len(rows) > PER_PAGE else None
    return _show(request, who, values, {}, rows[:PER_PAGE], decimals, more,
                 first=before is None)


def _next_piece(pieces: Iterator[str]) -> str | None:
    return next(pieces, None)


@page(Role.SUPPORT)
async def cdr_export(request: Request, who: Who) -> Response:
    """The filtered records as CSV, oldest first, streamed: each piece is read on the
    database's threads in a read transaction of its own (reports.cdr_csv), within a
    time limit (one that passes it ends the download short: the connection is closed
    before the end of the file, and the browser reports the download failed)."""
    values, found, errors = _read_filter(request.query_params)
    if found is None:
        return _show(request, who, values, errors)
    c = console(request)
    pieces = reports.cdr_csv(c.db, found, seconds=_piece_seconds(c.db))
    try:
        head = await c.run(_next_piece, pieces)  # refuses an unknown card or account
    except reports.UnknownNumber as exc:
        return _show(request, who, values, {exc.what: str(exc)})
    except reports.TooSlow:
        seconds = _piece_seconds(c.db) or 0
        return _show(request, who, values, {"search": SLOW.format(seconds=seconds)})

    async def body() -> AsyncIterator[bytes]:
        # The next piece is read while this one is sent (one at a time: the generator is
        # never advanced by two threads at once).
        piece: str | None = head
        while piece is not None:
            upcoming = asyncio.ensure_future(c.run(_next_piece, pieces))
            try:
                yield piece.encode()
            except BaseException:
                upcoming.cancel()
                raise
            piece = await upcoming

    name = f"cdrs-{datetime.now(UTC):%Y%m%d-%H%M%S}.csv"
    return StreamingResponse(body(), media_type="text/csv; charset=utf-8", headers={
        "content-disposition": f'attachment; filename="{name}"', "cache-control": "no-store"})


routes: list[BaseRoute] = [
    Route("/cdrs", cdr_list, methods=["GET"]),
    Route("/cdrs.csv", cdr_export, methods=["GET"]),
]
