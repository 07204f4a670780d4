"""The dashboard (GET /): calls up now, call attempts per second, today's minutes,
revenue, top-ups, answer-seizure ratio and average call duration, and the last 24 hours
as small charts; the figures refresh themselves (htmx polls /dashboard/figures). The
figures are ivr.money.stats's."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...db import Database
from ...money.stats import Figures, figures
from ..http import console, page, render
from ..users import Who

REFRESH_SECONDS = 5


def _figures(db: Database) -> Figures:
    with db.reading() as s:
        return figures(s)


@page()
async def dashboard(request: Request, who: Who) -> Response:
    c = console(request)
    return render(request, "dashboard/index.html", who, f=await c.run(_figures, c.db),
                  refresh=REFRESH_SECONDS)


@page()
async def dashboard_figures(request: Request, who: Who) -> Response:
    """The figures alone (the partial the dashboard swaps in)."""
    c = console(request)
    return render(request, "dashboard/_figures.html", who, f=await c.run(_figures, c.db))


routes = [
    Route("/", dashboard, methods=["GET"]),
    Route("/dashboard/figures", dashboard_figures, methods=["GET"]),
]
