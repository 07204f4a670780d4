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

The console lists call records newest first (by start time, then id: the index
``ix_cdrs_started_at_id``), keyed on the last record shown, and both the console and the
CLI read their filters with :func:`cdr_filter` and write CSV with :func:`cdr_record`,
:func:`report_record` and :func:`write_csv`.
"""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import IO, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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
    tuple_,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, aliased

from ..db import Database
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
from ..db.types import as_utc, display
from .accounts import NotFound

PAGE_SIZE = 1000
CSV_CHUNK = 2000  # call records per piece of a CSV export (one read transaction each)
GROUPS_PER_FETCH = 5000  # grouped report rows fetched at a time (a server-side cursor)
UTC_ZONE = ZoneInfo("UTC")
_SQLITE_INTERRUPT = 9
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


CDR_FIELDS = ("id", "uniqueid", "started_at", "answered_at", "ended_at", "account", "card",
              "caller", "destination", "destination_name", "prefix", "plan", "service",
              "status", "billable_seconds", "cost", "currency", "hangup_cause")
REPORT_FIELDS = ("period", "group", "currency", "calls", "answered", "asr", "minutes",
                 "seconds", "acd", "revenue", "topups")
STATUSES = ("answered", "unanswered")
_MONTH = re.compile(r"[0-9]{4}-[0-9]{2}")


class FilterError(ValueError):
    """A filter value that cannot be read; ``field`` names it (``from``, ``to``, ``tz``,
    ``status``), the message says why without naming it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class RangeError(FilterError):
    """The end of a time range is not after its start."""

    def __init__(self) -> None:
        super().__init__("to", "not after the start")


class TooSlow(Exception):
    """A search stopped at its time limit (:func:`time_limit`)."""


class UnknownNumber(NotFound):
    """A filter names a card or account that does not exist (``what``: card, account)."""

    def __init__(self, what: str, number: str) -> None:
        super().__init__(f"no {what} {number}")
        self.what = what


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
        raise UnknownNumber(what, number)
    return found


@contextmanager
def time_limit(s: Session, seconds: float | None) -> Iterator[None]:
    """Stop the statements ``s`` runs in the block after ``seconds`` (None: no limit) with
    :class:`TooSlow`: SQLite through a progress handler, PostgreSQL with a local
    ``statement_timeout``. For searches on filters no index covers (a destination or
    cause that few records match scans the whole table): given a limit under the
    database's timeout, such a search gives its worker thread back instead of running on
    after its page has given up."""
    if seconds is None:
        yield
        return
    conn = s.connection()
    raw: Any = None
    previous: Any = None
    if conn.dialect.name == "sqlite":
        raw = conn.connection.driver_connection
        deadline = time.monotonic() + seconds
        raw.set_progress_handler(lambda: int(time.monotonic() > deadline), 20_000)
    else:
        previous = conn.exec_driver_sql("SHOW statement_timeout").scalar()
        conn.exec_driver_sql(f"SET LOCAL statement_timeout = {max(1, int(seconds * 1000))}")
    try:
        yield
    except OperationalError as exc:
        code = getattr(exc.orig, "sqlite_errorcode", None)
        if code == _SQLITE_INTERRUPT or getattr(exc.orig, "sqlstate", None) == "57014":
            raise TooSlow(f"stopped after {seconds:g} s") from exc
        raise
    else:
        if previous is not None:  # the rest of the transaction as before
            conn.execute(select(func.set_config("statement_timeout", previous, True)))
    finally:
        if raw is not None:
            raw.set_progress_handler(None, 0)


def parse_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise FilterError("tz", f"unknown time zone {name!r} (like UTC or Europe/Paris)"
                          ) from None


def parse_time(text: str | None, tz: ZoneInfo, *, end: bool,
               field: str = "from") -> datetime | None:
    """A month (YYYY-MM), a day (YYYY-MM-DD) or an ISO time, in ``tz`` unless it gives its
    offset; None for nothing. A month or day given as the ``end`` includes it."""
    text = (text or "").strip()
    if not text:
        return None
    if _MONTH.fullmatch(text):
        year, month = int(text[:4]), int(text[5:])
        if not 1 <= month <= 12:
            raise FilterError(field, f"not a month: {text!r}")
        if end:
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        return datetime(year, month, 1, tzinfo=tz)
    try:
        if len(text) == 10:
            day = date.fromisoformat(text) + timedelta(days=1 if end else 0)
            return datetime(day.year, day.month, day.day, tzinfo=tz)
        value = datetime.fromisoformat(text)
    except (ValueError, OverflowError):
        raise FilterError(field, f"not a month, day or time: {text!r} (like 2026-11, "
                                 "2026-11-18 or 2026-11-18T09:30)") from None
    return value if value.tzinfo else value.replace(tzinfo=tz)


def parse_range(start: str | None, end: str | None,
                tz: ZoneInfo) -> tuple[datetime | None, datetime | None]:
    """``start`` and ``end`` as :func:`parse_time` reads them (fields ``from``, ``to``);
    :class:`RangeError` when the end is not after the start."""
    first = parse_time(start, tz, end=False, field="from")
    last = parse_time(end, tz, end=True, field="to")
    if first is not None and last is not None and last <= first:
        raise RangeError()
    return first, last


def cdr_filter(*, start: str | None = None, end: str | None = None, tz: ZoneInfo = UTC_ZONE,
               card: str | None = None, account: str | None = None,
               destination: str | None = None, status: str | None = None,
               cause: str | None = None) -> CdrFilter:
    """A filter from what an operator typed (blank: no filter on it); FilterError names
    the field it cannot read. Card and account numbers are checked when read."""
    def text(value: str | None) -> str | None:
        return (value or "").strip() or None

    first, last = parse_range(start, end, tz)
    wanted = text(status)
    if wanted is not None and wanted not in STATUSES:
        raise FilterError("status", "answered or unanswered")
    return CdrFilter(start=first, end=last, card=text(card), account=text(account),
                     destination=text(destination),
                     status="answered" if wanted == "answered" else
                     "unanswered" if wanted == "unanswered" else None,
                     cause=text(cause))


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
              page_size: int | None = None, newest_first: bool = False,
              after: int | None = None) -> Iterator[CdrRow]:
    """The call records matching ``f``, oldest first by id, or ``newest_first``: by start
    time, latest first (ties: the higher id first); read ``page_size`` at a time.
    ``after``: the id of the last record already shown; the listing goes on from it
    (a keyset: a page deep in the listing costs what the first does; newest first, an id
    that does not exist gives nothing). Unknown account or card numbers raise NotFound
    (UnknownNumber) here, before any row is read."""
    base = _filtered(s, select(Cdr.id), f)
    position: tuple[Any, int] | None = None
    if after is not None:
        started = None  # oldest first: the id alone
        if newest_first:
            started = s.connection().scalar(select(Cdr.started_at).where(Cdr.id == after))
            if started is None:
                return iter(())
        position = (started, after)
    return _pages(s, base, limit, page_size or PAGE_SIZE, newest_first, position)


def _pages(s: Session, base: Select[Any], limit: int | None, page_size: int,
           newest_first: bool = False,
           position: tuple[Any, int] | None = None) -> Iterator[CdrRow]:
    """``position``: the (started_at, id) of the last record given, as read (not made
    aware: bound back exactly as stored)."""
    conn = s.connection()  # Core rows: no ORM loading per row
    card = aliased(Card)
    order = (Cdr.started_at.desc(), Cdr.id.desc()) if newest_first else (Cdr.id.asc(),)
    left = limit
    while left is None or left > 0:
        size = page_size if left is None else min(page_size, left)
        # The page's ids from cdrs alone (by its primary key, or newest first by the index
        # on (started_at, id)), then their columns: each page costs the same however far
        # the listing has gone.
        query = base
        if position is not None:
            query = query.where(tuple_(Cdr.started_at, Cdr.id) < position if newest_first
                                else Cdr.id > position[1])
        ids = query.order_by(*order).limit(size).subquery()
        page = conn.execute(select(
            Cdr.id, Cdr.uniqueid, Cdr.started_at, Cdr.answered_at, Cdr.ended_at,
            Account.number, card.number, Cdr.caller, Cdr.destination, Cdr.destination_name,
            Cdr.prefix, Cdr.plan, Cdr.service, _answered(), Cdr.billable_seconds, Cdr.cost,
            Cdr.currency, Cdr.hangup_cause,
        ).join(ids, ids.c.id == Cdr.id).join(Account, Account.id == Cdr.account_id)
         .outerjoin(card, card.id == Cdr.card_id).order_by(*order)).all()
        for (id_, uniqueid, started, answered_at, ended, account, card_number, caller,
             destination, destination_name, prefix, plan, service, answered, seconds, cost,
             currency, cause) in page:
            yield CdrRow(id_, uniqueid, as_utc(started), as_utc(answered_at), as_utc(ended),
                         account, card_number, caller, destination, destination_name, prefix,
                         plan, service, bool(answered), seconds, cost, currency, cause)
        if len(page) < size:
            return
        position = (page[-1][2], page[-1][0])
        if left is not None:
            left -= len(page)


def amount_text(amount: Decimal, decimals: int) -> str:
    """An amount as the CLI and the CSV files show it (ivr.cli.common.money): the
    currency's decimals up to cents, never a digit less than the amount has."""
    return display(amount, min(decimals, 2))


def iso_time(value: datetime | None, tz: ZoneInfo) -> str | None:
    """A time as the CLI's JSON and CSV give it: ISO 8601 in ``tz``, to the second."""
    return None if value is None else value.astimezone(tz).isoformat(timespec="seconds")


def cdr_record(r: CdrRow, tz: ZoneInfo, decimals: dict[str, int]) -> dict[str, Any]:
    """A call record as ``ivr cdrs list --json/--csv`` and the console's export give it
    (CDR_FIELDS; times ISO 8601 in ``tz``; ``decimals`` from :func:`currency_decimals`)."""
    return {"id": r.id, "uniqueid": r.uniqueid, "started_at": iso_time(r.started_at, tz),
            "answered_at": iso_time(r.answered_at, tz), "ended_at": iso_time(r.ended_at, tz),
            "account": r.account, "card": r.card, "caller": r.caller,
            "destination": r.destination, "destination_name": r.destination_name,
            "prefix": r.prefix, "plan": r.plan, "service": r.service,
            "status": "answered" if r.answered else "unanswered",
            "billable_seconds": r.billable_seconds,
            "cost": amount_text(r.cost, decimals.get(r.currency, 2)), "currency": r.currency,
            "hangup_cause": r.hangup_cause}


def write_csv(out: IO[str], fields: Iterable[str], rows: Iterable[dict[str, Any]], *,
              header: bool = True) -> None:
    """``rows`` as CSV (``\\n`` line ends, None as an empty cell), written as they come."""
    writer = csv.DictWriter(out, list(fields), lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)


def cdr_csv(db: Database, f: CdrFilter = CdrFilter(), *, tz: ZoneInfo = UTC_ZONE,
            chunk: int | None = None, seconds: float | None = None) -> Iterator[str]:
    """The call records matching ``f`` as the CSV of ``ivr cdrs list --csv`` (header
    first, oldest first), in pieces of ``chunk`` records. Each piece is read in a read
    transaction of its own, going on from the last id of the one before (a keyset), and
    none is open between pieces: a slow download holds no connection or snapshot, and a
    million records are never in memory at once. An unknown card or account raises
    NotFound when the first piece is asked for; ``seconds``: each piece's
    :func:`time_limit`."""
    size = chunk or CSV_CHUNK
    after: int | None = None
    decimals: dict[str, int] | None = None
    while True:
        out = io.StringIO()
        with db.reading() as s:
            if decimals is None:
                decimals = currency_decimals(s)
            with time_limit(s, seconds):
                rows = list(iter_cdrs(s, f, limit=size, page_size=size, after=after))
        write_csv(out, CDR_FIELDS, (cdr_record(r, tz, decimals) for r in rows),
                  header=after is None)
        yield out.getvalue()
        if len(rows) < size:
            return
        after = rows[-1].id


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


def report_record(r: ReportRow, decimals: int) -> dict[str, Any]:
    """A report row as ``ivr reports --json/--csv`` and the console's download give it
    (REPORT_FIELDS; ``decimals``: its currency's)."""
    def text(value: Decimal | None) -> str | None:
        return None if value is None else str(value)

    return {"period": r.period, "group": r.group, "currency": r.currency, "calls": r.calls,
            "answered": r.answered, "asr": text(r.asr), "minutes": str(r.minutes),
            "seconds": r.seconds, "acd": text(r.acd),
            "revenue": amount_text(r.revenue, decimals),
            "topups": None if r.topups is None else amount_text(r.topups, decimals)}


def period_totals(rows: Iterable[ReportRow]) -> list[ReportRow]:
    """Grouped report rows summed per period and currency (the groups folded together),
    in order: what a chart of the periods shows."""
    totals: dict[tuple[str, str], ReportRow] = {}
    for r in rows:
        key = (r.period, r.currency)
        if key not in totals:
            totals[key] = ReportRow(r.period, None, r.currency,
                                    topups=None if r.topups is None else Decimal(0))
        t = totals[key]
        t.calls += r.calls
        t.answered += r.answered
        t.seconds += r.seconds
        t.revenue += r.revenue
        if t.topups is not None and r.topups is not None:
            t.topups += r.topups
    return [totals[k] for k in sorted(totals)]


def currency_decimals(s: Session) -> dict[str, int]:
    """The decimals amounts are shown with, per currency: the most of its plans'."""
    query = select(RatingPlan.currency, func.max(RatingPlan.decimals)).group_by(
        RatingPlan.currency)
    return {currency: int(decimals) for currency, decimals in s.execute(query)}


def day_start(day: date, tz: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=tz)
