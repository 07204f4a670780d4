"""Top-ups paid by payment card: validation, the gateway interface, a sandbox gateway, and
the payment service (a Payment row per attempt, a ledger credit per approval).

Card data. A typed card number and CVV live only in a :class:`CardDetails` for the length
of one charge: they are never stored, never logged, and ``repr()`` shows only the last four
digits. What is kept is the gateway's token and the last four (``PaymentMethod``), and per
attempt the ``Payment`` row (status, gateway reference, last four).

Money flow. A charge is done in three steps so that no database transaction is held open
while the gateway is working (which may take ``payment_timeout`` seconds):

1. a transaction inserts the ``Payment`` row as ``pending`` (or finds the earlier attempt
   with this ``payment_id``: an approved or declined payment is answered from the database
   without charging again);
2. the gateway is called, with ``payment_id`` as its idempotency key, so a retried
   payment is charged at most once;
3. a second transaction records the outcome and, on approval, credits the ledger with
   ``ref=payment_id`` (idempotent) and saves or refreshes the payment method.

A timeout leaves the row ``timeout`` and credits nothing. With a real processor a timed-out
charge may still have gone through, and a process that died mid-charge leaves its row
``pending``: :func:`reconcile` (run by ``ivr serve`` every ``payment_reconcile_interval``
seconds, and by ``ivr payments reconcile``) asks the gateway what became of each such
payment once it is ``payment_reconcile_after`` seconds old, credits the ones that were
charged (once: the ledger ref is the payment id) and closes the others, so a customer is
never charged for credit they did not get.

Plugging in a real processor: write a class with the three coroutines of
:class:`PaymentGateway` (tokenise-and-charge a card, charge a token, look up a charge by
payment id), map the processor's
answer to a :class:`ChargeResult`, pass ``payment_id`` as the processor's idempotency key,
raise :class:`GatewayTimeout` when it does not answer in time, and point the
``payment_gateway`` setting at a factory: ``payment_gateway = "mypsp.ivr:make_gateway"``,
where ``make_gateway(settings)`` returns the gateway.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol, overload

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .db import Database, lock_account
from .db.models import Account, EntryKind, Payment, PaymentMethod
from .db.types import to_micros
from .ledger import LedgerError, credit
from .notify import reset_notice_if_topped_up
from .secrets import luhn_valid

log = logging.getLogger("ivr.payments")

# Sandbox test card numbers (the usual test numbers of card processors).
SANDBOX_APPROVE = "4111111111111111"
SANDBOX_DECLINE = "4000000000000002"
SANDBOX_TIMEOUT = "4000000000000119"

# An auto-recharge still pending after this long is taken as abandoned (the process died
# mid-charge) and no longer stops another call's auto-recharge.
AUTO_PENDING_STALE = timedelta(minutes=5)
PAYMENT_ID_MAX = 64  # Payment.payment_id


# --------------------------------------------------------------------------- cards


class CardInvalid(ValueError):
    """A typed card was refused before any charge. ``reason`` is one of luhn, expiry (not
    a month), past (expired) or cvv; the message never contains the digits."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"card refused: {reason}")
        self.reason = reason


@dataclass(frozen=True, repr=False)
class CardDetails:
    """A card as typed by the caller, for one charge. Never stored nor logged."""

    number: str
    expiry: str  # MMYY
    cvv: str

    @property
    def last4(self) -> str:
        return self.number[-4:]

    @property
    def brand(self) -> str:
        return card_brand(self.number)

    def __repr__(self) -> str:
        return f"CardDetails(...{self.last4})"

    __str__ = __repr__

    def __reduce__(self) -> Any:  # no pickling (to a cache, a queue...) of card data
        raise TypeError("card details are not serialisable")


def card_brand(number: str) -> str:
    """The card network from the number's leading digits (for reading back and reports)."""
    if number.startswith("4"):
        return "visa"
    if number[:2] in {"34", "37"}:
        return "amex"
    if number[:2] in {"51", "52", "53", "54", "55"} or "2221" <= number[:4] <= "2720":
        return "mastercard"
    if number.startswith(("6011", "65")) or "644" <= number[:3] <= "649":
        return "discover"
    return "card"


def expiry_month(expiry_mmyy: str) -> date:
    """The first day of the MMYY month; CardInvalid("expiry") when it is not one."""
    if len(expiry_mmyy) != 4 or not expiry_mmyy.isdigit():
        raise CardInvalid("expiry")
    month, year = int(expiry_mmyy[:2]), 2000 + int(expiry_mmyy[2:])
    if not 1 <= month <= 12:
        raise CardInvalid("expiry")
    return date(year, month, 1)


def validate_card(number: str, expiry_mmyy: str, cvv: str, today: date) -> None:
    """Check a typed card: 12-19 digits passing Luhn, an MMYY expiry not before this month
    (a card is valid through the last day of its expiry month), a 3-digit CVV (4 for
    American Express). Raises CardInvalid(reason)."""
    if not (12 <= len(number) <= 19 and luhn_valid(number)):
        raise CardInvalid("luhn")
    if expiry_month(expiry_mmyy) < today.replace(day=1):
        raise CardInvalid("past")
    cvv_length = 4 if card_brand(number) == "amex" else 3
    if len(cvv) != cvv_length or not cvv.isdigit():
        raise CardInvalid("cvv")


# --------------------------------------------------------------------------- gateway


class ChargeStatus(enum.StrEnum):
    APPROVED = "approved"
    DECLINED = "declined"
    ERROR = "error"  # refused as malformed, or the processor failed: nothing charged


@dataclass(frozen=True)
class ChargeResult:
    status: ChargeStatus
    token: str = ""  # the card's token, to charge it again later ("" if none)
    last4: str = ""
    brand: str = ""
    gateway_ref: str = ""  # the processor's id for this charge
    reason: str = ""  # why it was declined or failed, for people


class GatewayTimeout(Exception):
    """The gateway did not answer in time. The charge may or may not have happened; retry
    with the same payment_id to find out."""


class PaymentGateway(Protocol):
    """A card processor. Both calls are idempotent per ``payment_id``: a repeated id
    returns the first result without charging again."""

    async def charge_card(
        self, card: CardDetails, amount: Decimal, currency: str, payment_id: str
    ) -> ChargeResult: ...

    async def charge_token(
        self, token: str, amount: Decimal, currency: str, payment_id: str
    ) -> ChargeResult: ...

    async def lookup(self, payment_id: str) -> ChargeResult | None:
        """What became of an earlier charge with this id; None when the processor has
        no record of it (nothing was charged). Used by :func:`reconcile`."""
        ...


@dataclass(frozen=True)
class _Tokenised:
    last4: str
    brand: str
    number_class: str  # approve, decline, timeout


class SandboxGateway:
    """A processor for tests and demonstrations; nothing is charged.

    Card numbers: 4111111111111111 is approved (with a valid, not past, expiry and a
    3-digit CVV), 4000000000000002 is declined, 4000000000000119 never answers (a
    GatewayTimeout after ``timeout`` seconds), any other number is declined. Tokens are
    ``"sbx_" + HMAC-SHA256(secret, number)[:24]``: the same card always gets the same
    token, so a token saved in the database stays chargeable by a new process with the
    same secret. Everything else (idempotency records) is kept in memory.
    """

    def __init__(self, secret: bytes, delay: float = 0.05, timeout: float = 10.0) -> None:
        if not secret:
            raise ValueError("the sandbox gateway needs a secret")
        self._secret = secret
        self.delay = delay
        self.timeout = timeout
        # payment_id -> (fingerprint of the request, result)
        self._results: dict[str, tuple[str, ChargeResult]] = {}
        self._tokens: dict[str, _Tokenised] = {}
        for number, kind in ((SANDBOX_APPROVE, "approve"), (SANDBOX_DECLINE, "decline"),
                             (SANDBOX_TIMEOUT, "timeout")):
            self._tokens[self.token_for(number)] = _Tokenised(number[-4:], card_brand(number),
                                                              kind)
        self.charges = 0  # charges actually processed (not answered from idempotency)

    def token_for(self, number: str) -> str:
        digest = hmac.new(self._secret, number.encode(), hashlib.sha256).hexdigest()
        return "sbx_" + digest[:24]

    def _fingerprint(self, *parts: str) -> str:
        return hmac.new(self._secret, "\x1f".join(parts).encode(), hashlib.sha256).hexdigest()

    def _ref(self, payment_id: str) -> str:
        return "sbxch_" + self._fingerprint("charge", payment_id)[:20]

    async def charge_card(
        self, card: CardDetails, amount: Decimal, currency: str, payment_id: str
    ) -> ChargeResult:
        fingerprint = self._fingerprint("card", card.number, str(amount), currency)
        return await self._idempotent(payment_id, fingerprint,
                                      lambda: self._card(card, payment_id))

    async def charge_token(
        self, token: str, amount: Decimal, currency: str, payment_id: str
    ) -> ChargeResult:
        fingerprint = self._fingerprint("token", token, str(amount), currency)
        return await self._idempotent(payment_id, fingerprint,
                                      lambda: self._token(token, payment_id))

    async def _idempotent(
        self, payment_id: str, fingerprint: str, process: Callable[[], Any]
    ) -> ChargeResult:
        if payment_id in self._results:
            return self._replay(payment_id, fingerprint)
        try:
            async with asyncio.timeout(self.timeout):
                result: ChargeResult = await process()
        except TimeoutError:
            raise GatewayTimeout(f"sandbox gateway: no answer in {self.timeout:g}s") from None
        if payment_id in self._results:  # a concurrent request with this id won
            return self._replay(payment_id, fingerprint)
        self.charges += 1
        self._results[payment_id] = (fingerprint, result)
        return result

    async def lookup(self, payment_id: str) -> ChargeResult | None:
        """The result of a charge this sandbox answered (its records live in memory, so
        a new process knows none of the earlier ones)."""
        recorded = self._results.get(payment_id)
        return None if recorded is None else recorded[1]

    def _replay(self, payment_id: str, fingerprint: str) -> ChargeResult:
        first_fingerprint, result = self._results[payment_id]
        if first_fingerprint != fingerprint:
            return ChargeResult(ChargeStatus.ERROR, reason="payment id reused for another charge")
        return result

    async def _card(self, card: CardDetails, payment_id: str) -> ChargeResult:
        await asyncio.sleep(self.delay)
        last4, brand = card.last4, card.brand
        if card.number == SANDBOX_TIMEOUT:
            await asyncio.Event().wait()  # never answers; the timeout ends it
        try:
            validate_card(card.number, card.expiry, card.cvv, datetime.now(UTC).date())
        except CardInvalid as exc:
            status = ChargeStatus.ERROR if exc.reason == "luhn" else ChargeStatus.DECLINED
            return ChargeResult(status, last4=last4, brand=brand, gateway_ref=self._ref(payment_id),
                                reason={"luhn": "invalid card number", "expiry": "invalid expiry",
                                        "past": "card expired", "cvv": "invalid cvv"}[exc.reason])
        if card.number != SANDBOX_APPROVE:
            reason = "card declined" if card.number == SANDBOX_DECLINE else "not a test card"
            return ChargeResult(ChargeStatus.DECLINED, last4=last4, brand=brand,
                                gateway_ref=self._ref(payment_id), reason=reason)
        return ChargeResult(ChargeStatus.APPROVED, token=self.token_for(card.number), last4=last4,
                            brand=brand, gateway_ref=self._ref(payment_id))

    async def _token(self, token: str, payment_id: str) -> ChargeResult:
        await asyncio.sleep(self.delay)
        known = self._tokens.get(token)
        if known is None or known.number_class == "decline":
            reason = "card declined" if known else "unknown token"
            return ChargeResult(ChargeStatus.DECLINED, last4=known.last4 if known else "",
                                brand=known.brand if known else "",
                                gateway_ref=self._ref(payment_id), reason=reason)
        if known.number_class == "timeout":
            await asyncio.Event().wait()
        return ChargeResult(ChargeStatus.APPROVED, token=token, last4=known.last4,
                            brand=known.brand, gateway_ref=self._ref(payment_id))


def gateway_from_settings(settings: Any) -> PaymentGateway:
    """The gateway the ``payment_gateway`` setting names: "sandbox", or
    "package.module:factory" (a callable taking the settings)."""
    from .config import ConfigError

    name = settings.payment_gateway.strip()
    if name == "sandbox":
        return SandboxGateway(settings.payment_sandbox_secret.encode(),
                              timeout=settings.payment_timeout)
    module_name, sep, attr = name.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"payment_gateway: {name!r} is neither 'sandbox' nor "
                          "'package.module:factory'")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"payment_gateway {name!r}: {exc}") from None
    return factory(settings)


def parse_topup_amounts(text: str) -> list[Decimal]:
    """The ``topup_amounts`` setting as amounts ("5,10,20" -> [5, 10, 20])."""
    from .config import ConfigError

    amounts: list[Decimal] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = Decimal(part)
            to_micros(value)
        except (ArithmeticError, ValueError):
            raise ConfigError(f"topup_amounts: {part!r} is not an amount") from None
        if value <= 0:
            raise ConfigError(f"topup_amounts: {part!r} is not a positive amount")
        amounts.append(value)
    if not amounts:
        raise ConfigError("topup_amounts: no amounts")
    return amounts


# --------------------------------------------------------------------------- service


class PaymentStatus(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DECLINED = "declined"
    TIMEOUT = "timeout"
    ERROR = "error"


class TopUpVerdict(enum.StrEnum):
    APPROVED = "approved"
    DECLINED = "declined"
    TIMEOUT = "timeout"
    ERROR = "error"
    NO_METHOD = "no_method"  # no payment method linked to the account


@dataclass(frozen=True)
class TopUpResult:
    verdict: TopUpVerdict
    amount: Decimal
    balance: Decimal  # the account's balance after (unchanged unless approved)
    last4: str
    payment_id: str
    duplicate: bool = False  # this payment_id had been credited before: nothing added now
    reason: str = ""


@dataclass(frozen=True)
class _Started:
    """Step 1's outcome: either a final answer, or what to charge."""

    done: TopUpResult | None = None
    currency: str = ""
    token: str = ""  # stored method's token (stored/auto payments)
    last4: str = ""


def _check_payment_id(payment_id: str) -> None:
    if not payment_id or len(payment_id) > PAYMENT_ID_MAX:
        raise ValueError(f"a payment id is 1 to {PAYMENT_ID_MAX} characters")


def _check_amount(amount: Decimal) -> None:
    if not isinstance(amount, Decimal):
        raise TypeError("amounts are Decimal, never float")
    to_micros(amount)
    if amount <= 0:
        raise LedgerError(f"a top-up must be a positive amount, not {amount}")


def _answer_existing(s: Session, payment: Payment, account_id: int, amount: Decimal
                     ) -> TopUpResult | None:
    """A final answer for a payment_id seen before, or None to (re)try the gateway."""
    if payment.account_id != account_id or payment.amount != amount:
        raise LedgerError(f"payment {payment.payment_id!r} was already used for another top-up")
    if payment.status in (PaymentStatus.APPROVED, PaymentStatus.DECLINED):
        account = s.get(Account, account_id)
        assert account is not None
        return TopUpResult(TopUpVerdict(payment.status), amount, account.balance, payment.last4,
                           payment.payment_id, duplicate=payment.status == PaymentStatus.APPROVED,
                           reason=payment.reason)
    return None  # pending, timeout, error: the gateway's idempotency makes a retry safe


def _start(db: Database, account_id: int, amount: Decimal, payment_id: str, source: str,
           last4: str, now: datetime) -> _Started:
    """Step 1: insert the pending Payment, or answer from an earlier attempt."""
    for attempt in range(2):
        try:
            with db.transaction() as s:
                account = s.get(Account, account_id)
                if account is None:
                    raise LookupError(f"no account {account_id}")
                token = ""
                payment = s.scalar(select(Payment).where(Payment.payment_id == payment_id))
                if payment is not None:
                    done = _answer_existing(s, payment, account_id, amount)
                    if done is not None:
                        return _Started(done=done)
                if source != "card":
                    method = active_method(s, account_id)
                    if method is None:
                        return _Started(done=TopUpResult(TopUpVerdict.NO_METHOD, amount,
                                                         account.balance, "", payment_id))
                    token, last4 = method.token, method.last4
                if payment is None:
                    s.add(Payment(payment_id=payment_id, account_id=account_id, source=source,
                                  amount=amount, currency=account.currency,
                                  status=PaymentStatus.PENDING.value, last4=last4,
                                  created_at=now))
                    s.flush()
                else:
                    payment.status = PaymentStatus.PENDING.value
                return _Started(currency=account.currency, token=token, last4=last4)
        except IntegrityError:
            if attempt:  # the row exists now; the second pass reads it
                raise
    raise AssertionError("unreachable")


@overload
def _finish(db: Database, payment_id: str, status: PaymentStatus, result: ChargeResult | None,
            *, save: bool, expiry: str, now: datetime) -> TopUpResult: ...


@overload
def _finish(db: Database, payment_id: str, status: PaymentStatus, result: ChargeResult | None,
            *, save: bool, expiry: str, now: datetime,
            only_if: tuple[str, ...]) -> TopUpResult | None: ...


def _finish(db: Database, payment_id: str, status: PaymentStatus, result: ChargeResult | None,
            *, save: bool, expiry: str, now: datetime,
            only_if: tuple[str, ...] | None = None) -> TopUpResult | None:
    """Step 3: record the outcome; on approval credit the ledger and keep the method.
    With ``only_if``: nothing (None) unless the payment's status is one of those (a
    concurrent attempt may have settled it meanwhile)."""
    with db.transaction() as s:
        account_id = s.scalar(select(Payment.account_id).where(Payment.payment_id == payment_id))
        if account_id is None:
            raise LookupError(f"no payment {payment_id!r}")
        account = lock_account(s, account_id)  # lock order: account, then payment
        payment = s.execute(select(Payment).where(Payment.payment_id == payment_id)
                            .with_for_update()
                            .execution_options(populate_existing=True)).scalar_one()
        if only_if is not None and payment.status not in only_if:
            return None
        if payment.status == PaymentStatus.APPROVED and status is not PaymentStatus.APPROVED:
            # A concurrent attempt with this id was approved: that stands.
            return TopUpResult(TopUpVerdict.APPROVED, payment.amount, account.balance,
                               payment.last4, payment_id, duplicate=True)
        payment.status = status.value
        if result is not None:
            payment.gateway_ref = result.gateway_ref[:128]
            payment.reason = result.reason[:128]
            payment.last4 = result.last4 or payment.last4
        elif status is PaymentStatus.TIMEOUT:
            payment.reason = "gateway timeout"
        duplicate = False
        if status is PaymentStatus.APPROVED:
            _, new = credit(s, account.id, payment.amount, EntryKind.TOPUP, ref=payment_id,
                            note=f"{payment.source} payment ...{payment.last4}", now=now)
            duplicate = not new
            if save and result is not None and result.token:
                _save_method(s, account.id, result, expiry, now)
            reset_notice_if_topped_up(s, account)
        return TopUpResult(TopUpVerdict(status.value), payment.amount, account.balance,
                           payment.last4, payment_id, duplicate=duplicate, reason=payment.reason)


def _save_method(s: Session, account_id: int, result: ChargeResult, expiry: str,
                 now: datetime) -> None:
    """Link the card to the account (its one active method), or refresh it."""
    methods = s.scalars(select(PaymentMethod).where(PaymentMethod.account_id == account_id)).all()
    current = next((m for m in methods if m.token == result.token), None)
    for m in methods:
        if m is not current:
            m.active = False
    if current is None:
        current = PaymentMethod(account_id=account_id, token=result.token, created_at=now)
        s.add(current)
    current.last4, current.brand, current.active = result.last4, result.brand[:16], True
    current.expiry = expiry or current.expiry or ""


def active_method(s: Session, account_id: int) -> PaymentMethod | None:
    """The payment method linked to the account (the newest active one)."""
    return s.scalar(select(PaymentMethod)
                    .where(PaymentMethod.account_id == account_id, PaymentMethod.active)
                    .order_by(PaymentMethod.id.desc()).limit(1))


async def _charge(db: Database, started: _Started, charge: Callable[[], Any], payment_id: str,
                  *, save: bool, expiry: str, now: datetime) -> TopUpResult:
    """Step 2 and 3: call the gateway (no transaction open), then record the outcome."""
    result: ChargeResult | None = None
    try:
        result = await charge()
        assert result is not None
        status = PaymentStatus(result.status.value if isinstance(result.status, ChargeStatus)
                               else str(result.status))
    except GatewayTimeout:
        status = PaymentStatus.TIMEOUT
    except asyncio.CancelledError:
        # The caller hung up mid-charge: the row stays pending; a retry with this
        # payment_id (or an operator) settles it.
        raise
    except Exception as exc:  # a broken gateway: nothing credited; its message may echo data
        log.error("payment %s: gateway failed (%s)", payment_id, type(exc).__name__)
        result = ChargeResult(ChargeStatus.ERROR, last4=started.last4,
                              reason=f"gateway failure ({type(exc).__name__})")
        status = PaymentStatus.ERROR
    if status is PaymentStatus.PENDING:
        status = PaymentStatus.ERROR
    outcome = await db.run(_finish, db, payment_id, status, result, save=save,
                                      expiry=expiry, now=now)
    log.info("payment %s: %s %s card ...%s%s%s", payment_id, outcome.verdict.value,
             outcome.amount, outcome.last4, f" ({outcome.reason})" if outcome.reason else "",
             " (already credited)" if outcome.duplicate else "")
    return outcome


async def pay_with_card(
    db: Database,
    gateway: PaymentGateway,
    account_id: int,
    card: CardDetails,
    amount: Decimal,
    *,
    payment_id: str,
    save: bool = True,
    now: datetime | None = None,
) -> TopUpResult:
    """Charge a typed card and credit the account. With ``save`` the card's token becomes
    the account's linked payment method. Idempotent per ``payment_id``."""
    _check_amount(amount)
    _check_payment_id(payment_id)
    now = now or datetime.now(UTC)
    started = await db.run(_start, db, account_id, amount, payment_id, "card",
                                      card.last4, now)
    if started.done is not None:
        return started.done
    return await _charge(
        db, started,
        lambda: gateway.charge_card(card, amount, started.currency, payment_id),
        payment_id, save=save, expiry=card.expiry, now=now)


async def pay_with_stored(
    db: Database,
    gateway: PaymentGateway,
    account_id: int,
    amount: Decimal,
    *,
    payment_id: str,
    now: datetime | None = None,
) -> TopUpResult:
    """Charge the account's linked payment method (NO_METHOD if it has none)."""
    return await _pay_stored(db, gateway, account_id, amount, payment_id, "stored",
                             now or datetime.now(UTC))


async def _pay_stored(db: Database, gateway: PaymentGateway, account_id: int, amount: Decimal,
                      payment_id: str, source: str, now: datetime) -> TopUpResult:
    _check_amount(amount)
    _check_payment_id(payment_id)
    started = await db.run(_start, db, account_id, amount, payment_id, source, "",
                                      now)
    if started.done is not None:
        return started.done
    return await _charge(
        db, started,
        lambda: gateway.charge_token(started.token, amount, started.currency, payment_id),
        payment_id, save=False, expiry="", now=now)


# --------------------------------------------------------------------------- auto-recharge


def auto_recharge_payment_id(call_key: str) -> str:
    """``auto:<call key>``; a key too long for the column is replaced by its digest."""
    payment_id = f"auto:{call_key}"
    if len(payment_id) > PAYMENT_ID_MAX:
        payment_id = "auto:" + hashlib.sha256(call_key.encode()).hexdigest()[:40]
    return payment_id


def _auto_due(db: Database, account_id: int, payment_id: str, now: datetime) -> Decimal | None:
    """The amount to auto-recharge now, or None. Runs with the account locked, so two calls
    on one account decide one after the other."""
    with db.transaction() as s:
        account = lock_account(s, account_id)
        threshold, amount = account.auto_recharge_threshold, account.auto_recharge_amount
        if threshold is None or amount is None or amount <= 0:
            return None
        if account.available >= threshold:
            return None
        if s.scalar(select(Payment.id).where(Payment.payment_id == payment_id)) is not None:
            return None  # this call already had its auto-recharge (whatever its outcome)
        if active_method(s, account_id) is None:
            return None
        day_start = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        auto = (Payment.account_id == account_id, Payment.source == "auto")
        # Another call's auto-recharge is in progress: its credit may lift the balance.
        if s.scalar(select(Payment.id).where(*auto, Payment.status == PaymentStatus.PENDING,
                                             Payment.created_at >= now - AUTO_PENDING_STALE)
                    .limit(1)) is not None:
            return None
        if account.auto_recharge_daily_cap is not None:
            rows = s.scalars(select(Payment.amount).where(
                *auto, Payment.created_at >= day_start,
                Payment.status.in_([PaymentStatus.APPROVED.value, PaymentStatus.PENDING.value])))
            spent = sum(rows, Decimal(0))
            if spent + amount > account.auto_recharge_daily_cap:
                log.info("auto-recharge of account %s skipped: daily cap %s reached",
                         account.number, account.auto_recharge_daily_cap)
                return None
        return amount


async def maybe_auto_recharge(
    db: Database,
    gateway: PaymentGateway,
    account_id: int,
    *,
    call_key: str,
    now: datetime | None = None,
) -> TopUpResult | None:
    """Charge the linked payment method if the account's auto-recharge is due: threshold
    and amount set, available balance below the threshold, a linked method, and the
    daily cap (per UTC day) not exceeded. At most once per ``call_key``. None when
    nothing was due."""
    now = now or datetime.now(UTC)
    payment_id = auto_recharge_payment_id(call_key)
    amount = await db.run(_auto_due, db, account_id, payment_id, now)
    if amount is None:
        return None
    return await _pay_stored(db, gateway, account_id, amount, payment_id, "auto", now)



# --------------------------------------------------------------------------- reconcile


UNRESOLVED = (PaymentStatus.PENDING.value, PaymentStatus.TIMEOUT.value)


async def reconcile(db: Database, gateway: PaymentGateway, *, older_than: timedelta,
                    now: datetime | None = None) -> list[TopUpResult]:
    """Settle payments left ``pending`` (the process died mid-charge) or ``timeout`` (the
    gateway did not answer in time) once they are ``older_than``: a charge the gateway
    approved is credited (idempotent per payment id), anything else is closed as declined
    with the reason. Returns what was decided, one result per payment."""
    now = now or datetime.now(UTC)

    def unresolved() -> list[str]:
        with db.transaction() as s:
            return list(s.scalars(select(Payment.payment_id).where(
                Payment.status.in_(UNRESOLVED), Payment.created_at <= now - older_than)
                .order_by(Payment.id)))

    decided: list[TopUpResult] = []
    for payment_id in await db.run(unresolved):
        result = await gateway.lookup(payment_id)
        if result is None:
            status = PaymentStatus.DECLINED
            result = ChargeResult(ChargeStatus.DECLINED,
                                  reason="not charged (no record at the gateway)")
        else:
            status = PaymentStatus(result.status.value)
            if status is PaymentStatus.ERROR:
                status = PaymentStatus.DECLINED
        outcome = await db.run(_finish, db, payment_id, status, result, save=False,
                                          expiry="", now=now, only_if=UNRESOLVED)
        if outcome is not None:
            log.info("payment %s reconciled: %s %s", payment_id, outcome.verdict.value,
                     outcome.amount)
            decided.append(outcome)
    return decided
