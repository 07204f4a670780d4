"""Traffic reports: per day or per month (UTC), optionally by destination or by plan, the
figures of ``ivr reports`` (calls, answered, ASR, minutes, ACD, revenue, top-ups) from the
same query, with charts per period and the CSV of ``ivr reports --csv``."""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ...db import Database
from ...money import reports
from ...money.reports import REPORT_FIELDS, GroupBy, Period
from ..http import console, page, render
from ..users import Who

PERIODS: tuple[Period, ...] = ("daily", "monthly")
GROUPS = ("destination", "plan")


@dataclass(frozen=True)
class Query:
    period: Period
    by: GroupBy
    start: datetime | None
    end: datetime | None


@dataclass(frozen=True)
class Chart:
    """One currency's figures per period (the groups summed), for the bar charts."""

    currency: str
    periods: list[str]
    calls: list[int]
    minutes: list[Decimal]
    revenue: list[Decimal]


def _read(params: Mapping[str, str]) -> tuple[dict[str, str], Query | None, dict[str, str]]:
    """The typed values, the query (None when a value cannot be read) and the errors by
    field; times are UTC."""
    values = {"period": str(params.get("period") or "daily").strip(),
              "by": str(params.get("by") or "").strip(),
              "from": str(params.get("from") or "").strip(),
              "to": str(params.get("to") or "").strip()}
    errors: dict[str, str] = {}
    period = next((p for p in PERIODS if p == values["period"]), None)
    if period is None:
        errors["period"] = "daily or monthly"
    by: GroupBy = ("destination" if values["by"] == "destination" else
                   "plan" if values["by"] == "plan" else None)
    if values["by"] and by is None:
        errors["by"] = "destination or plan"
    start = end = None
    try:
        start, end = reports.parse_range(values["from"], values["to"], reports.UTC_ZONE)
    except reports.FilterError as exc:
        errors[exc.field] = str(exc)
    if errors or period is None:
        return values, None, errors
    return values, Query(period, by, start, end), {}


def _figures(db: Database, q: Query) -> tuple[list[dict[str, Any]], list[Chart]]:
    """The report's rows as ``ivr reports --json/--csv`` gives them, and a chart per
    currency."""
    with db.reading() as s:
        rows = reports.report(s, q.period, by=q.by, start=q.start, end=q.end)
        decimals = reports.currency_decimals(s)
    records = [reports.report_record(r, decimals.get(r.currency, 2)) for r in rows]
    charts: dict[str, Chart] = {}
    for t in reports.period_totals(rows):
        chart = charts.setdefault(t.currency, Chart(t.currency, [], [], [], []))
        chart.periods.append(t.period)
        chart.calls.append(t.calls)
        chart.minutes.append(t.minutes)
        chart.revenue.append(t.revenue)
    return records, [charts[c] for c in sorted(charts)]


def _show(request: Request, who: Who, values: dict[str, str], errors: dict[str, str],
          records: list[dict[str, Any]], charts: list[Chart]) -> Response:
    return render(request, "reports/report.html", who, status=400 if errors else 200,
                  values=values, errors=errors, records=records, charts=charts,
                  query=urlencode({k: v for k, v in values.items() if v}),
                  periods=list(PERIODS), groups=[("", "none"), *[(g, g) for g in GROUPS]])


@page()
async def report_page(request: Request, who: Who) -> Response:
    values, q, errors = _read(request.query_params)
    records: list[dict[str, Any]] = []
    charts: list[Chart] = []
    if q is not None:
        c = console(request)
        records, charts = await c.run(_figures, c.db, q)
    return _show(request, who, values, errors, records, charts)


@page()
async def report_csv(request: Request, who: Who) -> Response:
    """The report as ``ivr reports PERIOD [--by ...] --csv`` writes it (grouped rows: small,
    written at once)."""
    values, q, errors = _read(request.query_params)
    if q is None:
        return _show(request, who, values, errors, [], [])
    c = console(request)
    records, _ = await c.run(_figures, c.db, q)
    out = io.StringIO()
    reports.write_csv(out, REPORT_FIELDS, records)
    name = f"report-{q.period}{'-' + q.by if q.by else ''}-{datetime.now(UTC):%Y%m%d}.csv"
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8", headers={
        "content-disposition": f'attachment; filename="{name}"', "cache-control": "no-store"})


routes: list[BaseRoute] = [
    Route("/reports", report_page, methods=["GET"]),
    Route("/reports.csv", report_csv, methods=["GET"]),
]
