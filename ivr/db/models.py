"""The database schema (SQLAlchemy 2.x). Migrations live in ivr/db/migrations.

Money columns are :class:`~ivr.db.types.Money` (exact integer micro-units). An account's
``balance`` is a cache of the sum of its ledger entries, updated in the same transaction
as each entry; ``reserved`` is the sum of its live reservations and of the amounts
held for its revalue-line recharges (ivr.revalue.service).
"""

from __future__ import annotations

import enum
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import (
    Boolean,
    Date,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from .types import Money

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def _enum(cls: type[enum.Enum]) -> Enum:
    # Stored as plain strings (portable, readable in reports); checked in Python.
    return Enum(cls, native_enum=False, length=16, validate_strings=True,
                values_callable=lambda e: [m.value for m in e])


class AccountStatus(enum.StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    CLOSED = "closed"


class CardStatus(enum.StrEnum):
    ACTIVE = "active"
    LOCKED = "locked"  # too many wrong PINs, or by an operator; unlock restores
    EXPIRED = "expired"
    BLOCKED = "blocked"  # permanently (lost, stolen, fraud)


class EntryKind(enum.StrEnum):
    TOPUP = "topup"
    CALL = "call"
    REFUND = "refund"
    ADJUSTMENT = "adjustment"
    VOUCHER = "voucher"
    # A mobile recharge bought on the revalue line (negative; ref: its request id).
    REVALUATION = "revaluation"
    # Loyalty points turned into credit (ivr.revalue.loyalty).
    LOYALTY = "loyalty"


class ReservationStatus(enum.StrEnum):
    ACTIVE = "active"
    SETTLED = "settled"
    RELEASED = "released"


class PaymentStatus(enum.StrEnum):
    """Where a card payment attempt stands (ivr.payments). ``pending`` and ``timeout``
    are unresolved: the gateway may or may not have charged, and reconciliation asks it."""

    PENDING = "pending"
    APPROVED = "approved"
    DECLINED = "declined"
    TIMEOUT = "timeout"
    ERROR = "error"


class RatingPlan(Base):
    __tablename__ = "rating_plans"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    currency: Mapped[str] = mapped_column(String(3))
    tz: Mapped[str] = mapped_column(String(64), default="UTC")
    decimals: Mapped[int] = mapped_column(Integer, default=4)
    rounding: Mapped[str] = mapped_column(String(8), default="up")
    max_cost: Mapped[Decimal | None] = mapped_column(Money, nullable=True)
    # Bumped by every rate import, so rating caches know to reload.
    rates_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Rate(Base):
    """One deck row (a step of a prefix's rate in a time window)."""

    __tablename__ = "rates"

    id: Mapped[int] = mapped_column(primary_key=True)
    plan_id: Mapped[int] = mapped_column(ForeignKey("rating_plans.id", ondelete="CASCADE"))
    prefix: Mapped[str] = mapped_column(String(32))
    destination: Mapped[str] = mapped_column(String(128), default="")
    connect_fee: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    rate: Mapped[Decimal] = mapped_column(Money)
    rate_unit: Mapped[int] = mapped_column(Integer, default=60)
    increment: Mapped[int] = mapped_column(Integer, default=1)
    from_second: Mapped[int] = mapped_column(Integer, default=0)
    days: Mapped[str] = mapped_column(String(32), default="*")
    start: Mapped[str] = mapped_column(String(5), default="00:00")
    end: Mapped[str] = mapped_column(String(5), default="24:00")
    service: Mapped[str] = mapped_column(String(16), default="voice")

    __table_args__ = (Index("ix_rates_plan_prefix", "plan_id", "prefix"),)


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    currency: Mapped[str] = mapped_column(String(3))
    plan_id: Mapped[int] = mapped_column(ForeignKey("rating_plans.id"))
    status: Mapped[AccountStatus] = mapped_column(
        _enum(AccountStatus), default=AccountStatus.ACTIVE
    )
    balance: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    reserved: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Auto-recharge (seed 001): when a call takes the balance below the threshold, the
    # linked payment method is charged `amount`, at most once per call and `daily_cap`
    # a day. All three None: off.
    auto_recharge_threshold: Mapped[Decimal | None] = mapped_column(Money, nullable=True)
    auto_recharge_amount: Mapped[Decimal | None] = mapped_column(Money, nullable=True)
    auto_recharge_daily_cap: Mapped[Decimal | None] = mapped_column(Money, nullable=True)
    # Low-balance notice outside calls, by e-mail and/or SMS, when the balance falls
    # below `low_balance_notice` (once until topped up again).
    email: Mapped[str | None] = mapped_column(String(254), nullable=True)
    sms_number: Mapped[str | None] = mapped_column(String(32), nullable=True)
    low_balance_notice: Mapped[Decimal | None] = mapped_column(Money, nullable=True)
    low_balance_notified_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True)

    plan: Mapped[RatingPlan] = relationship()
    cards: Mapped[list[Card]] = relationship(back_populates="account")

    @property
    def available(self) -> Decimal:
        return self.balance - self.reserved


class Card(Base):
    __tablename__ = "cards"

    id: Mapped[int] = mapped_column(primary_key=True)
    # The calling-card number printed on the card (an identifier like a user name, with a
    # Luhn check digit); the secret is the PIN, stored only as a salted scrypt hash.
    number: Mapped[str] = mapped_column(String(32), unique=True)
    pin_hash: Mapped[str] = mapped_column(String(255))
    status: Mapped[CardStatus] = mapped_column(_enum(CardStatus), default=CardStatus.ACTIVE)
    expires_on: Mapped[date | None] = mapped_column(Date, nullable=True)
    batch: Mapped[str] = mapped_column(String(64), default="")
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    # Only the control card may recharge the shared account (seed 002).
    is_control: Mapped[bool] = mapped_column(Boolean, default=False)
    # Caller ID registered for pinless log-in, E.164 digits.
    callerid: Mapped[str | None] = mapped_column(String(32), nullable=True, unique=True)
    failed_pins: Mapped[int] = mapped_column(Integer, default=0)
    # Consecutive wrong recharge codes typed with this card; they lock it like PINs.
    failed_codes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    account: Mapped[Account] = relationship(back_populates="cards")


class LedgerEntry(Base):
    """Append-only. The account's balance is the sum of its entries."""

    __tablename__ = "ledger_entries"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    kind: Mapped[EntryKind] = mapped_column(_enum(EntryKind))
    amount: Mapped[Decimal] = mapped_column(Money)  # + credit, - debit
    balance_after: Mapped[Decimal] = mapped_column(Money)
    # Idempotency key within a kind: Asterisk uniqueid for calls, payment id for top-ups.
    ref: Mapped[str | None] = mapped_column(String(128), nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)

    __table_args__ = (UniqueConstraint("kind", "ref", name="uq_ledger_entries_kind_ref"),)


class Reservation(Base):
    """Funds held for a live call, so that all calls together never spend more than
    the balance."""

    __tablename__ = "reservations"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    card_id: Mapped[int | None] = mapped_column(ForeignKey("cards.id"), nullable=True)
    plan_id: Mapped[int] = mapped_column(ForeignKey("rating_plans.id"))
    number: Mapped[str] = mapped_column(String(32))
    prefix: Mapped[str] = mapped_column(String(32))
    destination: Mapped[str] = mapped_column(String(128), default="")
    service: Mapped[str] = mapped_column(String(16), default="voice")
    seconds: Mapped[int] = mapped_column(Integer)  # granted
    amount: Mapped[Decimal] = mapped_column(Money)  # held: the cost of `seconds`
    status: Mapped[ReservationStatus] = mapped_column(
        _enum(ReservationStatus), default=ReservationStatus.ACTIVE, index=True
    )
    rated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    uniqueid: Mapped[str | None] = mapped_column(String(150), nullable=True)
    # A live call's key (``<channel uniqueid>-<attempt>``, ivr.live.calls.CallKey): the
    # idempotency key of its settlement, and the AstDB key under which Asterisk records
    # how the call ended, so a call that ends while the server is down is settled on
    # restart (ivr.live.recovery, through ivr.live.charging).
    call_key: Mapped[str | None] = mapped_column(String(150), nullable=True, unique=True)
    channel: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # The rates the call was authorized with, which it is charged by whatever deck is
    # imported meanwhile: the plan's rates_version then, and the deck rows that can rate
    # the number as compact JSON (ivr.rating.snapshot). None on older reservations.
    rates_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rate_snapshot: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The server that dialled the call: recovery touches only its own server's calls, or
    # those of a server whose lease ended (ivr.live.servers).
    server_id: Mapped[int | None] = mapped_column(ForeignKey("servers.id"), nullable=True)
    # When the call was answered, and the last time a server saw it up with Asterisk
    # alive (its heartbeat): an answered call lost with Asterisk is billed up to then.
    answered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                         nullable=True)
    alive_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Server(Base):
    """A run of ``ivr serve`` and its lease on the database: one runs at a time; a lease
    ends when its server stops, or its heartbeat stops (ivr.live.servers)."""

    __tablename__ = "servers"

    id: Mapped[int] = mapped_column(primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Cdr(Base):
    __tablename__ = "cdrs"

    id: Mapped[int] = mapped_column(primary_key=True)
    uniqueid: Mapped[str] = mapped_column(String(150), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    card_id: Mapped[int | None] = mapped_column(ForeignKey("cards.id"), nullable=True)
    reservation_id: Mapped[int | None] = mapped_column(ForeignKey("reservations.id"))
    caller: Mapped[str] = mapped_column(String(32), default="")
    destination: Mapped[str] = mapped_column(String(32))
    destination_name: Mapped[str] = mapped_column(String(128), default="")
    prefix: Mapped[str] = mapped_column(String(32), default="")
    plan: Mapped[str] = mapped_column(String(64))
    service: Mapped[str] = mapped_column(String(16), default="voice")
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    answered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    billable_seconds: Mapped[int] = mapped_column(Integer, default=0)
    cost: Mapped[Decimal] = mapped_column(Money, default=Decimal(0))
    currency: Mapped[str] = mapped_column(String(3))
    hangup_cause: Mapped[str] = mapped_column(String(32), default="")

    __table_args__ = (Index("ix_cdrs_started_at_id", "started_at", "id"),
                      Index("ix_cdrs_card_id_started_at", "card_id", "started_at", "id"))


class AuthFailure(Base):
    """A wrong PIN or card number, kept to slow guessing from one caller ID across cards."""

    __tablename__ = "auth_failures"

    id: Mapped[int] = mapped_column(primary_key=True)
    callerid: Mapped[str] = mapped_column(String(32))  # "anonymous" when withheld
    card_id: Mapped[int | None] = mapped_column(ForeignKey("cards.id"), nullable=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_auth_failures_callerid_at", "callerid", "at"),)


class VoucherStatus(enum.StrEnum):
    NEW = "new"
    REDEEMED = "redeemed"
    VOID = "void"


class Voucher(Base):
    """A recharge code. Only a keyed hash of it is stored (HMAC-SHA256, ivr.money.vouchers): the
    CSV written at generation is the one clear copy. Redeemed exactly once (a conditional
    UPDATE on status)."""

    __tablename__ = "vouchers"

    id: Mapped[int] = mapped_column(primary_key=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    last4: Mapped[str] = mapped_column(String(4))
    value: Mapped[Decimal] = mapped_column(Money)
    currency: Mapped[str] = mapped_column(String(3))
    batch: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[VoucherStatus] = mapped_column(_enum(VoucherStatus),
                                                  default=VoucherStatus.NEW)
    expires_on: Mapped[date | None] = mapped_column(Date, nullable=True)
    redeemed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    redeemed_by: Mapped[int | None] = mapped_column(ForeignKey("accounts.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PaymentMethod(Base):
    """A payment card linked to an account: the gateway's token and the last four digits,
    never the number itself."""

    __tablename__ = "payment_methods"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    token: Mapped[str] = mapped_column(String(128))
    last4: Mapped[str] = mapped_column(String(4))
    brand: Mapped[str] = mapped_column(String(16), default="")
    expiry: Mapped[str] = mapped_column(String(4))  # MMYY
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Payment(Base):
    """One attempt to take money for a top-up, approved or not. ``payment_id`` is ours and
    is also the top-up ledger entry's ref, so a payment is credited once."""

    __tablename__ = "payments"

    id: Mapped[int] = mapped_column(primary_key=True)
    payment_id: Mapped[str] = mapped_column(String(64), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    source: Mapped[str] = mapped_column(String(16))  # card, stored, auto
    amount: Mapped[Decimal] = mapped_column(Money)
    currency: Mapped[str] = mapped_column(String(3))
    # The same VARCHAR(16) the column was created with (migration 0004): no schema change.
    status: Mapped[PaymentStatus] = mapped_column(_enum(PaymentStatus))
    gateway_ref: Mapped[str] = mapped_column(String(128), default="")
    last4: Mapped[str] = mapped_column(String(4), default="")
    reason: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Operator(Base):
    """Someone allowed on the operator line (``ivr-operator``) to record voice prompts.

    Operators log in with a PIN alone (``ivr operators add NAME`` prints it once), so PINs
    are long and checked against every active operator's salted scrypt hash.
    """

    __tablename__ = "operators"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    pin_hash: Mapped[str] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class SipTrunk(Base):
    """A carrier's SIP trunk (``ivr sip trunks``): calls from its addresses land on the
    lines by called number; the one marked ``outbound`` takes the paid calls' outgoing
    legs. Its password, when it has one, is kept encrypted under the server's secret key
    (Asterisk needs it in clear to answer the carrier's challenge: it is decrypted only
    into the instance's pjsip config, mode 0600)."""

    __tablename__ = "sip_trunks"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40), unique=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer, default=5060)
    username: Mapped[str | None] = mapped_column(String(128), nullable=True)
    password_enc: Mapped[str | None] = mapped_column(Text, nullable=True)
    register: Mapped[bool] = mapped_column(Boolean, default=False)
    match: Mapped[str] = mapped_column(Text, default="")  # CIDRs, comma-separated
    outbound: Mapped[bool] = mapped_column(Boolean, default=False)
    prefix: Mapped[str] = mapped_column(String(16), default="")  # digits put before
    strip: Mapped[int] = mapped_column(Integer, default=0)  # digits taken off the front
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SipPhone(Base):
    """A softphone account (``ivr sip phones``): it registers with its name and password
    and reaches the IVR lines by short number, never a trunk. Only Asterisk's md5
    credential (MD5 of ``name:realm:password``) is kept."""

    __tablename__ = "sip_phones"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40), unique=True)
    md5_cred: Mapped[str] = mapped_column(String(32))
    callerid: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SipBlock(Base):
    """A source address refused by the SIP ACL until ``until`` (ivr.sipguard): it made
    too many failed attempts (``sip_block_failures`` within ``sip_block_window``). Every
    server on the database renders the live blocks into the Asterisk instance beside it;
    ``ivr sip blocks remove`` lifts one early."""

    __tablename__ = "sip_blocks"

    id: Mapped[int] = mapped_column(primary_key=True)
    address: Mapped[str] = mapped_column(String(45), unique=True)  # an IPv4 or IPv6 address
    reason: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    until: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Customer(Base):
    """A registered customer of the revalue line: known by their mobile number (E.164,
    with ``+``) and a first code (hashed like a card PIN). ``mode`` is how their operator
    account is recharged: ``code`` (a recharge code from the pool, read out and sent by
    SMS) or ``direct`` (through the operator's interface). ``pay`` is what pays for it:
    ``account`` (the money of our prepaid account ``account_id``) or ``saved-method``
    (the saved payment card of that account)."""

    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(primary_key=True)
    msisdn: Mapped[str] = mapped_column(String(16), unique=True)
    code_hash: Mapped[str] = mapped_column(String(200))
    mode: Mapped[str] = mapped_column(String(8), default="code")
    pay: Mapped[str] = mapped_column(String(16), default="account")
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    language: Mapped[str] = mapped_column(String(8), default="en")
    failures: Mapped[int] = mapped_column(Integer, default=0)  # wrong first codes in a row
    locked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PortedNumber(Base):
    """A number that moved to another operator than its range says (number portability):
    the local table the default operator lookup reads before phonenumbers' carrier data."""

    __tablename__ = "ported_numbers"

    msisdn: Mapped[str] = mapped_column(String(16), primary_key=True)
    operator: Mapped[str] = mapped_column(String(64))
    mccmnc: Mapped[str] = mapped_column(String(6), default="")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RechargeCode(Base):
    """One of an operator's recharge codes in the pool (``ivr codes import``). The code is
    read back to the customer who buys it, so it is kept encrypted (``code_enc``,
    authenticated encryption under a key derived from the server's secret key), with a
    keyed hash (``code_mac``) to refuse the same code twice; never in clear. Issued
    exactly once: ``status`` goes from ``available`` to ``issued`` (or ``void``)."""

    __tablename__ = "recharge_codes"
    __table_args__ = (Index("ix_recharge_codes_pool", "operator", "currency", "value", "status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    operator: Mapped[str] = mapped_column(String(64))
    value: Mapped[Decimal] = mapped_column(Money)
    currency: Mapped[str] = mapped_column(String(3))
    code_enc: Mapped[str] = mapped_column(Text)
    code_mac: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(10), default="available")
    imported_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    issued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"), nullable=True)


class RechargePool(Base):
    """One pool of recharge codes (an operator's codes of one value), made by the first
    import into it: what is remembered about the pool as a whole. ``low_stock_noticed_at``
    is set when the low-stock notice is claimed (an issue left the pool at or below
    ``code_low_stock``) and cleared by an import that lifts the pool above that level, so
    the notice goes out once per dip (ivr.revalue.codes)."""

    __tablename__ = "recharge_pools"

    operator: Mapped[str] = mapped_column(String(64), primary_key=True)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    value: Mapped[Decimal] = mapped_column(Money, primary_key=True)
    low_stock_noticed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                                  nullable=True)


class Revaluation(Base):
    """One mobile recharge bought on the revalue line (ivr.revalue.service): what was
    asked, how it is paid, and where it stands (``state``, one of
    ``ivr.revalue.service.State``; each change is a :class:`RevaluationEvent` written in
    the same transaction). ``request_id`` is ours and is the idempotency key sent to the
    operator, the ref of the revaluation's ledger entries and of its loyalty points.
    ``points`` are the loyalty points the recharge earns (granted when it is captured)."""

    __tablename__ = "revaluations"

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[str] = mapped_column(String(64), unique=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    msisdn: Mapped[str] = mapped_column(String(16))
    operator: Mapped[str] = mapped_column(String(64))
    mode: Mapped[str] = mapped_column(String(8))  # code, direct
    amount: Mapped[Decimal] = mapped_column(Money)
    currency: Mapped[str] = mapped_column(String(3))
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    pay: Mapped[str] = mapped_column(String(16))  # account, saved-method
    state: Mapped[str] = mapped_column(String(16), index=True)
    code_id: Mapped[int | None] = mapped_column(ForeignKey("recharge_codes.id"), nullable=True)
    operator_ref: Mapped[str] = mapped_column(String(128), default="")
    reason: Mapped[str] = mapped_column(String(200), default="")
    points: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RevaluationEvent(Base):
    """A revaluation's state history: one row per state change, append-only."""

    __tablename__ = "revaluation_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    revaluation_id: Mapped[int] = mapped_column(ForeignKey("revaluations.id"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    state: Mapped[str] = mapped_column(String(16))
    note: Mapped[str] = mapped_column(String(200), default="")


class LoyaltyEntry(Base):
    """Loyalty points of a revalue-line customer, append-only: ``points`` signed (earned
    by a recharge, taken back with its refund, spent by a redemption). ``ref`` is unique
    per ``kind`` (a recharge's request id; a redemption's own id), so each is written
    once."""

    __tablename__ = "loyalty_entries"
    __table_args__ = (UniqueConstraint("kind", "ref", name="uq_loyalty_entries_kind_ref"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    points: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # grant, reverse, redeem
    ref: Mapped[str] = mapped_column(String(128))
    note: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# --------------------------------------------------------------------------- web console


class WebUser(Base):
    """An operator's log-in to the web console (ivr.web.auth): ``role`` one of admin,
    support, viewer; the password only as an Argon2id hash."""

    __tablename__ = "web_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True),
                                                           nullable=True)


class WebSession(Base):
    """A logged-in browser: the cookie's token only as its SHA-256, and the session's
    CSRF token, which every form must send back."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("web_users.id"))
    csrf_token: Mapped[str] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(String(45))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class WebLoginFailure(Base):
    """A failed web log-in, kept to throttle guessing per address and per user name."""

    __tablename__ = "web_login_failures"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(String(45))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_web_login_failures_address_at", "address", "at"),
                      Index("ix_web_login_failures_name_at", "name", "at"))


class AuditEntry(Base):
    """One change made from the web console: who, from where, what, the reason typed.
    Append-only."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    user: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    address: Mapped[str] = mapped_column(String(45))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(128))
    detail: Mapped[str] = mapped_column(Text, default="")
    reason: Mapped[str] = mapped_column(Text, default="")


class WebDownload(Base):
    """A file the console offers once (a batch's PINs, a voucher batch's codes): the
    content encrypted under the server's key, deleted when downloaded or expired."""

    __tablename__ = "web_downloads"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("web_users.id"))
    filename: Mapped[str] = mapped_column(String(128))
    content: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CallEvent(Base):
    """One step of a call's story (ivr.live.trace): ``call_id`` is the caller channel's
    Asterisk uniqueid; ``kind`` names the step, ``detail`` is compact JSON. Kept for
    ``call_trace_days``."""

    __tablename__ = "call_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    call_id: Mapped[str] = mapped_column(String(150), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    kind: Mapped[str] = mapped_column(String(24))
    detail: Mapped[str] = mapped_column(Text, default="")
