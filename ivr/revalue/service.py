"""Revaluations: the money and the record around each mobile recharge of the revalue line.

A revaluation is one ``revaluations`` row, its ``request_id`` (ours) the idempotency key
sent to the operator and the ref of its ledger entries and loyalty points. Every change
of its ``state`` writes a ``revaluation_events`` row in the same transaction::

    requested --> held --> issued                          (code mode: code issued, captured)
        |          |-----> completed --> reversed          (direct: captured; refunded)
        |          |-----> declined                        (released)
        |          |-----> created --> completed | declined | unknown
        |          |-----> unknown --> completed | declined | created
        |          '-----> refused                         (code mode: none left, released)
        '--> refused                                       (cannot pay: nothing held)

The money, each step one transaction with the account row locked, then the revaluation's:

- **hold** (``request``): ``reserved += amount`` when ``balance - reserved`` covers it,
  else REFUSED (``insufficient_funds``). Paid by ``saved-method``, the account's saved
  card is charged the amount first (ivr.payments' saved-method payment, which credits the
  account through ``ledger.credit``, ref the request id), then the amount is held; a
  declined card is REFUSED (``payment_declined``). The gateway has no refund: money
  charged to a card for a recharge that is then declined (or refused for lack of codes)
  stays on the customer's account, as credit for calls or the next recharge.
- **capture** (COMPLETED, or a code issued): one ledger entry of kind REVALUATION, the
  amount negative, and ``reserved -= amount``; loyalty points granted. Once: the state
  moves on in the same transaction, and (kind, ref) is unique in the ledger.
- **release** (DECLINED, none left): ``reserved -= amount``, no ledger entry.
- **refund** (REVERSED after a capture): ``ledger.credit`` of kind REFUND, ref the
  request id (idempotent), and the loyalty points taken back.
- **UNKNOWN / CREATED**: the hold stays until an answer settles it.

Every operation is idempotent: a repeated call, a duplicated or late callback, the
reconciler and the flow racing each other all end with one capture, or one release, and
one refund. An answer that cannot apply (DECLINED after COMPLETED, any answer from an
operator other than the revaluation's) changes nothing and is logged.

The functions the line calls take their dependencies (database, operator interface,
gateway, key) and return values: :func:`request`, :func:`fulfil_code`,
:func:`fulfil_direct`, :func:`apply_answer` (also the callbacks handler's, see
:func:`callback_handler`) and :func:`reconcile` (``ivr serve`` every
``revalue_reconcile_interval`` seconds, and ``ivr revaluations reconcile``).

The customer's SMS of the result: the line sends it for the recharge it made; a change a
callback or the reconciler makes later goes to their ``notify`` hook (only an outcome
with ``changed`` true: each change is made by one path), ivr.revalue.messages.
"""

from __future__ import annotations

import enum
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..db import Database, lock_account
from ..db.models import (
    Account,
    AccountStatus,
    Customer,
    EntryKind,
    LedgerEntry,
    Revaluation,
    RevaluationEvent,
)
from ..db.types import to_micros
from ..money.ledger import credit
from ..money.listing import newest_page
from ..payments.gateway import PaymentGateway
from . import codes as codes_
from . import loyalty
from .direct import DirectRecharge, RechargeAnswer, RechargeRequest, RechargeState

log = logging.getLogger("ivr.revalue.service")


class State(enum.StrEnum):
    REQUESTED = "requested"  # recorded; the saved card is being charged
    HELD = "held"  # the amount is held on the account
    CREATED = "created"  # the operator took the request; outcome to follow (held)
    UNKNOWN = "unknown"  # no usable answer yet (held)
    ISSUED = "issued"  # code mode: a code was issued; captured
    COMPLETED = "completed"  # direct: the operator recharged the number; captured
    DECLINED = "declined"  # the operator refused (or it was abandoned); released
    REVERSED = "reversed"  # a completed recharge taken back; refunded
    REFUSED = "refused"  # could not be paid, or no code left; nothing taken

    @property
    def holding(self) -> bool:
        """The amount is held on the account in this state."""
        return self in _HOLDING

    @property
    def final(self) -> bool:
        """Nothing more happens to it (a COMPLETED one may still be REVERSED)."""
        return self in (State.ISSUED, State.DECLINED, State.REVERSED, State.REFUSED)


_HOLDING = frozenset({State.HELD, State.CREATED, State.UNKNOWN})
UNSETTLED = (State.REQUESTED, State.HELD, State.CREATED, State.UNKNOWN)


class Reason(enum.StrEnum):
    """Why a revaluation was refused or declined by us (the flow speaks it: seed 003)."""

    INSUFFICIENT_FUNDS = "insufficient_funds"
    PAYMENT_DECLINED = "payment_declined"  # the saved card was declined (or timed out)
    NO_SAVED_METHOD = "no_saved_method"
    ACCOUNT_INACTIVE = "account_inactive"
    NONE_LEFT = "none_left"  # code mode: the pool of that value is empty
    ABANDONED = "abandoned"  # left unfinished (the process stopped): settled by reconcile


class Mode(enum.StrEnum):
    CODE = "code"
    DIRECT = "direct"


@dataclass(frozen=True)
class Outcome:
    """Where a revaluation stands after an operation. ``code`` is the recharge code in
    clear when this operation issued it (for the caller only: never log it); a repeat
    gives only ``code_id`` (``codes.reveal`` gives the code again to its customer).
    ``changed`` is False when the operation found the state already there (a repeat)."""

    revaluation_id: int
    request_id: str
    state: State
    amount: Decimal
    currency: str
    balance: Decimal  # the account's balance after
    available: Decimal  # balance less what is held
    reason: str = ""
    points: int = 0  # loyalty points earned (granted once captured)
    code_id: int | None = None
    changed: bool = True
    code: str = field(default="", repr=False)
    notice: codes_.LowStock | None = None  # a low-stock notice to send (code mode)
    msisdn: str = field(default="", repr=False)  # the number recharged (its SMS goes there)
    operator: str = ""


Notify = Callable[[Outcome], Awaitable[None]]
"""A later settlement's hook (ivr.revalue.messages.sms_notifier: the customer's SMS)."""


class RevaluationError(ValueError):
    """A revaluation that cannot be made as asked (unknown customer, bad amount...)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_request_id() -> str:
    return f"rv-{secrets.token_hex(10)}"


# --------------------------------------------------------------------------- internals


def _event(s: Session, rev: Revaluation, state: State, note: str, now: datetime) -> None:
    rev.state = state.value
    rev.updated_at = now
    s.add(RevaluationEvent(revaluation_id=rev.id, at=now, state=state.value, note=note[:200]))


def _outcome(rev: Revaluation, account: Account, changed: bool = True, code: str = "",
             notice: codes_.LowStock | None = None) -> Outcome:
    return Outcome(rev.id, rev.request_id, State(rev.state), rev.amount, rev.currency,
                   account.balance, account.balance - account.reserved, rev.reason,
                   rev.points, rev.code_id, changed, code, notice, rev.msisdn, rev.operator)


def _locked(s: Session, *, request_id: str | None = None,
            revaluation_id: int | None = None) -> tuple[Revaluation, Account] | None:
    """The revaluation and its account, locked (account first, as the ledger does)."""
    where = (Revaluation.request_id == request_id if request_id is not None
             else Revaluation.id == revaluation_id)
    account_id = s.scalar(select(Revaluation.account_id).where(where))
    if account_id is None:
        return None
    account = lock_account(s, account_id)
    rev = s.execute(select(Revaluation).where(where).with_for_update()
                    .execution_options(populate_existing=True)).scalar_one()
    return rev, account


def _hold(s: Session, rev: Revaluation, account: Account, now: datetime) -> None:
    """REQUESTED -> HELD, or REFUSED when the account cannot pay."""
    if account.status is not AccountStatus.ACTIVE:
        _refuse(s, rev, account, Reason.ACCOUNT_INACTIVE, now)
    elif account.balance - account.reserved < rev.amount:
        _refuse(s, rev, account, Reason.INSUFFICIENT_FUNDS, now)
    else:
        account.reserved += rev.amount
        _event(s, rev, State.HELD, f"{rev.amount} held", now)


def _refuse(s: Session, rev: Revaluation, account: Account, reason: Reason,
            now: datetime) -> None:
    if State(rev.state).holding:
        _release(rev, account)
    rev.reason = reason.value
    _event(s, rev, State.REFUSED, reason.value, now)


def _release(rev: Revaluation, account: Account) -> None:
    account.reserved -= rev.amount


def _capture(s: Session, rev: Revaluation, account: Account, state: State, note: str,
             now: datetime) -> None:
    """Take the held amount (one REVALUATION entry), grant the points, move to ``state``."""
    account.reserved -= rev.amount
    account.balance -= rev.amount
    s.add(LedgerEntry(account_id=account.id, kind=EntryKind.REVALUATION, amount=-rev.amount,
                      balance_after=account.balance, ref=rev.request_id,
                      note=f"recharge {rev.operator} ...{rev.msisdn[-4:]}", created_at=now))
    if rev.points > 0:
        loyalty.add_entry(s, rev.customer_id, rev.points, loyalty.GRANT, rev.request_id,
                          f"recharge of {rev.amount} {rev.currency}", now)
    _event(s, rev, state, note, now)


def _refund(s: Session, rev: Revaluation, account: Account, note: str, now: datetime) -> None:
    credit(s, account.id, rev.amount, EntryKind.REFUND, ref=rev.request_id,
           note=f"reversed recharge {rev.operator} ...{rev.msisdn[-4:]}", now=now)
    if rev.points > 0:
        loyalty.add_entry(s, rev.customer_id, -rev.points, loyalty.REVERSE, rev.request_id,
                          "recharge reversed", now)
    _event(s, rev, State.REVERSED, note, now)


# --------------------------------------------------------------------------- request


def _create(db: Database, customer_id: int, amount: Decimal, operator: str,
            mode: Mode | None, request_id: str, points: int, now: datetime
            ) -> tuple[Outcome, str, bool]:
    """Record the revaluation (or find it, by ``request_id``): (outcome, pay, new). Paid
    from the account, it is held (or refused) in the same transaction."""
    with db.transaction() as s:
        customer = s.get(Customer, customer_id)
        if customer is None:
            raise RevaluationError(f"no customer {customer_id}")
        account = lock_account(s, customer.account_id)
        rev = s.execute(select(Revaluation).where(Revaluation.request_id == request_id)
                        .with_for_update()).scalar_one_or_none()
        if rev is not None:
            if (rev.customer_id, rev.amount, rev.operator) != (customer_id, amount, operator):
                raise RevaluationError(f"request {request_id} was made for another recharge")
            return _outcome(rev, account, changed=False), rev.pay, False
        rev = Revaluation(
            request_id=request_id, customer_id=customer_id, msisdn=customer.msisdn,
            operator=operator, mode=(mode or Mode(customer.mode)).value, amount=amount,
            currency=account.currency, account_id=account.id, pay=customer.pay,
            state=State.REQUESTED.value, operator_ref="", reason="", points=points,
            created_at=now, updated_at=now)
        s.add(rev)
        s.flush()
        _event(s, rev, State.REQUESTED, f"{amount} {account.currency} by {customer.pay}", now)
        if customer.pay != "saved-method":
            _hold(s, rev, account, now)
        return _outcome(rev, account), rev.pay, True


def _after_payment(db: Database, request_id: str, paid: bool, reason: Reason | None,
                   note: str, now: datetime) -> Outcome:
    with db.transaction() as s:
        found = _locked(s, request_id=request_id)
        assert found is not None
        rev, account = found
        if State(rev.state) is not State.REQUESTED:
            return _outcome(rev, account, changed=False)
        if paid:
            _hold(s, rev, account, now)
        else:
            assert reason is not None
            rev.reason = reason.value
            _event(s, rev, State.REFUSED, note or reason.value, now)
        return _outcome(rev, account)


async def request(
    db: Database,
    *,
    customer_id: int,
    amount: Decimal,
    operator: str,
    gateway: PaymentGateway | None = None,
    mode: Mode | str | None = None,
    request_id: str | None = None,
    rates: loyalty.LoyaltyRates | None = None,
    now: datetime | None = None,
) -> Outcome:
    """Record a recharge of ``amount`` (the customer's account's currency) for the
    customer's number with ``operator``, and hold the amount: HELD, or REFUSED with the
    ``reason`` (a :class:`Reason`). ``mode``: the customer's unless given. Paid by
    ``saved-method`` the card is charged through ``gateway`` first. ``rates``: the
    loyalty points it earns. Idempotent per ``request_id`` (made when not given)."""
    if not isinstance(amount, Decimal):
        raise TypeError("amounts are Decimal, never float")
    to_micros(amount)
    if amount <= 0:
        raise RevaluationError(f"a recharge must be a positive amount, not {amount}")
    operator = operator.strip()
    if not operator or len(operator) > 64:
        raise RevaluationError("operator: 1 to 64 characters")
    mode_ = Mode(mode) if mode is not None else None
    request_id = request_id or new_request_id()
    now = now or utcnow()
    points = rates.points(amount, operator) if rates is not None else 0
    outcome, pay, new = await db.run(_create, db, customer_id, amount, operator, mode_,
                                     request_id, points, now)
    if outcome.state is not State.REQUESTED:
        if new:
            log.info("revaluation %s: %s%s", request_id, outcome.state,
                     f" ({outcome.reason})" if outcome.reason else "")
        return outcome
    # Paid by the saved card: charged first (idempotent per payment id = request id).
    if gateway is None:
        raise RevaluationError("a saved-method revaluation needs the payment gateway")
    from ..payments.service import TopUpVerdict, charge_method

    account_id = await db.run(_account_of, db, request_id)
    paid = await charge_method(db, gateway, account_id, amount, request_id, "revalue", now)
    if paid.verdict is TopUpVerdict.APPROVED:
        outcome = await db.run(_after_payment, db, request_id, True, None, "", now)
    else:
        reason = (Reason.NO_SAVED_METHOD if paid.verdict is TopUpVerdict.NO_METHOD
                  else Reason.PAYMENT_DECLINED)
        note = f"{reason.value}: {paid.verdict.value}" + (f" ({paid.reason})"
                                                           if paid.reason else "")
        outcome = await db.run(_after_payment, db, request_id, False, reason, note, now)
    log.info("revaluation %s: %s%s", request_id, outcome.state,
             f" ({outcome.reason})" if outcome.reason else "")
    return outcome


def _account_of(db: Database, request_id: str) -> int:
    with db.reading() as s:
        account_id = s.scalar(select(Revaluation.account_id)
                              .where(Revaluation.request_id == request_id))
    assert account_id is not None
    return account_id


# --------------------------------------------------------------------------- code mode


def _fulfil_code(db: Database, request_id: str, key: bytes, low_stock: int,
                 now: datetime) -> Outcome:
    keys = codes_.CodeKeys.derive(key)
    with db.transaction() as s:
        found = _locked(s, request_id=request_id)
        if found is None:
            raise RevaluationError(f"no revaluation {request_id}")
        rev, account = found
        if rev.mode != Mode.CODE or State(rev.state) is not State.HELD:
            return _outcome(rev, account, changed=False)
        pool = codes_.Pool.of(rev.operator, rev.amount, rev.currency)
        issued = codes_.issue_in(s, pool, keys, rev.customer_id, low_stock, now)
        if issued is codes_.NONE_LEFT:
            _refuse(s, rev, account, Reason.NONE_LEFT, now)
            return _outcome(rev, account)
        rev.code_id = issued.code_id
        _capture(s, rev, account, State.ISSUED, f"code #{issued.code_id} issued", now)
        return _outcome(rev, account, code=issued.code, notice=issued.notice)


async def fulfil_code(db: Database, request_id: str, *, key: bytes,
                      low_stock: int = codes_.DEFAULT_LOW_STOCK,
                      now: datetime | None = None) -> Outcome:
    """Code mode: issue a code of the recharge's value from the operator's pool and
    capture the amount, in one transaction (ISSUED, with ``code`` and maybe a low-stock
    ``notice`` to send), or release it when none is left (REFUSED, ``none_left``).
    A revaluation not HELD is answered as it stands (``changed`` False)."""
    outcome = await db.run(_fulfil_code, db, request_id, key, low_stock, now or utcnow())
    if outcome.changed:
        log.info("revaluation %s: %s%s", request_id, outcome.state,
                 f" ({outcome.reason})" if outcome.reason else "")
    return outcome


# --------------------------------------------------------------------------- direct mode


def _recharge_request(db: Database, request_id: str) -> tuple[RechargeRequest | None, Outcome]:
    with db.transaction() as s:
        found = _locked(s, request_id=request_id)
        if found is None:
            raise RevaluationError(f"no revaluation {request_id}")
        rev, account = found
        outcome = _outcome(rev, account, changed=False)
        if rev.mode != Mode.DIRECT or State(rev.state) is not State.HELD:
            return None, outcome
        return RechargeRequest(rev.request_id, rev.msisdn, rev.operator, rev.amount,
                               rev.currency), outcome


async def fulfil_direct(db: Database, api: DirectRecharge, request_id: str, *,
                        now: datetime | None = None) -> Outcome:
    """Direct mode: ask the operator (``api``) to recharge, and apply its answer:
    COMPLETED (captured), DECLINED (released), CREATED or UNKNOWN (still held: a
    callback or the reconciler settles it). A revaluation not HELD is answered as it
    stands; the request id makes a repeat at the operator harmless."""
    req, outcome = await db.run(_recharge_request, db, request_id)
    if req is None:
        return outcome
    answer = await api.recharge(req)
    applied = await apply_answer(db, answer, now=now)
    assert applied is not None
    return applied


# --------------------------------------------------------------------------- answers


def settle(db: Database, answer: RechargeAnswer, now: datetime | None = None
           ) -> Outcome | None:
    """Apply an operator's answer to its revaluation, once (see the module); None when
    no revaluation has that request id."""
    now = now or utcnow()
    with db.transaction() as s:
        found = _locked(s, request_id=answer.request_id)
        if found is None:
            log.warning("answer from %s for unknown request %s ignored",
                        answer.operator or "?", answer.request_id)
            return None
        rev, account = found
        if answer.operator and answer.operator.casefold() != rev.operator.casefold():
            log.warning("answer from %s for request %s of %s ignored", answer.operator,
                        rev.request_id, rev.operator)
            return _outcome(rev, account, changed=False)
        if rev.mode != Mode.DIRECT:
            log.warning("operator answer for code-mode request %s ignored", rev.request_id)
            return _outcome(rev, account, changed=False)
        changed = _apply(s, rev, account, answer, now)
        return _outcome(rev, account, changed=changed)


def _apply(s: Session, rev: Revaluation, account: Account, answer: RechargeAnswer,
           now: datetime) -> bool:
    state, target = State(rev.state), answer.state
    if answer.operator_ref and not rev.operator_ref:
        rev.operator_ref = answer.operator_ref[:128]
    reason = answer.reason[:200]
    if state is State.REQUESTED or state is State.REFUSED:
        log.warning("answer %s for request %s, which was never sent (%s): ignored",
                    target.name, rev.request_id, state)
        return False
    if target is RechargeState.UNKNOWN:
        if state is not State.HELD:
            return False  # CREATED says more than UNKNOWN; a settled one stays settled
        rev.reason = reason
        _event(s, rev, State.UNKNOWN, reason or "no answer", now)
        return True
    if target is RechargeState.CREATED:
        if state not in (State.HELD, State.UNKNOWN):
            return False
        _event(s, rev, State.CREATED, "accepted by the operator", now)
        return True
    if target is RechargeState.DECLINED:
        if state.holding:
            _release(rev, account)
            rev.reason = reason
            _event(s, rev, State.DECLINED, reason or "declined by the operator", now)
            return True
        if state in (State.COMPLETED, State.REVERSED):
            log.error("request %s: DECLINED after %s refused (the capture stands)",
                      rev.request_id, state)
        return False
    if target is RechargeState.COMPLETED:
        if state.holding:
            _capture(s, rev, account, State.COMPLETED, "recharged by the operator", now)
            return True
        if state is State.DECLINED:
            log.error("request %s: COMPLETED after DECLINED (money released): check it "
                      "with %s", rev.request_id, rev.operator)
        return False
    # REVERSED
    if state.holding:  # the COMPLETED was never heard: capture, then refund
        _capture(s, rev, account, State.COMPLETED, "recharged by the operator", now)
        state = State.COMPLETED
    if state is State.COMPLETED:
        _refund(s, rev, account, reason or "reversed by the operator", now)
        return True
    if state is State.DECLINED:
        log.error("request %s: REVERSED after DECLINED ignored", rev.request_id)
    return False


async def apply_answer(db: Database, answer: RechargeAnswer, *,
                       now: datetime | None = None) -> Outcome | None:
    """:func:`settle` from async code (the flow, the callbacks endpoint, the reconciler)."""
    outcome = await db.run(settle, db, answer, now)
    if outcome is not None and outcome.changed:
        log.info("revaluation %s: %s%s", outcome.request_id, outcome.state,
                 f" ({outcome.reason})" if outcome.reason else "")
    return outcome


async def _tell(notify: Notify | None, outcome: Outcome | None) -> None:
    """Hand a settlement this path made (``changed``) to ``notify``; the hook failing
    never undoes or repeats the settlement (logged)."""
    if notify is None or outcome is None or not outcome.changed:
        return
    try:
        await notify(outcome)
    except Exception:
        log.exception("revaluation %s: notifying %s failed", outcome.request_id,
                      outcome.state)


def callback_handler(db: Database, *, notify: Notify | None = None
                     ) -> Callable[[RechargeAnswer], Awaitable[None]]:
    """The ``on_answer`` of the callbacks endpoint (ivr.revalue.callbacks). ``notify``:
    called with each change the callback made (a duplicate changes nothing)."""

    async def on_answer(answer: RechargeAnswer) -> None:
        await _tell(notify, await apply_answer(db, answer))

    return on_answer


# --------------------------------------------------------------------------- reconcile


@dataclass(frozen=True)
class _Due:
    request_id: str
    operator: str
    mode: str
    state: State


def _due(db: Database, before: datetime) -> list[_Due]:
    with db.reading() as s:
        rows = s.execute(select(Revaluation.request_id, Revaluation.operator,
                                Revaluation.mode, Revaluation.state)
                         .where(Revaluation.state.in_([st.value for st in UNSETTLED]),
                                Revaluation.updated_at <= before)
                         .order_by(Revaluation.id)).all()
    return [_Due(r, o, m, State(st)) for r, o, m, st in rows]


def _abandon(db: Database, request_id: str, now: datetime) -> Outcome:
    """A revaluation the line never finished (code mode HELD, or REQUESTED): released
    (DECLINED) or refused, reason ``abandoned``."""
    with db.transaction() as s:
        found = _locked(s, request_id=request_id)
        assert found is not None
        rev, account = found
        state = State(rev.state)
        if state is State.REQUESTED:
            rev.reason = Reason.ABANDONED.value
            _event(s, rev, State.REFUSED, "abandoned before it was paid", now)
        elif state is State.HELD and rev.mode == Mode.CODE:
            _release(rev, account)
            rev.reason = Reason.ABANDONED.value
            _event(s, rev, State.DECLINED, "abandoned before a code was issued", now)
        else:
            return _outcome(rev, account, changed=False)
        return _outcome(rev, account)


async def reconcile(db: Database, apis: Mapping[str, DirectRecharge], *,
                    older_than: timedelta, now: datetime | None = None,
                    notify: Notify | None = None) -> list[Outcome]:
    """Settle the revaluations left unsettled for ``older_than``: direct ones (HELD,
    CREATED, UNKNOWN) from their operator's ``status`` (``apis`` by operator name,
    ignoring case); the line's unfinished ones (REQUESTED, or code mode HELD) are
    abandoned. ``notify``: called with each change made here. Returns what changed."""
    now = now or utcnow()
    by_key = {name.casefold(): api for name, api in apis.items()}
    decided: list[Outcome] = []
    for due in await db.run(_due, db, now - older_than):
        if due.state is State.REQUESTED or due.mode == Mode.CODE:
            outcome: Outcome | None = await db.run(_abandon, db, due.request_id, now)
        else:
            api = by_key.get(due.operator.casefold())
            if api is None:
                log.warning("revaluation %s: operator %s is not configured "
                            "(revalue_operators): left %s", due.request_id, due.operator,
                            due.state)
                continue
            answer = await api.status(due.request_id)
            outcome = await apply_answer(db, answer, now=now)
        if outcome is not None and outcome.changed:
            log.info("revaluation %s reconciled: %s", due.request_id, outcome.state)
            decided.append(outcome)
            await _tell(notify, outcome)
    return decided


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class EventInfo:
    at: datetime
    state: str
    note: str


@dataclass(frozen=True)
class RevaluationInfo:
    """A revaluation as shown (never a code: only its id)."""

    id: int
    request_id: str
    customer_id: int
    msisdn: str
    operator: str
    mode: str
    amount: Decimal
    currency: str
    account: str  # the account's number
    pay: str
    state: str
    code_id: int | None
    operator_ref: str
    reason: str
    points: int
    created_at: datetime
    updated_at: datetime
    events: list[EventInfo] = field(default_factory=list)


def _info(s: Session, rev: Revaluation, events: bool) -> RevaluationInfo:
    number = s.scalar(select(Account.number).where(Account.id == rev.account_id)) or ""
    history = []
    if events:
        history = [EventInfo(_aware(e.at), e.state, e.note) for e in s.scalars(
            select(RevaluationEvent).where(RevaluationEvent.revaluation_id == rev.id)
            .order_by(RevaluationEvent.id))]
    return RevaluationInfo(rev.id, rev.request_id, rev.customer_id, rev.msisdn,
                           rev.operator, rev.mode, rev.amount, rev.currency, number, rev.pay,
                           rev.state, rev.code_id, rev.operator_ref, rev.reason, rev.points,
                           _aware(rev.created_at), _aware(rev.updated_at), history)


def list_revaluations(db: Database, *, state: str | None = None, customer_id: int | None = None,
                      limit: int = 100, account: str | None = None,
                      start: datetime | None = None, end: datetime | None = None,
                      before: int | None = None) -> list[RevaluationInfo]:
    """The newest first (keyset pages: ``before`` an id): in ``state``, of a customer, of
    ``account`` (its number; LookupError if none), made in [``start``, ``end``)."""
    if state is not None:
        State(state)  # ValueError for an unknown state
    with db.reading() as s:
        query = newest_page(
            s, select(Revaluation), id_column=Revaluation.id,
            created_column=Revaluation.created_at, account_column=Revaluation.account_id,
            account=account, start=start, end=end, before=before, limit=limit)
        if state is not None:
            query = query.where(Revaluation.state == state)
        if customer_id is not None:
            query = query.where(Revaluation.customer_id == customer_id)
        return [_info(s, r, False) for r in s.scalars(query)]


def get_revaluation(db: Database, ref: str) -> RevaluationInfo:
    """By id (digits) or request id, with its events; LookupError if none."""
    with db.reading() as s:
        rev = s.scalar(select(Revaluation).where(Revaluation.request_id == ref))
        if rev is None and ref.isascii() and ref.isdigit():
            rev = s.get(Revaluation, int(ref))
        if rev is None:
            raise LookupError(f"no revaluation {ref!r}")
        return _info(s, rev, True)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
