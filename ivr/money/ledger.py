"""Money movements: credits, and the reservations that make live calls safe.

Every balance change is a :class:`~ivr.db.models.LedgerEntry` written in the same
transaction as the account's cached balance. A live call holds a reservation of the cost
of the seconds it was granted, so all calls on an account together can never spend more
than its balance (zero overdraft): :meth:`Ledger.authorize` grants only what the balance
less the other calls' reservations buys.

Each method is one transaction with the account row locked (SELECT ... FOR UPDATE on
PostgreSQL; SQLite transactions take the write lock at BEGIN). The methods are blocking;
call flows run them in a worker thread.
"""

from __future__ import annotations

import enum
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, TypeVar, cast

from sqlalchemy import Table, bindparam, func, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from ..db import Database, lock_account
from ..db.models import (
    Account,
    AccountStatus,
    Card,
    CardStatus,
    Cdr,
    EntryKind,
    LedgerEntry,
    RatingPlan,
    Reservation,
    ReservationStatus,
)
from ..db.types import Money, to_micros
from ..rating import MAX_CALL_SECONDS, NoRate, Plan, RateTable, max_seconds, quote
from ..rating.snapshot import dump_snapshot, load_snapshot, snapshot_rows
from .notify import reset_notice_if_topped_up
from .rates_store import RatesNotLoaded, RatingCache

log = logging.getLogger("ivr.money.ledger")

# Seconds: a capped hold shared with other cards of the account is never sized below this
# (nor below the first billing block of the call's rate), so holds are renewed at most
# every few seconds.
MIN_HOLD = 20

Clock = Callable[[], datetime]
M = TypeVar("M", bound=Callable[..., Any])


def utcnow() -> datetime:
    return datetime.now(UTC)


class LedgerError(ValueError):
    """A money operation was refused; nothing was written."""


class Refusal(enum.StrEnum):
    NO_RATE = "no_rate"  # destination not in the plan
    INSUFFICIENT_FUNDS = "insufficient_funds"  # not even the first block fits
    ACCOUNT_INACTIVE = "account_inactive"
    CARD_INACTIVE = "card_inactive"  # locked, blocked or expired


@dataclass(frozen=True)
class Grant:
    reservation_id: int
    account_id: int
    seconds: int  # the call may last this long from answer (the hold covers it)
    amount: Decimal  # held for it
    prefix: str
    destination: str
    currency: str
    # The account has auto-recharge set: the call controller plans it for this call.
    auto_recharge: bool = False
    # What the balance (less other calls' holds) buys, from answer: more than ``seconds``
    # when the hold was capped (``hold``), and the charging session renews it (ivr.live.charging).
    affordable: int = 0


@dataclass(frozen=True)
class Settlement:
    reservation_id: int
    cdr_id: int
    seconds: int  # charged (billable, capped at the grant)
    cost: Decimal
    balance: Decimal  # after the charge
    duplicate: bool  # this uniqueid had already been settled: nothing charged now
    granted: int = 0  # seconds the call was allowed at the end (its last hold)
    # What the account can spend once this call is charged (its balance less the other
    # live calls' holds), read under the same lock: the caller is told it without a
    # second read. None on a duplicate (nothing was locked for it).
    available: Decimal | None = None


def credit(
    session: Session,
    account_id: int,
    amount: Decimal,
    kind: EntryKind,
    *,
    ref: str | None = None,
    note: str = "",
    now: datetime | None = None,
) -> tuple[LedgerEntry, bool]:
    """Add (or, for adjustments, remove) money: the one way money comes into an account
    (opening balance, card or saved-method payment, auto-recharge, recharge code,
    operator adjustment). Idempotent per (kind, ref): a repeated ref returns the first
    entry and False. In the same transaction it runs the after-credit rules
    (:func:`after_credit`); a server that credits also renews the account's live calls
    (``ivr.live.charging.Charging.credited``)."""
    if not isinstance(amount, Decimal):
        raise TypeError("amounts are Decimal, never float")
    to_micros(amount)  # MoneyPrecisionError now, not at flush time
    if kind is EntryKind.CALL:
        raise LedgerError("call charges are written by settle()")
    if amount == 0 or (amount < 0 and kind is not EntryKind.ADJUSTMENT):
        raise LedgerError(f"a {kind.value} must be a positive amount, not {amount}")
    account = lock_account(session, account_id)
    if ref is not None:
        existing = session.scalar(
            select(LedgerEntry).where(LedgerEntry.kind == kind, LedgerEntry.ref == ref)
        )
        if existing is not None:
            if existing.account_id != account_id or existing.amount != amount:
                raise LedgerError(f"{kind.value} {ref!r} was already used for another credit")
            return existing, False
    new_balance = account.balance + amount
    if new_balance < account.reserved:
        raise LedgerError(
            f"adjustment of {amount} would leave {new_balance}, below the {account.reserved} "
            "held for live calls"
        )
    account.balance = new_balance
    entry = LedgerEntry(
        account_id=account_id,
        kind=kind,
        amount=amount,
        balance_after=new_balance,
        ref=ref,
        note=note,
        created_at=now or utcnow(),
    )
    session.add(entry)
    session.flush()
    after_credit(session, account)
    return entry, True


def open_balances(session: Session, openings: Sequence[tuple[int, Decimal, str]], *,
                  note: str = "opening balance", now: datetime | None = None) -> None:
    """The opening top-ups of many accounts opened in this transaction (a card batch):
    what :func:`credit` does for each, as one statement per table. Each ``(account id,
    amount, ref)`` writes a ``topup`` entry and the balance it leaves; the accounts must
    have nothing on them yet (no balance, nothing held, no notice to re-arm), which is
    checked."""
    if not openings:
        return
    rows = []
    for account_id, amount, ref in openings:
        if not isinstance(amount, Decimal):
            raise TypeError("amounts are Decimal, never float")
        to_micros(amount)
        if amount <= 0:
            raise LedgerError(f"a topup must be a positive amount, not {amount}")
        rows.append({"account_id": account_id, "kind": EntryKind.TOPUP, "amount": amount,
                     "balance_after": amount, "ref": ref, "note": note,
                     "created_at": now or utcnow()})
    accounts = cast(Table, Account.__table__)
    ids = [account_id for account_id, _, _ in openings]
    busy = session.scalar(select(func.count()).select_from(accounts).where(
        accounts.c.id.in_(ids),
        (accounts.c.balance != Decimal(0)) | (accounts.c.reserved != Decimal(0))
        | accounts.c.low_balance_notice.is_not(None)))
    if busy or len(set(ids)) != len(ids):
        raise LedgerError("opening balances are for new, empty accounts (once each)")
    session.execute(insert(cast(Table, LedgerEntry.__table__)), rows)
    by_amount: dict[Decimal, list[int]] = {}
    for account_id, amount, _ in openings:
        by_amount.setdefault(amount, []).append(account_id)
    for amount, same in by_amount.items():  # a batch: one statement
        session.execute(update(accounts).where(accounts.c.id.in_(same))
                        .values(balance=amount))


def after_credit(session: Session, account: Account) -> None:
    """What every credit does to the account besides the money: re-arm the low-balance
    notice once the balance is back at its level (ivr.money.notify)."""
    reset_notice_if_topped_up(session, account)


def ledger_sum(session: Session, account_id: int) -> Decimal:
    amounts = session.scalars(
        select(LedgerEntry.amount).where(LedgerEntry.account_id == account_id)
    )
    return sum(amounts, Decimal(0))


def _compiling_outside(method: M) -> M:
    """Run a ledger step so that a rate table is never compiled inside its transaction:
    if the step needs a plan's table that was never loaded, its transaction is rolled
    back (nothing was written yet), the table is compiled outside it, and the step runs
    again."""

    @functools.wraps(method)
    def run(self: Ledger, *args: Any, **kwargs: Any) -> Any:
        for _ in range(3):
            try:
                return method(self, *args, **kwargs)
            except RatesNotLoaded as exc:
                self.rates.load(exc.plan_id)
        return method(self, *args, **kwargs)

    return cast(M, run)


class Ledger:
    def __init__(self, db: Database, rates: RatingCache | None = None, clock: Clock = utcnow):
        self.db = db
        self.rates = rates or RatingCache(db)
        self.clock = clock
        # The server (ivr.live.servers) whose reservations these are: recovery on another
        # server leaves them alone while this one's lease lives.
        self.server_id: int | None = None

    # ------------------------------------------------------------------ authorize

    @_compiling_outside
    def authorize(
        self,
        number: str,
        *,
        account_id: int | None = None,
        card_id: int | None = None,
        at: datetime | None = None,
        service: str = "voice",
        limit: int = MAX_CALL_SECONDS,
        hold: int | None = None,
        call_key: str | None = None,
        channel: str | None = None,
    ) -> Grant | Refusal:
        """Reserve what the available balance buys for a call to ``number``, or at most
        ``hold`` seconds of it: several cards of one account can then call at once, each
        holding a slice that is renewed during the call (seed 002). While other cards of
        the account are idle, a capped hold is only a share of what is not held (see
        ``_held``), so a small balance lets each of them start a call too.

        ``call_key`` names the live call (unique): it is the settlement's idempotency key
        and lets a restarted server find how the call ended (ivr.live.recovery).

        The reservation keeps the rates it was priced with (the plan's version and a
        snapshot of the rows that can rate ``number``): extend and settle price the call
        with them, whatever deck is imported meanwhile."""
        at = at or self.clock()
        # Prebuilt Core statements on a plain Connection, not ORM objects: this is on every
        # call's set-up path, where the unit of work cost more than the SQL it sent
        # (bench/callsetup.py, docs/bench.md).
        with self.db.connection() as s:
            if card_id is not None:
                row = s.execute(_CARD_STATE, {"card_id": card_id}).one_or_none()
                if row is None:
                    raise LedgerError(f"no card {card_id}")
                if not _usable(row.status, row.expires_on, at.date()):
                    return Refusal.CARD_INACTIVE
                account_id = row.account_id
            if account_id is None:
                raise LedgerError("authorize needs a card or an account")
            account = _locked_account(s, account_id)
            if account.status is not AccountStatus.ACTIVE:
                return Refusal.ACCOUNT_INACTIVE
            rates = self.rates.get(account.plan_id, s)
            available = account.balance - account.reserved
            try:
                affordable = max_seconds(
                    rates.table, rates.plan, number, available, at, service, limit=limit
                )
            except NoRate:
                return Refusal.NO_RATE
            if affordable <= 0:
                return Refusal.INSUFFICIENT_FUNDS
            seconds = affordable
            if hold is not None:
                floor = _floor(rates.table, rates.plan, number, at, service)
                seconds = _held(affordable, 0, hold, floor,
                                _sharers(s, account_id, card_id, at.date(), affordable // floor))
            q = quote(rates.table, rates.plan, number, seconds, at, service)
            snapshot = dump_snapshot(
                rates.plan, snapshot_rows(rates.table, rates.plan, number, service))
            reservation_id = s.execute(_NEW_RESERVATION, {
                "account_id": account_id,
                "card_id": card_id,
                "plan_id": account.plan_id,
                "number": number,
                "prefix": q.prefix,
                "destination": q.destination,
                "service": service,
                "seconds": seconds,
                "amount": q.cost,
                "status": ReservationStatus.ACTIVE,
                "rated_at": at,
                "rates_version": rates.version,
                "rate_snapshot": snapshot,
                "call_key": call_key,
                "channel": channel,
                "server_id": self.server_id,
                "created_at": self.clock(),
            }).scalar_one()
            s.execute(_HOLD_MORE, {"account": account_id, "more": q.cost})
            return Grant(
                reservation_id, account_id, seconds, q.cost, q.prefix, q.destination, q.currency,
                auto_recharge=account.auto_recharge_threshold is not None
                and account.auto_recharge_amount is not None,
                affordable=affordable,
            )

    # ------------------------------------------------------------------ extend

    @_compiling_outside
    def extend(
        self, reservation_id: int, *, limit: int = MAX_CALL_SECONDS, hold: int | None = None
    ) -> Grant:
        """Re-grant a live call from the account's balance now (after a top-up, or to
        renew a capped hold): the call may then last as long as the balance less the
        other calls' holds buys, or ``hold`` seconds from answer when that is less.
        Priced with the rates the call was authorized with."""
        with self.db.transaction() as s:
            res, account = self._lock_reservation(s, reservation_id)
            if res.status is not ReservationStatus.ACTIVE:
                raise LedgerError(f"reservation {reservation_id} is {res.status.value}")
            table, plan = self._rates_of(s, res)
            budget = account.balance - account.reserved + res.amount
            rated_at = _aware(res.rated_at)
            affordable = max(0, max_seconds(
                table, plan, res.number, budget, rated_at, res.service, limit=limit
            ))
            seconds = affordable
            if hold is not None:
                # A renewal never takes back time already granted, and takes a share of
                # what is not held while other cards of the account could start a call.
                floor = _floor(table, plan, res.number, rated_at, res.service)
                sharers = _sharers(s, account.id, res.card_id, self.clock().date(),
                                   (affordable - res.seconds) // floor)
                seconds = _held(affordable, res.seconds, max(hold, res.seconds), floor, sharers)
            amount = (
                quote(table, plan, res.number, seconds, rated_at, res.service).cost
                if seconds
                else Decimal(0)
            )
            account.reserved += amount - res.amount
            res.seconds, res.amount = seconds, amount
            return Grant(res.id, account.id, seconds, amount, res.prefix, res.destination,
                         account.currency, affordable=affordable)

    # ------------------------------------------------------------------ settle

    @_compiling_outside
    def settle(
        self,
        reservation_id: int,
        billable_seconds: int,
        *,
        uniqueid: str,
        caller: str = "",
        started_at: datetime | None = None,
        answered_at: datetime | None = None,
        ended_at: datetime | None = None,
        hangup_cause: str = "",
    ) -> Settlement:
        """Charge a finished call exactly once per Asterisk ``uniqueid``.

        Billable seconds beyond the grant are not charged: Asterisk enforces the grant, so
        more can only be clock skew, and charging it could overdraw the account. The call
        is priced with the rates it was authorized with (a deck imported during the call
        does not re-price it).
        """
        if billable_seconds < 0:
            raise LedgerError("billable seconds cannot be negative")
        with self.db.connection() as s:  # Core, as authorize
            res, account = _locked_reservation(s, reservation_id)
            done = _settled_already(s, res, uniqueid, account.balance)
            if done is not None:
                return done
            if res.status is not ReservationStatus.ACTIVE:
                raise LedgerError(f"reservation {reservation_id} is {res.status.value}")
            seconds = min(billable_seconds, res.seconds)
            rated_at = _aware(answered_at or res.rated_at)
            cost = Decimal(0)
            if seconds > 0:
                table, plan = self._rates_in(s, res.rate_snapshot, res.plan_id)
                cost = quote(table, plan, res.number, seconds, rated_at, res.service).cost
            # The hold covers the grant at the authorize time; if the answer fell in a
            # dearer window, the rest comes from free balance, never below zero.
            ceiling = account.balance - (account.reserved - res.amount)
            if cost > ceiling:
                log.warning("call %s cost %s capped at %s (balance)", uniqueid, cost, ceiling)
                cost = max(ceiling, Decimal(0))
            now = self.clock()
            balance = account.balance - cost
            s.execute(_CHARGE, {"account": res.account_id, "held": res.amount,
                                "balance_now": balance})
            if cost:
                s.execute(_NEW_ENTRY, {
                    "account_id": res.account_id,
                    "kind": EntryKind.CALL,
                    "amount": -cost,
                    "balance_after": balance,
                    "ref": uniqueid,
                    "note": f"{res.number} {seconds}s",
                    "created_at": now,
                })
            s.execute(_CLOSE_RESERVATION, {"reservation": res.id,
                                           "new_status": ReservationStatus.SETTLED,
                                           "closed": now, "call_id": uniqueid})
            cdr_id = s.execute(_NEW_CDR, _cdr_row(
                s, res, uniqueid, caller, started_at, answered_at, ended_at or now, seconds,
                cost, account.currency, hangup_cause)).scalar_one()
            return Settlement(res.id, cdr_id, seconds, cost, balance, False, res.seconds,
                              balance - (account.reserved - res.amount))

    # ------------------------------------------------------------------ release

    def release(
        self,
        reservation_id: int,
        *,
        uniqueid: str | None = None,
        caller: str = "",
        started_at: datetime | None = None,
        hangup_cause: str = "",
    ) -> None:
        """Free the hold of a call that was never answered. Writes a zero-cost CDR when a
        uniqueid is given. Releasing twice is harmless."""
        with self.db.connection() as s:  # Core, as authorize
            res, account = _locked_reservation(s, reservation_id)
            if res.status is not ReservationStatus.ACTIVE:
                return
            s.execute(_CHARGE, {"account": res.account_id, "held": res.amount,
                                "balance_now": account.balance})
            closed = self.clock()
            s.execute(_CLOSE_RESERVATION, {"reservation": res.id,
                                           "new_status": ReservationStatus.RELEASED,
                                           "closed": closed, "call_id": uniqueid})
            if uniqueid is not None and s.execute(
                    _CDR_OF, {"call_id": uniqueid}).one_or_none() is None:
                s.execute(_NEW_CDR, _cdr_row(s, res, uniqueid, caller, started_at, None,
                                             closed, 0, Decimal(0), account.currency,
                                             hangup_cause))

    # ------------------------------------------------------------------ auto-recharge

    @_compiling_outside
    def seconds_until_below(self, reservation_id: int) -> int | None:
        """Seconds after answer at which this call takes the account's balance below its
        auto-recharge threshold (0: already below); None when the account has none."""
        with self.db.transaction() as s:
            res = s.get(Reservation, reservation_id)
            if res is None or res.status is not ReservationStatus.ACTIVE:
                return None
            account = s.get(Account, res.account_id)
            assert account is not None
            threshold = account.auto_recharge_threshold
            if threshold is None or account.auto_recharge_amount is None:
                return None
            # What the other live calls hold is spent already, as far as this call knows.
            spendable = account.balance - (account.reserved - res.amount) - threshold
            if spendable <= 0:
                return 0
            table, plan = self._rates_of(s, res)
            try:
                return max_seconds(table, plan, res.number, spendable,
                                   _aware(res.rated_at), res.service)
            except NoRate:
                return None

    # ------------------------------------------------------------------ live calls

    def open_reservations(self) -> list[Reservation]:
        """Reservations not yet settled or released (live calls, or calls to recover)."""
        with self.db.transaction() as s:
            return list(s.scalars(
                select(Reservation)
                .where(Reservation.status == ReservationStatus.ACTIVE)
                .order_by(Reservation.id)
            ))

    # ------------------------------------------------------------------ helpers

    def _lock_reservation(self, s: Session, reservation_id: int) -> tuple[Reservation, Account]:
        account_id = s.scalar(
            select(Reservation.account_id).where(Reservation.id == reservation_id)
        )
        if account_id is None:
            raise LedgerError(f"no reservation {reservation_id}")
        account = lock_account(s, account_id)  # lock order: account, then reservation
        res = s.execute(
            select(Reservation)
            .where(Reservation.id == reservation_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).scalar_one()
        return res, account

    def _rates_of(self, s: Session, res: Reservation) -> tuple[RateTable, Plan]:
        return self._rates_in(s, res.rate_snapshot, res.plan_id)

    def _rates_in(self, s: Session | Connection, snapshot: str | None,
                  plan_id: int) -> tuple[RateTable, Plan]:
        """The rates a call was authorized with: its snapshot, or (a reservation made
        before snapshots were kept) the plan's current table."""
        if snapshot is not None:
            plan, table = load_snapshot(snapshot)
            return table, plan
        rates = self.rates.get(plan_id, s)
        return rates.table, rates.plan


def _plan_name_of(s: Session | Connection, snapshot: str | None, plan_id: int) -> str:
    if snapshot is not None:
        return load_snapshot(snapshot)[0].name
    name = s.scalar(_PLAN_NAME, {"plan": plan_id})
    return name or ""


# The statements of the call path (authorize, settle, release), built once.
_ACCOUNTS = cast(Table, Account.__table__)
_CARDS = cast(Table, Card.__table__)
_RESERVATIONS = cast(Table, Reservation.__table__)
_CDRS = cast(Table, Cdr.__table__)
_ENTRIES = cast(Table, LedgerEntry.__table__)
_PLAN_NAME = select(RatingPlan.__table__.c.name).where(
    RatingPlan.__table__.c.id == bindparam("plan"))
_CARD_STATE = select(_CARDS.c.status, _CARDS.c.expires_on, _CARDS.c.account_id).where(
    _CARDS.c.id == bindparam("card_id"))
# A row lock on PostgreSQL; SQLite's transaction holds the write lock already.
_ACCOUNT_FOR_UPDATE = select(
    _ACCOUNTS.c.status, _ACCOUNTS.c.plan_id, _ACCOUNTS.c.balance, _ACCOUNTS.c.reserved,
    _ACCOUNTS.c.currency, _ACCOUNTS.c.auto_recharge_threshold,
    _ACCOUNTS.c.auto_recharge_amount,
).where(_ACCOUNTS.c.id == bindparam("account")).with_for_update()
_ACCOUNT_OF_RESERVATION = select(_RESERVATIONS.c.account_id).where(
    _RESERVATIONS.c.id == bindparam("reservation"))
_RESERVATION_FOR_UPDATE = select(_RESERVATIONS).where(
    _RESERVATIONS.c.id == bindparam("reservation")).with_for_update()
_NEW_RESERVATION = insert(_RESERVATIONS).returning(_RESERVATIONS.c.id)
_NEW_CDR = insert(_CDRS).returning(_CDRS.c.id)
_NEW_ENTRY = insert(_ENTRIES)
_CDR_OF = select(_CDRS.c.id, _CDRS.c.billable_seconds, _CDRS.c.cost).where(
    _CDRS.c.uniqueid == bindparam("call_id"))
_HOLD_MORE = update(_ACCOUNTS).where(_ACCOUNTS.c.id == bindparam("account")).values(
    reserved=_ACCOUNTS.c.reserved + bindparam("more", type_=Money()))
# A call's end: its hold goes, and the balance is what the charge leaves (the caller
# computed it under the lock and writes its ledger entry in the same transaction).
_CHARGE = update(_ACCOUNTS).where(_ACCOUNTS.c.id == bindparam("account")).values(
    reserved=_ACCOUNTS.c.reserved - bindparam("held", type_=Money()),
    balance=bindparam("balance_now", type_=Money()))
_CLOSE_RESERVATION = update(_RESERVATIONS).where(
    _RESERVATIONS.c.id == bindparam("reservation")).values(
    status=bindparam("new_status", type_=_RESERVATIONS.c.status.type),
    closed_at=bindparam("closed", type_=_RESERVATIONS.c.closed_at.type),
    uniqueid=func.coalesce(bindparam("call_id", type_=_RESERVATIONS.c.uniqueid.type),
                           _RESERVATIONS.c.uniqueid))
_BUSY_CARDS = select(_RESERVATIONS.c.card_id).where(
    _RESERVATIONS.c.account_id == bindparam("account"),
    _RESERVATIONS.c.status == ReservationStatus.ACTIVE,
    _RESERVATIONS.c.card_id.is_not(None))
_IDLE_CARDS = select(func.count()).select_from(
    select(_CARDS.c.id).where(
        _CARDS.c.account_id == bindparam("account"),
        _CARDS.c.status == CardStatus.ACTIVE,
        or_(_CARDS.c.expires_on.is_(None), _CARDS.c.expires_on >= bindparam("today")),
        _CARDS.c.id.not_in(_BUSY_CARDS),
        _CARDS.c.id != bindparam("card_id"),  # 0: no card of the account's is calling
    ).limit(bindparam("most")).subquery())


def _cdr_row(s: Connection, res: Any, uniqueid: str, caller: str,
             started_at: datetime | None, answered_at: datetime | None, ended_at: datetime,
             seconds: int, cost: Decimal, currency: str, cause: str) -> dict[str, Any]:
    """The call record of reservation ``res`` (a row) as it ends."""
    return {
        "uniqueid": uniqueid,
        "account_id": res.account_id,
        "card_id": res.card_id,
        "reservation_id": res.id,
        "caller": caller,
        "destination": res.number,
        "destination_name": res.destination,
        "prefix": res.prefix,
        "plan": _plan_name_of(s, res.rate_snapshot, res.plan_id),
        "service": res.service,
        "started_at": started_at or res.created_at,
        "answered_at": answered_at,
        "ended_at": ended_at,
        "billable_seconds": seconds,
        "cost": cost,
        "currency": currency,
        "hangup_cause": cause,
    }


def _locked_account(s: Session | Connection, account_id: int) -> Any:
    """The account's row for update (see ivr.db.lock_account)."""
    row = s.execute(_ACCOUNT_FOR_UPDATE, {"account": account_id}).one_or_none()
    if row is None:
        raise LookupError(f"no account {account_id}")
    return row


def _locked_reservation(s: Connection, reservation_id: int) -> tuple[Any, Any]:
    """(reservation row, account row), both locked, in the order every step takes them:
    the account, then the reservation."""
    account_id = s.scalar(_ACCOUNT_OF_RESERVATION, {"reservation": reservation_id})
    if account_id is None:
        raise LedgerError(f"no reservation {reservation_id}")
    account = _locked_account(s, account_id)
    res = s.execute(_RESERVATION_FOR_UPDATE, {"reservation": reservation_id}).one()
    return res, account


def _settled_already(s: Connection, res: Any, uniqueid: str,
                     balance: Decimal) -> Settlement | None:
    """The settlement of a call already charged under ``uniqueid`` (or, once settled,
    under the reservation's own uniqueid): settling is idempotent."""
    cdr = s.execute(_CDR_OF, {"call_id": uniqueid}).one_or_none()
    if cdr is None and res.status is ReservationStatus.SETTLED and res.uniqueid:
        cdr = s.execute(_CDR_OF, {"call_id": res.uniqueid}).one_or_none()
    if cdr is None:
        return None
    return Settlement(res.id, cdr.id, cdr.billable_seconds, cdr.cost, balance, True,
                      res.seconds)


def _usable(status: CardStatus, expires_on: date | None, today: date) -> bool:
    return status is CardStatus.ACTIVE and (expires_on is None or expires_on >= today)


def _held(affordable: int, held: int, hold: int, floor: int, sharers: int) -> int:
    """Seconds from answer a call holds: what it ``held`` already, plus its share of what
    the money not held buys beyond that (``affordable``), at most ``hold`` in all. The
    share is 1/``sharers`` of it (the calls that could still start: this one and the
    account's idle cards), so a first call leaves the others enough to start; never less
    than ``floor`` (the first billing block, or MIN_HOLD), when the money buys it."""
    share = max(floor, -(-(affordable - held) // sharers))
    return min(affordable, max(hold, 1), held + share)


def _floor(table: RateTable, plan: Plan, number: str, at: datetime, service: str) -> int:
    """The least a shared hold is sized to: MIN_HOLD, or the rate's first billing block
    (its first increment) when longer."""
    return max(MIN_HOLD, quote(table, plan, number, 1, at, service).charged_seconds)


def _sharers(s: Session | Connection, account_id: int, card_id: int | None, today: date,
             most: int) -> int:
    """1 + the account's other usable cards not in a call now (each could start one),
    counted up to ``most`` (more would not shrink a share below the floor)."""
    if most < 1:
        return 1
    count = s.scalar(_IDLE_CARDS, {"account": account_id, "today": today,
                                   "card_id": card_id or 0, "most": most})
    return 1 + (count or 0)


def card_usable(card: Card, today: date) -> bool:
    return _usable(card.status, card.expires_on, today)


def _aware(value: datetime) -> datetime:
    """SQLite returns naive datetimes for timezone-aware columns; they were stored as UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
