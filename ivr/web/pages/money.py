"""Payments, vouchers and revaluations: lists with filters (status, account, days) in
keyset pages, newest first; payment reconciliation (admin); voucher batches with their
codes file handed out once, and voiding a voucher (admin). The rules are the services'
(ivr.payments.reconcile, ivr.money.vouchers, ivr.revalue.service); every change is
audited in its own transaction, and no code, card number or token is ever shown."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...db import Database
from ...db.models import PaymentStatus, VoucherStatus
from ...money import vouchers
from ...money.accounts import BadAmount, NotFound, read_amount
from ...money.ledger import LedgerError
from ...money.reports import currency_decimals
from ...payments.reconcile import list_payments, payment_decimals, reconcile
from ...revalue.service import State, get_revaluation, list_revaluations
from .. import audit, downloads
from ..http import actor, console, form, page, render
from ..users import Role, Who

PAGE = 50
REASON_MISSING = "say why (kept in the audit log)"


# --------------------------------------------------------------------------- filters


@dataclass(frozen=True)
class Filters:
    """A list's filters as typed (to show them back) and as read."""

    status: str = ""
    account: str = ""
    day_from: str = ""  # YYYY-MM-DD, UTC
    day_to: str = ""  # YYYY-MM-DD, UTC, included
    batch: str = ""
    before: int | None = None

    @property
    def start(self) -> datetime | None:
        return _day(self.day_from)

    @property
    def end(self) -> datetime | None:
        last = _day(self.day_to)
        return None if last is None else last + timedelta(days=1)

    def query(self, **changes: Any) -> str:
        """The filters as a query string (for the next page's link)."""
        values = {"status": self.status, "account": self.account, "from": self.day_from,
                  "to": self.day_to, "batch": self.batch} | changes
        return urlencode({k: v for k, v in values.items() if v not in ("", None)})


def _day(text: str) -> datetime | None:
    if not text:
        return None
    d = date.fromisoformat(text)
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def _filters(request: Request, statuses: list[str]) -> tuple[Filters, dict[str, str]]:
    q = request.query_params
    errors: dict[str, str] = {}
    status = (q.get("status") or "").strip()
    if status and status not in statuses:
        errors["status"] = f"one of {', '.join(statuses)}"
    days = {}
    for name in ("from", "to"):
        text = (q.get(name) or "").strip()
        try:
            _day(text)
        except ValueError:
            errors[name] = "a day, as YYYY-MM-DD"
        days[name] = text
    if not errors and days["from"] and days["to"] and days["to"] < days["from"]:
        errors["to"] = "on or after the first day"
    before = (q.get("before") or "").strip()
    if before and not (before.isascii() and before.isdigit()):
        errors["before"] = "not a page"
    found = Filters(status, (q.get("account") or "").strip()[:32], days["from"], days["to"],
                    (q.get("batch") or "").strip()[:64], int(before) if before and
                    "before" not in errors else None)
    if errors:  # nothing is listed by a filter that cannot be read
        return Filters(status, found.account, days["from"], days["to"], found.batch), errors
    return found, errors


def _choices(values: list[str]) -> list[tuple[str, str]]:
    return [("", "any"), *((v, v) for v in values)]


def _more(rows: list[Any]) -> int | None:
    """The id to list from for the next page, None on the last."""
    return rows[-1].id if len(rows) == PAGE else None


def _reason(data: FormData, errors: dict[str, str]) -> str:
    reason = str(data.get("reason") or "").strip()[:500]
    if not reason:
        errors["reason"] = REASON_MISSING
    return reason


# --------------------------------------------------------------------------- payments


PAYMENT_STATUSES = [s.value for s in PaymentStatus]


async def _payments(request: Request, who: Who, *, status: int = 200,
                    **context: Any) -> Response:
    c = console(request)
    f, errors = _filters(request, PAYMENT_STATUSES)
    rows = []
    if not errors:
        try:
            rows = await c.run(list_payments, c.db, status=PaymentStatus(f.status)
                               if f.status else None, account=f.account or None,
                               start=f.start, end=f.end, before=f.before, limit=PAGE)
        except NotFound as exc:
            errors["account"] = str(exc).strip("'\"")
    return render(request, "money/payments.html", who, rows=rows, f=f, errors=errors,
                  statuses=_choices(PAYMENT_STATUSES), more=_more(rows),
                  status=400 if errors and status == 200 else status,
                  **({"form_errors": {}, "settled": None} | context))


@page()
async def payments_page(request: Request, who: Who) -> Response:
    return await _payments(request, who)


@page(Role.ADMIN)
async def payments_reconcile(request: Request, who: Who) -> Response:
    """Settle the payments left pending or timed out (ivr.payments.reconcile) with the
    application's gateway, as the server does every payment_reconcile_interval."""
    c = console(request)
    data = await form(request)
    form_errors: dict[str, str] = {}
    reason = _reason(data, form_errors)
    if form_errors:
        return await _payments(request, who, status=400, form_errors=form_errors)
    older = timedelta(seconds=c.app.settings.payment_reconcile_after)
    decided = await reconcile(c.db, c.app.gateway, older_than=older)
    places = await c.run(payment_decimals, c.db, [r.payment_id for r in decided])

    def write_audit() -> None:
        with c.db.transaction() as s:
            audit.record(s, actor(request, who), "payments.reconcile",
                         f"{len(decided)} payment(s)", reason=reason, detail={
                             "older_than_seconds": older.total_seconds(),
                             "settled": [{"payment_id": r.payment_id,
                                          "verdict": r.verdict.value, "amount": r.amount}
                                         for r in decided]})

    await c.run(write_audit)
    settled = [(r, places.get(r.payment_id, 2)) for r in decided]
    return await _payments(request, who, settled=settled)


# --------------------------------------------------------------------------- vouchers


VOUCHER_STATUSES = [s.value for s in VoucherStatus]


async def _vouchers(request: Request, who: Who, *, status: int = 200,
                    **context: Any) -> Response:
    c = console(request)
    f, errors = _filters(request, VOUCHER_STATUSES)
    rows = []
    if not errors:
        try:
            rows = await c.run(vouchers.list_vouchers, c.db, status=VoucherStatus(f.status)
                               if f.status else None, batch=f.batch or None,
                               account=f.account or None, start=f.start, end=f.end,
                               before=f.before, limit=PAGE)
        except NotFound as exc:
            errors["account"] = str(exc).strip("'\"")

    places = await c.run(_decimals, c.db)
    defaults = {"form_errors": {}, "values": {"count": "", "value": "", "currency":
                (next(iter(places)) if len(places) == 1 else ""), "expires": "",
                "batch": "", "reason": ""}, "issued": None, "voided": None, "void_errors": {}}
    return render(request, "money/vouchers.html", who, rows=rows, f=f, errors=errors,
                  statuses=_choices(VOUCHER_STATUSES), more=_more(rows), places=places,
                  currencies=sorted(places), status=400 if errors and status == 200
                  else status, **(defaults | context))


@page()
async def vouchers_page(request: Request, who: Who) -> Response:
    return await _vouchers(request, who)


@dataclass(frozen=True)
class Issued:
    batch: str
    count: int
    value: Decimal
    currency: str
    token: str  # the one-time download's


@page(Role.ADMIN)
async def vouchers_generate(request: Request, who: Who) -> Response:
    """A batch of vouchers (ivr.money.vouchers.issue) and its codes file, offered for one
    download; the audit line has the batch, never a code."""
    c = console(request)
    data = await form(request)
    values = {k: str(data.get(k) or "").strip() for k in
              ("count", "value", "currency", "expires", "batch", "reason")}
    errors: dict[str, str] = {}
    reason = _reason(data, errors)

    places = await c.run(_decimals, c.db)
    count = 0
    if values["count"].isascii() and values["count"].isdigit():
        count = int(values["count"])
    else:
        errors["count"] = "a whole number"
    currency = values["currency"].upper()
    if currency not in places:
        errors["currency"] = "the currency of a rating plan"
    value = Decimal(0)
    try:
        value = read_amount(values["value"], "value")
    except BadAmount as exc:
        errors["value"] = str(exc)
    expires: date | None = None
    if values["expires"]:
        try:
            expires = date.fromisoformat(values["expires"])
        except ValueError:
            errors["expires"] = "a day, as YYYY-MM-DD"
    if errors:
        return await _vouchers(request, who, status=400, form_errors=errors, values=values)

    def make() -> tuple[str, str]:
        """The vouchers, their audit line and their codes file, in one transaction: the
        codes can be downloaded if and only if the vouchers exist."""
        with c.db.transaction() as s:
            made = vouchers.issue(s, count, value, currency, expires_on=expires,
                                  batch=values["batch"] or None, key=c.app.secret_key)
            audit.record(s, actor(request, who), "vouchers.generate", made[0].batch,
                         reason=reason, detail={"count": count, "value": value,
                                                "currency": currency, "expires_on": expires})
            batch = made[0].batch
            token = downloads.offer_in(s, c.app.secret_key, who.user_id,
                                       f"vouchers-{batch}.csv",
                                       vouchers.voucher_csv(made).encode())
            return batch, token

    try:
        batch, token = await c.run(make)
    except vouchers.VoucherRefused as exc:  # nothing was issued
        return await _vouchers(request, who, status=400, values=values,
                               form_errors={exc.field: str(exc)})
    return await _vouchers(request, who, issued=Issued(batch, count, value, currency, token))


@page(Role.ADMIN)
async def vouchers_void(request: Request, who: Who) -> Response:
    """Cancel an unused voucher, by its id (audited with its last four digits)."""
    c = console(request)
    data = await form(request)
    voucher_id = int(request.path_params["id"])
    errors: dict[str, str] = {}
    reason = _reason(data, errors)
    if errors:
        return await _vouchers(request, who, status=400, void_errors={voucher_id: errors})

    def void() -> vouchers.VoucherInfo:
        with c.db.transaction() as s:
            info = vouchers.void_voucher(s, voucher_id)
            audit.record(s, actor(request, who), "vouchers.void", f"voucher #{info.id}",
                         reason=reason, detail={"last4": info.last4, "batch": info.batch,
                                                "status": info.status.value})
            return info

    try:
        info = await c.run(void)
    except NotFound as exc:
        raise HTTPException(404, str(exc).strip("'\"")) from None
    except LedgerError as exc:
        return await _vouchers(request, who, status=400,
                               void_errors={voucher_id: {"reason": str(exc)}})
    return await _vouchers(request, who, voided=info)


# --------------------------------------------------------------------------- revaluations


STATES = [s.value for s in State]


@page()
async def revaluations_page(request: Request, who: Who) -> Response:
    c = console(request)
    f, errors = _filters(request, STATES)
    rows = []
    if not errors:
        try:
            rows = await c.run(list_revaluations, c.db, state=f.status or None,
                               account=f.account or None, start=f.start, end=f.end,
                               before=f.before, limit=PAGE)
        except LookupError as exc:
            errors["account"] = str(exc).strip("'\"")
    places = await c.run(_decimals, c.db)
    return render(request, "money/revaluations.html", who, rows=rows, f=f, errors=errors,
                  statuses=_choices(STATES), more=_more(rows), places=places,
                  status=400 if errors else 200)


@page()
async def revaluation_page(request: Request, who: Who) -> Response:
    c = console(request)
    try:
        r = await c.run(get_revaluation, c.db, str(request.path_params["id"]))
    except LookupError as exc:
        raise HTTPException(404, str(exc).strip("'\"")) from None
    places = await c.run(_decimals, c.db)
    return render(request, "money/revaluation.html", who, r=r, places=places)


def _decimals(db: Database) -> dict[str, int]:
    """The decimals amounts are shown with, per currency."""
    with db.reading() as s:
        return currency_decimals(s)


routes = [
    Route("/payments", payments_page, methods=["GET"]),
    Route("/payments/reconcile", payments_reconcile, methods=["POST"]),
    Route("/vouchers", vouchers_page, methods=["GET"]),
    Route("/vouchers/generate", vouchers_generate, methods=["POST"]),
    Route("/vouchers/{id:int}/void", vouchers_void, methods=["POST"]),
    Route("/revaluations", revaluations_page, methods=["GET"]),
    Route("/revaluations/{id:str}", revaluation_page, methods=["GET"]),
]
