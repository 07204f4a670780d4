"""Call records and traffic reports: query functions over a session, shared by the CLI
(``ivr cdrs list``, ``ivr reports``) and any later console.

Call records are read in keyset pages (``WHERE cdrs.id > last ORDER BY id LIMIT n``), so
listing a million of them never holds more than one page. Reports are summed by the
database per UTC day (for a report in UTC), hour (other zones) or quarter hour (zones
whose offset is not whole hours), group and currency, and read in batches; Python then
folds those buckets into days or months of the chosen time zone (DST included), so only
the grouped result crosses the wire.

A call counts as answered when it was settled (its reservation is ``settled``, or it has
billable seconds); released calls (busy, no answer, failed, hung up before dialling) are
attempts only. Top-ups are the ledger's ``topup`` and ``voucher`` credits (payments,
operator credits, opening balances, recharge codes); refunds and adjustments are not.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal
from zoneinfo import ZoneInfo

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    case,
    cast,
    exists,
    func,
    literal_column,
    or_,
    select,
)
from sqlalchemy.orm import Session, aliased

from ..db.models import (
    Account,
    Card,
    Cdr,
    EntryKind,
    LedgerEntry,
    RatingPlan,
    Reservation,
    ReservationStatus,
)
from ..db.types import as_utc
from .accounts import NotFound

PAGE_SIZE = 1000
GROUPS_PER_FETCH = 5000  # grouped report rows fetched at a time (a server-side cursor)
UTC_ZONE = ZoneInfo("UTC")
TOPUP_KINDS = (EntryKind.TOPUP, EntryKind.VOUCHER)
Period = Literal["daily", "monthly"]
GroupBy = Literal["destination", "plan"] | None


@dataclass(frozen=True)
class CdrFilter:
    start: datetime | None = None  # started at or after (aware)
    end: datetime | None = None  # started before (aware)
    card: str | None = None  # card number
    account: str | None = None  # account number
    destination: str | None = None  # digits: dialled number prefix; else destination name
    status: Literal["answered", "unanswered"] | None = None
    cause: str | None = None  # hang-up cause (BUSY, NOANSWER, ...), case-insensitive


@dataclass(frozen=True)
class CdrRow:
    id: int
    uniqueid: str
    started_at: datetime
    answered_at: datetime | None
    ended_at: datetime | None
    account: str
    card: str | None
    caller: str
    destination: str
    destination_name: str
    prefix: str
    plan: str
    service: str
    answered: bool
    billable_seconds: int
    cost: Decimal
    currency: str
    hangup_cause: str


@dataclass
class ReportRow:
    period: str  # YYYY-MM-DD or YYYY-MM, in the report's time zone
    group: str | None  # the destination or plan name (None: not grouped)
    currency: str
    calls: int = 0
    answered: int = 0
    seconds: int = 0  # billable seconds of the answered calls
    revenue: Decimal = field(default_factory=lambda: Decimal(0))
    topups: Decimal | None = field(default_factory=lambda: Decimal(0))

    @property
    def minutes(self) -> Decimal:
        return (Decimal(self.seconds) / 60).quantize(Decimal("0.01"))

    @property
    def asr(self) -> Decimal | None:
        """Answered calls as a percentage of attempts (one decimal)."""
        if not self.calls:
            return None
        return (Decimal(100 * self.answered) / self.calls).quantize(Decimal("0.1"))

    @property
    def acd(self) -> Decimal | None:
        """Average billable seconds of an answered call (one decimal)."""
        if not self.answered:
            return None
        return (Decimal(self.seconds) / self.answered).quantize(Decimal("0.1"))


# ----------------------------------------------------------------------------- call records


def _answered() -> ColumnElement[bool]:
    """Settled: billable seconds, or its reservation settled (an EXISTS, so that a page of
    call records is read from cdrs alone)."""
    return or_(Cdr.billable_seconds > 0, exists().where(
        Reservation.id == Cdr.reservation_id, Reservation.status == ReservationStatus.SETTLED))


def _answered_joined() -> ColumnElement[bool]:
    """_answered for a query that outer-joins the reservation (a report's whole range)."""
    return or_(Reservation.status == ReservationStatus.SETTLED, Cdr.billable_seconds > 0)


def _utc(value: datetime) -> datetime:
    # SQLite compares the stored UTC text: bind UTC times only.
    return value.astimezone(UTC)


def _resolve(s: Session, model: type[Account] | type[Card], number: str, what: str) -> int:
    found = s.scalar(select(model.id).where(model.number == number))
    if found is None:
        raise NotFound(f"no {what} {number}")
    return found


def _filtered(s: Session, query: Select[Any], f: CdrFilter) -> Select[Any]:
    if f.start is not None:
        query = query.where(Cdr.started_at >= _utc(f.start))
    if f.end is not None:
        query = query.where(Cdr.started_at < _utc(f.end))
    if f.account is not None:
        query = query.where(Cdr.account_id == _resolve(s, Account, f.account, "account"))
    if f.card is not None:
        query = query.where(Cdr.card_id == _resolve(s, Card, f.card, "card"))
    if f.destination:
        if f.destination.isdigit() and f.destination.isascii():
            query = query.where(Cdr.destination.startswith(f.destination, autoescape=True))
        else:
            query = query.where(func.lower(Cdr.destination_name) == f.destination.lower())
    if f.status == "answered":
        query = query.where(_answered())
    elif f.status == "unanswered":
        query = query.where(~_answered())
    if f.cause:
        query = query.where(func.lower(Cdr.hangup_cause) == f.cause.lower())
    return query


def iter_cdrs(s: Session, f: CdrFilter = CdrFilter(), *, limit: int | None = None,
              page_size: int | None = None) -> Iterator[CdrRow]:
    """The call records matching ``f``, oldest first (by id), read ``page_size`` at a time.
    Unknown account or card numbers raise NotFound here, before any row is read."""
    base = _filtered(s, select(Cdr.id), f)
    return _pages(s, base, limit, page_size or PAGE_SIZE)


def _pages(s: Session, base: Select[Any], limit: int | None,
           page_size: int) -> Iterator[CdrRow]:
    conn = s.connection()  # Core rows: no ORM loading per row
    card = aliased(Card)
    last, left = 0, limit
    while left is None or left > 0:
        size = page_size if left is None else min(page_size, left)
        # The page's ids from cdrs alone (its primary key, in order), then their columns:
        # each page costs the same however far the listing has gone.
        ids = base.where(Cdr.id > last).order_by(Cdr.id).limit(size).subquery()
        page = conn.execute(select(
            Cdr.id, Cdr.uniqueid, Cdr.started_at, Cdr.answered_at, Cdr.ended_at,
            Account.number, card.number, Cdr.caller, Cdr.destination, Cdr.destination_name,
            Cdr.prefix, Cdr.plan, Cdr.service, _answered(), Cdr.billable_seconds, Cdr.cost,
            Cdr.currency, Cdr.hangup_cause,
        ).join(ids, ids.c.id == Cdr.id).join(Account, Account.id == Cdr.account_id)
         .outerjoin(card, card.id == Cdr.card_id).order_by(Cdr.id)).all()
        for (id_, uniqueid, started, answered_at, ended, account, card_number, caller,
             destination, destination_name, prefix, plan, service, answered, seconds, cost,
             currency, cause) in page:
            yield CdrRow(id_, uniqueid, as_utc(started), as_utc(answered_at), as_utc(ended),
                         account, card_number, caller, destination, destination_name, prefix,
                         plan, service, bool(answered), seconds, cost, currency, cause)
        if len(page) < size:
            return
        last = page[-1][0]
        if left is not None:
            left -= len(page)


# ----------------------------------------------------------------------------- reports


def _bucket(s: Session, column: Any, width: int) -> Any:
    """``column`` (a UTC time) as the index of its ``width``-second bucket since 1970."""
    # Literals, not parameters: the GROUP BY must repeat the selected expression exactly.
    size = literal_column(str(int(width)), BigInteger)
    if s.get_bind().dialect.name == "sqlite":
        return cast(func.strftime(literal_column("'%s'"), column), BigInteger) // size
    return cast(func.floor(func.extract("epoch", column) / size), BigInteger)


def _width(tz: ZoneInfo, start: datetime | None, end: datetime | None) -> int:
    """A day in UTC; else an hour, unless the zone's offset is not whole hours (India,
    Nepal...)."""
    if str(tz) in ("UTC", "Etc/UTC", "GMT", "Etc/GMT"):
        return 86400
    probes = [datetime(year, month, 1, tzinfo=tz)
              for year in range((start or datetime.now(UTC)).year - 1,
                                (end or datetime.now(UTC)).year + 2)
              for month in (1, 7)]
    whole = all((p.utcoffset() or timedelta()) % timedelta(hours=1) == timedelta()
                for p in probes)
    return 3600 if whole else 900


def _label(bucket: int, width: int, period: Period, tz: ZoneInfo) -> str:
    local = datetime.fromtimestamp(int(bucket) * width, UTC).astimezone(tz)
    return f"{local:%Y-%m-%d}" if period == "daily" else f"{local:%Y-%m}"


def report(s: Session, period: Period, *, by: GroupBy = None,
           start: datetime | None = None, end: datetime | None = None,
           tz: ZoneInfo = UTC_ZONE) -> list[ReportRow]:
    """Calls, answered calls, billable seconds, revenue and top-ups per period (days or
    months in ``tz``), group (destination name or plan) and currency, ordered by period,
    group and currency. Top-ups belong to accounts, not calls: by plan they count under
    the account's plan, by destination they are not shown (None)."""
    width = _width(tz, start, end)
    rows: dict[tuple[str, str | None, str], ReportRow] = {}

    def row(bucket: int, group: str | None, currency: str) -> ReportRow:
        key = (_label(bucket, width, period, tz), group, currency)
        if key not in rows:
            rows[key] = ReportRow(*key, topups=None if by == "destination" else Decimal(0))
        return rows[key]

    bucket = _bucket(s, Cdr.started_at, width).label("bucket")
    group = {None: None, "destination": Cdr.destination_name, "plan": Cdr.plan}[by]
    keys = [bucket, Cdr.currency] + ([group] if group is not None else [])
    calls = (select(*keys, func.count().label("calls"),
                    func.sum(case((_answered_joined(), 1), else_=0)).label("answered"),
                    func.sum(Cdr.billable_seconds).label("seconds"),
                    func.sum(Cdr.cost).label("revenue"))
             .outerjoin(Reservation, Reservation.id == Cdr.reservation_id)
             .group_by(*keys))
    if start is not None:
        calls = calls.where(Cdr.started_at >= _utc(start))
    if end is not None:
        calls = calls.where(Cdr.started_at < _utc(end))
    for r in s.execute(calls.execution_options(yield_per=GROUPS_PER_FETCH)):
        target = row(r.bucket, None if group is None else r[2], r.currency)
        target.calls += r.calls
        target.answered += int(r.answered or 0)
        target.seconds += int(r.seconds or 0)
        target.revenue += r.revenue or Decimal(0)

    if by != "destination":
        bucket = _bucket(s, LedgerEntry.created_at, width).label("bucket")
        keys = [bucket, Account.currency] + ([RatingPlan.name] if by == "plan" else [])
        topups = (select(*keys, func.sum(LedgerEntry.amount).label("amount"))
                  .join(Account, Account.id == LedgerEntry.account_id)
                  .join(RatingPlan, RatingPlan.id == Account.plan_id)
                  .where(LedgerEntry.kind.in_(TOPUP_KINDS), LedgerEntry.amount > Decimal(0))
                  .group_by(*keys))
        if start is not None:
            topups = topups.where(LedgerEntry.created_at >= _utc(start))
        if end is not None:
            topups = topups.where(LedgerEntry.created_at < _utc(end))
        for r in s.execute(topups.execution_options(yield_per=GROUPS_PER_FETCH)):
            target = row(r.bucket, r[2] if by == "plan" else None, r.currency)
            assert target.topups is not None
            target.topups += r.amount or Decimal(0)
    return [rows[k] for k in sorted(rows, key=lambda k: (k[0], k[1] or "", k[2]))]


def currency_decimals(s: Session) -> dict[str, int]:
    """The decimals amounts are shown with, per currency: the most of its plans'."""
    query = select(RatingPlan.currency, func.max(RatingPlan.decimals)).group_by(
        RatingPlan.currency)
    return {currency: int(decimals) for currency, decimals in s.execute(query)}


def day_start(day: date, tz: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=tz)
