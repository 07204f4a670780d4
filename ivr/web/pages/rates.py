"""Rates: the plans, a deck upload checked and compared before it applies (admin), and a
rate simulator (anyone).

A deck goes through two steps: the upload checks it as ``ivr rates import`` does (every
bad line with its number, nothing applied) and shows what it changes against the plan's
current rates; the deck is kept server-side (ivr.money.rates_store.stage_deck) and the
Confirm button applies exactly those bytes, unless the plan's rates changed meanwhile.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlencode

from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from ...money import rates_store
from ...money.rates_store import (
    DeckUnreadable,
    ImportResult,
    PlanError,
    StagedDeck,
    StagedDeckGone,
    StaleRates,
)
from ...rating import MAX_CALL_SECONDS, DeckError, NoRate, Plan, Quote
from ...rating.deck import DeckFormat
from ...rating.diff import amount_text
from ...rating.money import parse_money
from .. import audit
from ..http import actor, console, form, page, render
from ..users import Role, Who

FORMATS = ("ivr", "astpp")
SHOWN = 500  # rows of each part of a diff shown on the page
MAX_PROBLEMS_SHOWN = 1000


def staging_dir(request: Request) -> Path:
    return Path(console(request).app.settings.data_dir) / "web-staged"


@dataclass
class Simulation:
    plan: Plan
    quote: Quote | None = None
    at: datetime | None = None
    max_seconds: int | None = None
    max_quote: Quote | None = None
    balance: Decimal | None = None

    @property
    def at_text(self) -> str:
        return self.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if self.at else ""


async def _index(request: Request, who: Who, *, status: int = 200, **context: Any
                 ) -> Response:
    c = console(request)
    plans = await c.run(rates_store.list_plans, c.db)
    context.setdefault("errors", {})
    context.setdefault("sim_errors", {})
    context.setdefault("form", {})
    context.setdefault("sim", dict(request.query_params))
    return render(request, "rates/index.html", who, status=status, plans=plans,
                  formats=FORMATS, amount=amount_text, **context)


@page()
async def index(request: Request, who: Who) -> Response:
    """The plans, the upload form (admins) and the simulator (its form is a GET: the
    query string holds a simulation, so it can be linked to)."""
    query = request.query_params
    if "number" not in query:
        notice = None
        if query.get("applied"):
            notice = (f"Plan {query['applied']}: the new deck is applied "
                      f"(rates version {query.get('version', '?')}).")
        return await _index(request, who, notice=notice)
    errors, result = await _simulate(request, query)
    return await _index(request, who, status=400 if errors else 200, sim_errors=errors,
                        result=result)


async def _simulate(request: Request, query: Any) -> tuple[dict[str, str], Simulation | None]:
    c = console(request)
    errors: dict[str, str] = {}
    plan = str(query.get("plan") or "")
    number = str(query.get("number") or "").strip()
    if not number.isascii() or not number.isdigit():
        errors["number"] = "digits only, as dialled (e.g. 15551234567)"
    seconds_text = str(query.get("seconds") or "").strip()
    seconds = 0
    if seconds_text:
        if not seconds_text.isascii() or not seconds_text.isdigit():
            errors["seconds"] = "a whole number of seconds"
        else:
            seconds = int(seconds_text)
            if seconds > MAX_CALL_SECONDS:
                errors["seconds"] = f"at most {MAX_CALL_SECONDS} seconds"
    at = datetime.now(UTC)
    at_text = str(query.get("at") or "").strip()
    if at_text:
        try:
            at = datetime.fromisoformat(at_text)
        except ValueError:
            errors["at"] = "a time like 2026-01-31 18:30 (UTC), or leave it empty for now"
        else:
            at = at if at.tzinfo else at.replace(tzinfo=UTC)
    balance = None
    balance_text = str(query.get("balance") or "").strip()
    if balance_text:
        try:
            balance = parse_money(balance_text)
        except ValueError:
            errors["balance"] = "an amount like 5.00"
        else:
            if balance < 0:
                errors["balance"] = "an amount of 0 or more"
    if not seconds_text and balance is None and "balance" not in errors:
        errors["seconds"] = "give a duration, a balance, or both"
    if errors:
        return errors, None
    cache = c.app.ledger.rates
    sim: Simulation | None = None
    try:
        if seconds_text:
            plan_value, q = await c.run(rates_store.quote_call, c.db, plan, number, seconds,
                                        at, detail=True, cache=cache)
            sim = Simulation(plan_value, q, at)
        if balance is not None:
            plan_value, longest, q = await c.run(rates_store.longest_call, c.db, plan,
                                                 number, balance, at, cache=cache)
            sim = sim or Simulation(plan_value, None, at)
            sim.max_seconds, sim.max_quote, sim.balance = longest, q, balance
    except PlanError as exc:
        return {"plan": str(exc)}, None
    except NoRate as exc:
        return {"number": exc.reason or str(exc)}, None
    return {}, sim


@page(Role.ADMIN)
async def upload(request: Request, who: Who) -> Response:
    """Check an uploaded deck and show what it changes; nothing is applied here."""
    data = await form(request)
    plan = str(data.get("plan") or "")
    deck_format = str(data.get("format") or "ivr")
    reason = str(data.get("reason") or "").strip()
    deck = data.get("deck")
    errors: dict[str, str] = {}
    if not reason:
        errors["reason"] = "say why (kept in the audit log)"
    if deck_format not in FORMATS:
        errors["format"] = "choose ivr or astpp"
    content = b""
    filename = ""
    if not isinstance(deck, UploadFile) or not deck.filename:
        errors["deck"] = "choose a deck file (CSV)"
    else:
        filename = deck.filename
        content = await deck.read()
        if not content.strip():
            errors["deck"] = f"{filename} is empty"
    given = {"plan": plan, "format": deck_format, "reason": reason}
    if errors:
        return await _index(request, who, status=400, errors=errors, form=given)
    try:
        # A big deck takes longer to check than a database step may (c.run's timeout):
        # its own thread; the database's own timeouts still bound each statement.
        staged = await asyncio.to_thread(
            rates_store.stage_deck, console(request).db, staging_dir(request), content, plan,
            cast(DeckFormat, deck_format), filename=filename, by=who.name)
    except DeckError as exc:
        return await _index(request, who, status=400, form=given,
                            errors={"deck": f"{filename}: {exc.total} bad line"
                                            f"{'s' if exc.total != 1 else ''}; nothing "
                                            "was applied"},
                            problems=exc.problems[:MAX_PROBLEMS_SHOWN],
                            problems_total=exc.total)
    except DeckUnreadable as exc:
        return await _index(request, who, status=400, form=given,
                            errors={"deck": f"{filename}: {exc}"})
    except PlanError as exc:
        return await _index(request, who, status=400, form=given, errors={"plan": str(exc)})
    return render(request, "rates/diff.html", who, staged=staged, diff=staged.diff,
                  reason=reason, shown=SHOWN, errors={})


@page(Role.ADMIN)
async def apply(request: Request, who: Who) -> Response:
    """Apply a deck shown by :func:`upload` (audited in the same transaction)."""
    data = await form(request)
    token = str(data.get("token") or "")
    reason = str(data.get("reason") or "").strip()
    if not reason:
        try:
            staged, _ = rates_store.staged_deck(staging_dir(request), token)
        except StagedDeckGone as exc:
            return await _index(request, who, status=410, failure=str(exc))
        return render(request, "rates/diff.html", who, status=400, staged=staged, diff=None,
                      reason="", shown=SHOWN,
                      errors={"reason": "say why (kept in the audit log)"})
    who_did = actor(request, who)

    def write_audit(s: Session, staged: StagedDeck, result: ImportResult) -> None:
        audit.record(s, who_did, "rates.apply", f"plan:{staged.plan}", reason=reason, detail={
            "rows": result.plans.get(staged.plan, 0), "file": staged.filename,
            "sha256": staged.sha256, "from_version": staged.version,
            "version": result.versions.get(staged.plan), "uploaded_by": staged.by})

    try:
        staged, result = await asyncio.to_thread(
            rates_store.apply_staged, console(request).db, staging_dir(request), token,
            on_apply=write_audit)
    except (StagedDeckGone, StaleRates) as exc:
        return await _index(request, who, status=409 if isinstance(exc, StaleRates) else 410,
                            failure=str(exc))
    except DeckError as exc:  # the plan's rows or the rules changed since: still refused
        return await _index(request, who, status=400, failure=str(exc).splitlines()[0],
                            problems=exc.problems[:MAX_PROBLEMS_SHOWN],
                            problems_total=exc.total)
    query = urlencode({"applied": staged.plan, "version": result.versions.get(staged.plan, "")})
    return RedirectResponse(f"/rates?{query}", 303)


routes = [
    Route("/rates", index, methods=["GET"]),
    Route("/rates/upload", upload, methods=["POST"]),
    Route("/rates/apply", apply, methods=["POST"]),
]
