"""Accounts: search, and an account's balance, holds, cards and ledger (newest first).
Money moves only as ledger entries: an adjustment (admin) is a credit or a debit of
kind ``adjustment`` whose note is the reason typed; no balance is ever edited. The
auto-recharge and low-balance notice settings (admin) are ivr.money.accounts' rules, as
``ivr auto-recharge`` and ``ivr notices`` apply them. Every change is audited."""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.orm import Session
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from ...db.models import Account, Card, LedgerEntry
from ...db.types import as_utc
from ...money import accounts as service
from ...money.ledger import LedgerError
from .. import audit
from ..http import Console, actor, console, form, page, render
from ..users import Role, Who

log = logging.getLogger("ivr.web.accounts")

LEDGER_PAGE = 100
CARDS_SHOWN = 100
DONE = {"adjusted": "The adjustment was written to the ledger.",
        "auto-recharge": "Auto-recharge settings saved.",
        "notices": "Low-balance notice settings saved."}


def when(value: datetime | None) -> str:
    """A stored time as UTC ``YYYY-MM-DD HH:MM:SS``."""
    if value is None:
        return ""
    return f"{as_utc(value).astimezone(UTC):%Y-%m-%d %H:%M:%S}"


@dataclass
class AccountView:
    account: Account
    plan: str
    decimals: int
    card_count: int
    cards: list[Card] = field(default_factory=list)
    card_states: dict[int, str] = field(default_factory=dict)
    ledger: list[LedgerEntry] = field(default_factory=list)


def _account_view(c: Console, number: str, before: int | None) -> AccountView:
    with c.db.reading() as s:
        account = service.find_account(s, number)
        cards, total = service.cards_of(s, account, CARDS_SHOWN)
        return AccountView(account, account.plan.name, account.plan.decimals, total, cards,
                           {card.id: service.card_state(card) for card in cards},
                           list(service.history(s, account, LEDGER_PAGE, before)))


ONCE = re.compile(r"[A-Za-z0-9_-]{16,40}")


async def _show(request: Request, who: Who, number: str, *, status: int = 200,
                errors: dict[str, str] | None = None, form_name: str = "",
                values: dict[str, str] | None = None) -> Response:
    c = console(request)
    before_text = request.query_params.get("before", "")
    before = int(before_text) if before_text.isascii() and before_text.isdigit() else None
    try:
        view = await c.run(_account_view, c, number, before)
    except service.NotFound as exc:
        raise HTTPException(404, str(exc)) from None
    return render(request, "accounts/account.html", who, status=status, view=view,
                  errors=errors or {}, form_name=form_name, values=values or {},
                  once=(values or {}).get("once") or secrets.token_urlsafe(16),
                  done=DONE.get(request.query_params.get("done", "")), when=when,
                  more=view.ledger[-1].id if len(view.ledger) == LEDGER_PAGE else None,
                  title=f"Account {number}")


@page()
async def accounts_page(request: Request, who: Who) -> Response:
    c = console(request)
    q = request.query_params.get("q", "").strip()

    def read() -> list[tuple[Account, str, int]]:
        with c.db.reading() as s:
            return [(a, a.plan.name, a.plan.decimals)
                    for a in service.search_accounts(s, q)]

    rows = await c.run(read)
    if q and len(rows) == 1 and rows[0][0].number == q:
        return RedirectResponse(f"/accounts/{q}", 303)
    return render(request, "accounts/index.html", who, rows=rows, q=q, title="Accounts")


@page()
async def account_page(request: Request, who: Who) -> Response:
    return await _show(request, who, request.path_params["number"])


def _texts(data: FormData, *names: str) -> dict[str, str]:
    return {name: str(data.get(name) or "").strip() for name in names}


@page(Role.ADMIN)
async def adjust(request: Request, who: Who) -> Response:
    """A credit or debit of kind ``adjustment``, with its reason (the entry's note and the
    audit line's), in one transaction."""
    c = console(request)
    number = request.path_params["number"]
    values = _texts(await form(request), "direction", "amount", "reason", "once")
    errors: dict[str, str] = {}
    # The form's one-time key: sent twice (a double click, a resubmission), one entry.
    once = values["once"] if ONCE.fullmatch(values["once"]) else None
    if values["direction"] not in ("credit", "debit"):
        errors["direction"] = "choose credit or debit"
    if not values["reason"]:
        errors["reason"] = "say why (kept in the ledger and the audit log)"

    def change() -> tuple[int, Decimal]:
        with c.db.transaction() as s:
            account, entry, new = service.adjust_balance(
                s, number, values["amount"], debit=values["direction"] == "debit",
                reason=values["reason"], ref=f"web:{once}" if once else None)
            if not new:
                return account.id, Decimal(0)
            audit.record(s, actor(request, who), "account.adjust", account.number, detail={
                "amount": entry.amount, "entry": entry.id, "kind": entry.kind.value,
                "balance_after": entry.balance_after, "currency": account.currency},
                reason=values["reason"])
            return account.id, entry.amount

    if not errors:
        try:
            account_id, amount = await c.run(change)
        except service.NotFound as exc:
            raise HTTPException(404, str(exc)) from None
        except (service.BadAmount, LedgerError) as exc:
            errors["amount"] = str(exc)
        except service.SettingRefused as exc:
            errors[exc.field or "amount"] = str(exc)
    if errors:
        return await _show(request, who, number, status=400, errors=errors,
                           form_name="adjust", values=values)
    if amount > 0:  # the account's live calls may last longer now
        try:
            await c.app.charging.credited(account_id)
        except Exception:
            log.exception("live calls of account %s not renewed after a credit", number)
    return RedirectResponse(f"/accounts/{number}?done=adjusted", 303)


async def _setting(request: Request, who: Who, name: str, fields: tuple[str, ...],
                   apply: Any) -> Response:
    """A settings form: read, apply with ``apply(session, account, values, errors)``
    (returns the audit detail) and audit in one transaction; errors by field."""
    c = console(request)
    number = request.path_params["number"]
    values = _texts(await form(request), *fields, "off", "reason")
    errors: dict[str, str] = {}
    if not values["reason"]:
        errors["reason"] = "say why (kept in the audit log)"

    def change() -> None:
        with c.db.transaction() as s:
            account = service.find_account(s, number)
            detail = apply(s, account, values)
            audit.record(s, actor(request, who), f"account.{name}", account.number,
                         detail=detail, reason=values["reason"])

    if not errors:
        try:
            await c.run(change)
        except service.NotFound as exc:
            raise HTTPException(404, str(exc)) from None
        except service.BadAmount as exc:
            errors[str(exc).split(":", 1)[0].replace(" ", "_")] = str(exc)
        except service.SettingRefused as exc:
            errors[exc.field or fields[0]] = str(exc)
    if errors:
        return await _show(request, who, number, status=400, errors=errors,
                           form_name=name, values=values)
    return RedirectResponse(f"/accounts/{number}?done={name}", 303)


def _amount_or_none(text: str, what: str) -> Decimal | None:
    return service.read_optional_amount(text, what)


@page(Role.ADMIN)
async def auto_recharge(request: Request, who: Who) -> Response:
    def apply(s: Session, account: Account, values: dict[str, str]) -> dict[str, Any]:
        if values["off"]:
            service.set_auto_recharge(account, None, None, None)
        else:
            service.set_auto_recharge(account, _amount_or_none(values["threshold"], "threshold"),
                                      _amount_or_none(values["amount"], "amount"),
                                      _amount_or_none(values["daily_cap"], "daily cap"))
        return {"threshold": account.auto_recharge_threshold,
                "amount": account.auto_recharge_amount,
                "daily_cap": account.auto_recharge_daily_cap}

    return await _setting(request, who, "auto-recharge", ("threshold", "amount", "daily_cap"),
                          apply)


@page(Role.ADMIN)
async def notices(request: Request, who: Who) -> Response:
    region = console(request).app.settings.default_region

    def apply(s: Session, account: Account, values: dict[str, str]) -> dict[str, Any]:
        if values["off"]:
            service.low_balance_notice_off(account)
        else:
            service.set_low_balance_notice(s, account,
                                           below=_amount_or_none(values["below"], "below"),
                                           email=values["email"], sms=values["sms"],
                                           region=region)
        return {"below": account.low_balance_notice, "email": account.email,
                "sms": account.sms_number}

    return await _setting(request, who, "notices", ("below", "email", "sms"), apply)


routes: list[BaseRoute] = [
    Route("/accounts", accounts_page, methods=["GET"]),
    Route("/accounts/{number}", account_page, methods=["GET"]),
    Route("/accounts/{number}/adjust", adjust, methods=["POST"]),
    Route("/accounts/{number}/auto-recharge", auto_recharge, methods=["POST"]),
    Route("/accounts/{number}/notices", notices, methods=["POST"]),
]
