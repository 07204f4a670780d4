"""Cards and batches: the batches with their used / unused / locked / expired counts, a
batch's cards, a card found by its number, its detail (its calls and its account's
ledger), lock and unlock (support), and a new batch (admin) whose PIN file is given
once. The rules are ivr.money.accounts' (the CLI's ``ivr cards``)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from ...db.models import Card, CardStatus, LedgerEntry
from ...money import accounts as service
from ...money.ledger import LedgerError
from ...money.rates_store import PlanError
from ...money.reports import CdrFilter, CdrRow, iter_cdrs
from .. import audit
from ..downloads import offer_in
from ..http import Console, actor, console, form, page, render
from ..users import Role, Who
from .accounts import when

CALLS_SHOWN = 50
LEDGER_SHOWN = 50
CARDS_SHOWN = 100
ACCOUNT_MODES = (("each", "one new account per card (each gets the value)"),
                 ("shared", "one new shared account for the batch (gets the value)"),
                 ("existing", "an existing account (shares its balance)"))
_COUNT = re.compile(r"[0-9]{1,6}")


@dataclass
class CardView:
    """A card as its detail page shows it (read in one transaction)."""

    card: Card
    state: str
    account: str
    account_name: str
    currency: str
    decimals: int
    balance: Decimal
    reserved: Decimal
    cards_on_account: int
    calls: list[CdrRow] = field(default_factory=list)
    ledger: list[LedgerEntry] = field(default_factory=list)


def _card_view(s: Session, number: str) -> CardView:
    card = service.find_card(s, number)
    account = card.account
    return CardView(
        card, service.card_state(card), account.number, account.name, account.currency,
        account.plan.decimals, account.balance, account.reserved,
        service.cards_of(s, account, 0)[1],
        list(iter_cdrs(s, CdrFilter(card=card.number), limit=CALLS_SHOWN,
                       newest_first=True)),
        list(service.history(s, account, LEDGER_SHOWN)))


def _listing(c: Console, *, q: str, batch: str | None, after: int | None) -> dict[str, Any]:
    """What /cards shows: the batches (or the one chosen), and the cards found."""
    with c.db.reading() as s:
        batches = service.batch_summaries(s, batch=batch)
        cards = (service.search_cards(s, number=q, batch=batch, after=after,
                                      limit=CARDS_SHOWN)
                 if q or batch is not None else [])
        states = {card.id: service.card_state(card) for card in cards}
        owners = {card.id: card.account.number for card in cards}
        plans = service.plan_names(s)
    return {"batches": batches, "cards": cards, "states": states, "owners": owners,
            "plans": plans}


async def _show_cards(request: Request, who: Who, *, status: int = 200,
                      **context: Any) -> Response:
    c = console(request)
    q = request.query_params.get("q", "").strip()
    batch = request.query_params.get("batch")
    after_text = request.query_params.get("after", "")
    after = int(after_text) if after_text.isascii() and after_text.isdigit() else None
    found = await c.run(_listing, c, q=q, batch=batch, after=after)
    context.setdefault("errors", {})
    context.setdefault("values", {"count": "10", "accounts": "each"})
    return render(request, "cards/index.html", who, status=status, q=q, batch=batch, when=when,
                  modes=ACCOUNT_MODES, shown=CARDS_SHOWN, **found, **context)


@page()
async def cards_page(request: Request, who: Who) -> Response:
    q = request.query_params.get("q", "").strip()
    if q and request.query_params.get("batch") is None:
        c = console(request)

        def exact() -> bool:
            with c.db.reading() as s:
                try:
                    service.find_card(s, q)
                except service.NotFound:
                    return False
                return True

        if await c.run(exact):
            return RedirectResponse(f"/cards/{q}", 303)
    return await _show_cards(request, who)


def _safe_name(batch: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", batch)[:64] or "batch"


@page(Role.ADMIN)
async def issue(request: Request, who: Who) -> Response:
    """A new batch; its PIN file is offered once, in the same transaction as the cards
    and the audit line (which holds no PIN)."""
    c = console(request)
    data = await form(request)
    names = ("batch", "count", "value", "plan", "expires", "accounts", "account", "reason")
    values = {name: str(data.get(name) or "").strip() for name in names}
    errors: dict[str, str] = {}
    if not values["reason"]:
        errors["reason"] = "say why (kept in the audit log)"
    count = 0
    if not _COUNT.fullmatch(values["count"]):
        errors["count"] = "a whole number of cards"
    else:
        count = int(values["count"])
    expires: date | None = None
    if values["expires"]:
        try:
            expires = date.fromisoformat(values["expires"])
        except ValueError:
            errors["expires"] = "a date, YYYY-MM-DD"
    mode = values["accounts"]
    if mode not in {m for m, _ in ACCOUNT_MODES}:
        errors["accounts"] = "choose how the cards get their accounts"
    existing = values["account"] if mode == "existing" else None
    if mode == "existing" and not existing:
        errors["account"] = "the account the cards join"
    token = ""

    def work() -> tuple[str, int]:
        with c.db.transaction() as s:
            plan, balance = service.issue_options(
                s, plan=None if existing else (values["plan"] or None),
                balance=values["value"] or None,
                account=existing, expires_on=expires, batch=values["batch"] or None)

        def deliver(s: Session, batch: str, cards: list[service.IssuedCard]) -> None:
            nonlocal token
            audit.record(s, actor(request, who), "cards.issue", batch, detail={
                "count": len(cards), "value": str(balance), "plan": plan, "accounts": mode,
                "account": existing, "expires_on": expires}, reason=values["reason"])
            token = offer_in(s, c.app.secret_key, who.user_id,
                             f"cards-{_safe_name(batch)}.csv", service.card_file(cards))

        batch, cards = service.issue_batch(
            c.db, plan, count, balance, pin_keys=c.app.pin_keys, account=existing,
            shared=mode == "shared", expires_on=expires, batch=values["batch"] or None,
            then=deliver)
        return batch, len(cards)

    if not errors:
        try:
            batch, issued = await c.run(work)
        except service.BadAmount as exc:
            errors["value"] = str(exc)
        except service.NotFound as exc:
            errors["account"] = str(exc)
        except PlanError as exc:
            errors["plan"] = str(exc)
        except service.SettingRefused as exc:
            where = exc.field if exc.field != "balance" else "value"
            errors[where or "count"] = str(exc)
    if errors:
        return await _show_cards(request, who, status=400, errors=errors, values=values)
    return await _show_cards(request, who, values={"count": "10", "accounts": "each"},
                             issued={"batch": batch, "count": issued, "token": token})


@page()
async def card_page(request: Request, who: Who) -> Response:
    c = console(request)
    number = request.path_params["number"]

    def read() -> CardView:
        with c.db.reading() as s:
            return _card_view(s, number)

    try:
        view = await c.run(read)
    except service.NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    return render(request, "cards/card.html", who, view=view, errors={}, when=when,
                  title=f"Card …{number[-4:]}")


@page(Role.SUPPORT)
async def set_status(request: Request, who: Who) -> Response:
    """Lock or unlock a card (support); audited, with the reason if one is typed."""
    c = console(request)
    number = request.path_params["number"]
    action = request.path_params["action"]
    if action not in ("lock", "unlock"):
        raise HTTPException(404, "no such action")
    reason = str((await form(request)).get("reason") or "").strip()
    status = CardStatus.LOCKED if action == "lock" else CardStatus.ACTIVE

    def change() -> None:
        with c.db.transaction() as s:
            card = service.set_card_status(s, number, status)
            audit.record(s, actor(request, who), f"card.{action}", card.number,
                         detail={"status": card.status.value, "batch": card.batch},
                         reason=reason)

    try:
        await c.run(change)
    except service.NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except LedgerError as exc:  # a blocked card stays blocked
        def read() -> CardView:
            with c.db.reading() as s:
                return _card_view(s, number)

        view = await c.run(read)
        return render(request, "cards/card.html", who, view=view, status=400, when=when,
                      errors={"status": str(exc)}, title=f"Card …{number[-4:]}")
    return RedirectResponse(f"/cards/{number}", 303)


routes: list[BaseRoute] = [
    Route("/cards", cards_page, methods=["GET"]),
    Route("/cards/issue", issue, methods=["POST"]),
    Route("/cards/{number}", card_page, methods=["GET"]),
    Route("/cards/{number}/{action}", set_status, methods=["POST"]),
]
