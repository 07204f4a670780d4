"""Loyalty points of the revalue line's customers.

A recharge earns ``floor(amount x rate)`` points, the rate being points per 1.00 of the
recharge's currency: ``loyalty_points_per_unit`` (0: no points), or the operator's own
from ``loyalty_operator_points`` (``"NAME=RATE;NAME=RATE"``, names ignoring case). The
points are worked out when the recharge is requested (so the line can announce them) and
kept on the revaluation; they are granted when its price is captured, in the same
transaction, and taken back when it is refunded (ivr.revalue.service).

Points live in ``loyalty_entries``, append-only and signed: ``grant`` (+, ref the request
id), ``reverse`` (-, ref the request id) and ``redeem`` (-, ref the redemption's id), the
ref unique per kind, so each is written once. A customer's points are the sum. A refund
takes the points back even if they were spent meanwhile: the points may then be below
zero until later recharges make up for it, and nothing can be redeemed until then.

:func:`redeem` turns points into account credit at ``loyalty_point_value`` per point
(``ivr.money.ledger.credit``, kind LOYALTY, with a note), in one transaction with the
account locked, so concurrent redemptions never spend a point twice.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_FLOOR, Decimal, InvalidOperation

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..config import ConfigError, Settings
from ..db import Database, lock_account
from ..db.models import Customer, EntryKind, LoyaltyEntry
from ..db.types import to_micros
from ..money.ledger import credit

log = logging.getLogger("ivr.revalue.loyalty")

GRANT, REVERSE, REDEEM = "grant", "reverse", "redeem"


class RedeemRefused(ValueError):
    """A redemption the rules refuse (not enough points, none configured): nothing done."""


@dataclass(frozen=True)
class LoyaltyRates:
    """Points per 1.00 of currency: ``default`` for every operator but those in
    ``per_operator`` (keys case-folded)."""

    default: Decimal = Decimal(0)
    per_operator: Mapping[str, Decimal] | None = None

    def rate(self, operator: str) -> Decimal:
        return (self.per_operator or {}).get(operator.strip().casefold(), self.default)

    def points(self, amount: Decimal, operator: str) -> int:
        """The whole points a recharge of ``amount`` with ``operator`` earns."""
        return int((amount * self.rate(operator)).to_integral_value(ROUND_FLOOR))


def _rate(text: str, what: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ConfigError(f"{what}: {text.strip()!r} is not a number") from None
    if not value.is_finite() or value < 0:
        raise ConfigError(f"{what}: {text.strip()!r} must be 0 or more")
    return value


def rates_from_settings(settings: Settings) -> LoyaltyRates:
    """The rates of ``loyalty_points_per_unit`` and ``loyalty_operator_points``;
    ConfigError names a bad entry."""
    default = _rate(settings.loyalty_points_per_unit or "0", "loyalty_points_per_unit")
    per: dict[str, Decimal] = {}
    for entry in settings.loyalty_operator_points.replace("\n", ";").split(";"):
        if not entry.strip():
            continue
        name, eq, rate = entry.rpartition("=")
        if not eq or not name.strip():
            raise ConfigError(f"loyalty_operator_points: {entry.strip()!r}: write NAME=RATE")
        per[name.strip().casefold()] = _rate(rate, f"loyalty_operator_points ({name.strip()})")
    return LoyaltyRates(default, per)


def point_value(settings: Settings) -> Decimal:
    """``loyalty_point_value``: the credit one point buys (0: redemption off)."""
    value = _rate(settings.loyalty_point_value or "0", "loyalty_point_value")
    try:
        to_micros(value)
    except ValueError:
        raise ConfigError("loyalty_point_value: at most 6 decimals") from None
    return value


# --------------------------------------------------------------------------- in a transaction


def balance_in(s: Session, customer_id: int) -> int:
    return int(s.scalar(select(func.coalesce(func.sum(LoyaltyEntry.points), 0))
                        .where(LoyaltyEntry.customer_id == customer_id)) or 0)


def add_entry(s: Session, customer_id: int, points: int, kind: str, ref: str, note: str,
              now: datetime) -> bool:
    """Write an entry unless one of this kind and ref exists; True if written."""
    if s.scalar(select(LoyaltyEntry.id).where(LoyaltyEntry.kind == kind,
                                              LoyaltyEntry.ref == ref)) is not None:
        return False
    s.add(LoyaltyEntry(customer_id=customer_id, points=points, kind=kind, ref=ref,
                       note=note[:200], created_at=now))
    s.flush()
    return True


# --------------------------------------------------------------------------- operations


@dataclass(frozen=True)
class LoyaltyEntryInfo:
    points: int
    kind: str
    ref: str
    note: str
    created_at: datetime


@dataclass(frozen=True)
class LoyaltyStatement:
    customer_id: int
    points: int
    entries: list[LoyaltyEntryInfo]  # the newest first


def statement(db: Database, customer_id: int, limit: int = 20) -> LoyaltyStatement:
    with db.reading() as s:
        rows = s.scalars(select(LoyaltyEntry).where(LoyaltyEntry.customer_id == customer_id)
                         .order_by(LoyaltyEntry.id.desc()).limit(limit)).all()
        entries = [LoyaltyEntryInfo(r.points, r.kind, r.ref, r.note, _aware(r.created_at))
                   for r in rows]
        return LoyaltyStatement(customer_id, balance_in(s, customer_id), entries)


@dataclass(frozen=True)
class Redemption:
    ref: str
    points: int  # spent
    amount: Decimal  # credited to the account
    points_left: int
    balance: Decimal  # the account's balance after


def redeem(db: Database, customer_id: int, points: int, *, value: Decimal,
           ref: str | None = None, now: datetime | None = None) -> Redemption:
    """Turn ``points`` of the customer's into credit on their account (``value`` per
    point), once per ``ref`` (a repeat returns the first redemption). RedeemRefused
    when they have fewer points, or redemption is off (``value`` 0)."""
    if isinstance(points, bool) or not isinstance(points, int) or points < 1:
        raise RedeemRefused("redeem at least 1 point")
    if value <= 0:
        raise RedeemRefused("redemption is off (loyalty_point_value is 0)")
    amount = points * value
    ref = ref or f"redeem-{secrets.token_hex(8)}"
    now = now or datetime.now(UTC)
    with db.transaction() as s:
        customer = s.get(Customer, customer_id)
        if customer is None:
            raise LookupError(f"no customer {customer_id}")
        account = lock_account(s, customer.account_id)  # one redemption at a time
        done = s.scalar(select(LoyaltyEntry).where(LoyaltyEntry.kind == REDEEM,
                                                   LoyaltyEntry.ref == ref))
        if done is not None:
            return Redemption(ref, -done.points, -done.points * value,
                              balance_in(s, customer_id), account.balance)
        have = balance_in(s, customer_id)
        if have < points:
            raise RedeemRefused(f"{points} points asked, {max(have, 0)} available")
        note = f"loyalty: {points} points at {value} each"
        add_entry(s, customer_id, -points, REDEEM, ref, note, now)
        credit(s, account.id, amount, EntryKind.LOYALTY, ref=ref, note=note, now=now)
        left, balance = have - points, account.balance
    log.info("customer %d redeemed %d loyalty points for %s", customer_id, points, amount)
    return Redemption(ref, points, amount, left, balance)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
