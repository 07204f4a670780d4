"""Logging in on the access line (ivr.login) on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from ivr import login
from ivr.db import Database
from ivr.db.models import Account, AccountStatus, AuthFailure, Card, CardStatus
from ivr.login import ANONYMOUS, Cardholder, LoginPolicy, Verdict
from ivr.money.accounts import issue_cards
from ivr.money.ledger import Grant, Ledger
from ivr.secrets import pin_check
from ivr.testing.access import PLAN, CardInHand, create_test_plan, new_card

NOW = datetime(2026, 11, 18, 12, 0, tzinfo=UTC)
CALLER = "12125551234"
POLICY = LoginPolicy(pin_max_failures=3, callerid_max_failures=4, callerid_failure_window=600)


@pytest.fixture
def plan(db: Database) -> Database:
    create_test_plan(db)
    return db


def wrong(card: CardInHand) -> str:
    return "9" * len(card.pin) if card.pin != "9" * len(card.pin) else "1" * len(card.pin)


def set_card(db: Database, card: CardInHand, **values: object) -> None:
    with db.transaction() as s:
        row = s.get(Card, card.card_id)
        assert row is not None
        for name, value in values.items():
            setattr(row, name, value)


def card_row(db: Database, card: CardInHand) -> tuple[CardStatus, int]:
    with db.transaction() as s:
        row = s.get(Card, card.card_id)
        assert row is not None
        return row.status, row.failed_pins


def failures(db: Database) -> list[tuple[str, int | None]]:
    with db.transaction() as s:
        return [(f.callerid, f.card_id)
                for f in s.scalars(select(AuthFailure).order_by(AuthFailure.id))]


# --------------------------------------------------------------------------- pinless


def test_pinless_by_registered_callerid(plan: Database):
    card = new_card(plan, Decimal("5.00"), callerid=CALLER)
    new_card(plan, Decimal("1.00"), callerid="12125550000")  # someone else's
    result = login.pinless(plan, CALLER)
    assert result is not None
    assert (result.verdict, result.card_id) == (Verdict.OK, card.card_id)
    assert result.holder is not None
    assert result.holder.card_id == card.card_id
    assert result.holder.last4 == card.number[-4:]
    assert (result.holder.available, result.holder.currency) == (Decimal("5.00"), "USD")
    with plan.transaction() as s:
        account = s.scalar(select(Account).where(Account.number == card.account))
        assert account is not None and result.holder.account_id == account.id
    assert failures(plan) == []


@pytest.mark.parametrize("callerid", [None, "", "13105550000"])
def test_pinless_unknown_callerid_is_none(plan: Database, callerid: str | None):
    new_card(plan, Decimal("5.00"), callerid=CALLER)
    new_card(plan, Decimal("5.00"))  # no caller ID registered
    assert login.pinless(plan, callerid) is None
    assert failures(plan) == []  # not a failed log-in: the caller is asked for a card


def test_pinless_card_that_cannot_call(plan: Database):
    card = new_card(plan, Decimal("5.00"), callerid=CALLER)
    set_card(plan, card, status=CardStatus.LOCKED)
    result = login.pinless(plan, CALLER)
    assert result is not None
    assert (result.verdict, result.card_id, result.holder) == (Verdict.LOCKED, card.card_id, None)
    set_card(plan, card, status=CardStatus.ACTIVE, expires_on=date(2026, 11, 17))
    result = login.pinless(plan, CALLER, today=NOW)
    assert result is not None and result.verdict is Verdict.EXPIRED


def test_pinless_empty_card_comes_with_its_holder(plan: Database):
    card = new_card(plan, Decimal("0"), callerid=CALLER)
    result = login.pinless(plan, CALLER)
    assert result is not None and result.verdict is Verdict.EMPTY
    assert result.holder is not None and result.holder.available == 0
    assert result.holder.card_id == card.card_id


# --------------------------------------------------------------------------- card number and PIN


def test_log_in_with_the_right_pin(plan: Database):
    card = new_card(plan, Decimal("5.00"))
    result = login.log_in(plan, card.number, card.pin, CALLER, POLICY, now=NOW)
    assert (result.verdict, result.card_id) == (Verdict.OK, card.card_id)
    assert result.holder is not None and result.holder.available == Decimal("5.00")
    assert failures(plan) == []


def test_unknown_card_number_is_a_failure_of_the_callerid(plan: Database):
    card = new_card(plan, Decimal("5.00"))
    other = card.number[:-1] + str((int(card.number[-1]) + 1) % 10)
    result = login.log_in(plan, other, card.pin, CALLER, POLICY, now=NOW)
    assert (result.verdict, result.card_id, result.holder) == (Verdict.UNKNOWN_CARD, None, None)
    assert login.log_in(plan, "", "1234", None, POLICY, now=NOW).verdict is Verdict.UNKNOWN_CARD
    assert failures(plan) == [(CALLER, None), (ANONYMOUS, None)]
    assert card_row(plan, card) == (CardStatus.ACTIVE, 0)  # no card was guessed at


def test_an_unknown_card_number_costs_a_pin_check_like_a_real_one(plan: Database, monkeypatch):
    """The PIN typed after an unknown number is checked against a hash of the same cost
    as a card's, so the answer takes as long as a wrong PIN's."""
    card = new_card(plan, Decimal("5.00"))
    checked: list[str] = []

    def recording(pin: str, stored: str) -> bool:
        checked.append(stored)
        return pin_check(pin, stored)

    monkeypatch.setattr(login, "pin_check", recording)
    unknown = login.log_in(plan, "000000000000", wrong(card), CALLER, POLICY, now=NOW)
    known = login.log_in(plan, card.number, wrong(card), CALLER, POLICY, now=NOW)
    assert (unknown.verdict, known.verdict) == (Verdict.UNKNOWN_CARD, Verdict.WRONG_PIN)
    decoy, real = checked
    assert decoy.split("$")[:4] == real.split("$")[:4]  # scheme, N, r, p
    assert decoy != real


@pytest.mark.parametrize(
    ("values", "verdict"),
    [
        ({"status": CardStatus.LOCKED}, Verdict.LOCKED),
        ({"status": CardStatus.BLOCKED}, Verdict.LOCKED),
        ({"status": CardStatus.EXPIRED}, Verdict.EXPIRED),
        ({"expires_on": date(2026, 11, 17)}, Verdict.EXPIRED),  # yesterday
    ],
)
def test_a_cards_state_is_told_only_after_its_right_pin(plan: Database, values: dict,
                                                         verdict: Verdict):
    card = new_card(plan, Decimal("5.00"))
    set_card(plan, card, **values)
    # A wrong PIN is a wrong PIN, counted against the card and the caller ID.
    result = login.log_in(plan, card.number, wrong(card), CALLER, POLICY, now=NOW)
    assert (result.verdict, result.holder) == (Verdict.WRONG_PIN, None)
    assert failures(plan) == [(CALLER, card.card_id)]
    assert card_row(plan, card)[1] == 1
    # The right one tells why the card cannot call, and counts nothing.
    result = login.log_in(plan, card.number, card.pin, CALLER, POLICY, now=NOW)
    assert (result.verdict, result.card_id, result.holder) == (verdict, card.card_id, None)
    assert card_row(plan, card)[1] == 1 and len(failures(plan)) == 1


def test_the_wrong_pin_that_locks_the_card_is_a_wrong_pin(plan: Database):
    card = new_card(plan, Decimal("5.00"))
    verdicts = [login.log_in(plan, card.number, wrong(card), CALLER, POLICY, now=NOW).verdict
                for _ in range(POLICY.pin_max_failures + 1)]
    assert verdicts == [Verdict.WRONG_PIN] * (POLICY.pin_max_failures + 1)
    assert card_row(plan, card) == (CardStatus.LOCKED, POLICY.pin_max_failures + 1)
    result = login.log_in(plan, card.number, card.pin, CALLER, POLICY, now=NOW)
    assert (result.verdict, result.holder) == (Verdict.LOCKED, None)
    assert card_row(plan, card)[0] is CardStatus.LOCKED


@pytest.mark.parametrize("status", [AccountStatus.SUSPENDED, AccountStatus.CLOSED])
def test_card_of_an_inactive_account_is_locked(plan: Database, status: AccountStatus):
    card = new_card(plan, Decimal("5.00"), callerid=CALLER)
    with plan.transaction() as s:
        account = s.scalar(select(Account).where(Account.number == card.account))
        assert account is not None
        account.status = status
    result = login.log_in(plan, card.number, card.pin, CALLER, POLICY, now=NOW)
    assert result.verdict is Verdict.LOCKED
    pinless = login.pinless(plan, CALLER)
    assert pinless is not None and pinless.verdict is Verdict.LOCKED


# --------------------------------------------------------------------------- PIN


def test_right_pin(plan: Database):
    card = new_card(plan, Decimal("5.00"))
    result = login.verify_pin(plan, card.card_id, card.pin, CALLER, POLICY, now=NOW)
    assert (result.verdict, result.card_id) == (Verdict.OK, card.card_id)
    assert isinstance(result.holder, Cardholder)
    assert result.holder.available == Decimal("5.00")
    assert failures(plan) == []


def test_consecutive_wrong_pins_lock_the_card(plan: Database):
    card = new_card(plan, Decimal("5.00"))
    verdicts = [login.verify_pin(plan, card.card_id, wrong(card), CALLER, POLICY, now=NOW).verdict
                for _ in range(POLICY.pin_max_failures)]
    assert verdicts == [Verdict.WRONG_PIN, Verdict.WRONG_PIN, Verdict.LOCKED]
    assert card_row(plan, card) == (CardStatus.LOCKED, 3)
    # Locked: even the right PIN is refused, and no more failures are counted.
    result = login.verify_pin(plan, card.card_id, card.pin, CALLER, POLICY, now=NOW)
    assert (result.verdict, result.holder) == (Verdict.LOCKED, None)
    assert failures(plan) == [(CALLER, card.card_id)] * 3
    assert card_row(plan, card) == (CardStatus.LOCKED, 3)


def test_a_right_pin_resets_the_count(plan: Database):
    card = new_card(plan, Decimal("5.00"))

    def attempt(pin: str) -> Verdict:
        return login.verify_pin(plan, card.card_id, pin, CALLER, POLICY, now=NOW).verdict

    assert [attempt(wrong(card)), attempt(wrong(card))] == [Verdict.WRONG_PIN] * 2
    assert card_row(plan, card) == (CardStatus.ACTIVE, 2)
    assert attempt(card.pin) is Verdict.OK
    assert card_row(plan, card) == (CardStatus.ACTIVE, 0)
    assert [attempt(wrong(card)), attempt(wrong(card))] == [Verdict.WRONG_PIN] * 2
    assert card_row(plan, card) == (CardStatus.ACTIVE, 2)
    assert attempt(wrong(card)) is Verdict.LOCKED
    # The caller ID's count is not reset by a right PIN.
    assert len(failures(plan)) == 5


def test_an_issued_cards_pin_failures_lock_it(plan: Database, tmp_path):
    """A card as `ivr cards issue` makes it, logged in with its number and PIN: a wrong
    PIN counts, the right one resets the count, consecutive wrong ones lock it; the PIN
    is kept only as its hash."""
    (card,) = issue_cards(plan, PLAN, 1, Decimal("1"), tmp_path / "c.csv")
    bad = "0000" if card.pin != "0000" else "1111"

    def attempt(pin: str) -> Verdict:
        return login.log_in(plan, card.number, pin, CALLER, POLICY, now=NOW).verdict

    def state() -> tuple[CardStatus, int, str]:
        with plan.transaction() as s:
            row = s.scalar(select(Card).where(Card.number == card.number))
            assert row is not None
            return row.status, row.failed_pins, row.pin_hash

    assert attempt(bad) is Verdict.WRONG_PIN
    assert state()[:2] == (CardStatus.ACTIVE, 1)
    assert attempt(card.pin) is Verdict.OK  # a success resets the count
    assert state()[:2] == (CardStatus.ACTIVE, 0)
    for _ in range(POLICY.pin_max_failures):
        assert attempt(bad) is Verdict.WRONG_PIN
    status, failed, pin_hash = state()
    assert (status, failed) == (CardStatus.LOCKED, POLICY.pin_max_failures)
    assert card.pin not in pin_hash


def test_wrong_pins_on_two_cards_count_per_card(plan: Database):
    a, b = new_card(plan, Decimal("1")), new_card(plan, Decimal("1"))
    for card in (a, b, a, b):
        login.verify_pin(plan, card.card_id, wrong(card), "13105550000", POLICY, now=NOW)
    assert card_row(plan, a) == card_row(plan, b) == (CardStatus.ACTIVE, 2)


def test_concurrent_wrong_pins_lock_after_exactly_max_failures(plan: Database, monkeypatch):
    """24 wrong PINs at once: the count is taken under the card's row lock, so exactly
    pin_max_failures - 1 of them are told WRONG_PIN and the rest LOCKED (on PostgreSQL a
    read-then-write count lost updates and let up to 7 of 5 through)."""
    policy = LoginPolicy(pin_max_failures=5, callerid_max_failures=1000)
    card = new_card(plan, Decimal("5.00"))
    attempts = 24
    # All attempts have checked their hash (outside any lock) before any counts it, the
    # worst case for the count; a check under a lock would time out here instead.
    barrier = threading.Barrier(attempts, timeout=60)

    def checked_together(pin: str, stored: str) -> bool:
        ok = pin_check(pin, stored)
        barrier.wait()
        return ok

    monkeypatch.setattr(login, "pin_check", checked_together)

    def attempt(i: int) -> Verdict:
        return login.verify_pin(plan, card.card_id, wrong(card), f"1212555{i:04d}", policy,
                                now=NOW).verdict

    with ThreadPoolExecutor(max_workers=attempts) as pool:
        verdicts = list(pool.map(attempt, range(attempts)))
    assert verdicts.count(Verdict.WRONG_PIN) == policy.pin_max_failures - 1
    assert verdicts.count(Verdict.LOCKED) == attempts - policy.pin_max_failures + 1
    assert card_row(plan, card) == (CardStatus.LOCKED, policy.pin_max_failures)
    # Only the counted PINs are failures of their caller IDs.
    assert len(failures(plan)) == policy.pin_max_failures
    result = login.verify_pin(plan, card.card_id, card.pin, CALLER, policy, now=NOW)
    assert (result.verdict, result.holder) == (Verdict.LOCKED, None)


def test_a_right_pin_checked_while_the_card_was_locked_stays_locked(plan: Database,
                                                                     monkeypatch):
    """The right PIN's hash is checked on an active card; meanwhile wrong PINs on another
    call lock it. The late right PIN neither unlocks the card nor logs in."""
    card = new_card(plan, Decimal("5.00"))

    def meanwhile(pin: str, stored: str) -> bool:
        if pin == card.pin:
            for _ in range(POLICY.pin_max_failures):
                login.verify_pin(plan, card.card_id, wrong(card), "13105550000", POLICY,
                                 now=NOW)
        return pin_check(pin, stored)

    monkeypatch.setattr(login, "pin_check", meanwhile)
    result = login.verify_pin(plan, card.card_id, card.pin, CALLER, POLICY, now=NOW)
    assert (result.verdict, result.holder) == (Verdict.LOCKED, None)
    assert card_row(plan, card) == (CardStatus.LOCKED, POLICY.pin_max_failures)


def test_verify_pin_of_no_card(plan: Database):
    result = login.verify_pin(plan, 999_999, "1234", CALLER, POLICY, now=NOW)
    assert result.verdict is Verdict.UNKNOWN_CARD


@pytest.mark.parametrize(
    ("values", "verdict"),
    [
        ({"status": CardStatus.LOCKED}, Verdict.LOCKED),
        ({"status": CardStatus.BLOCKED}, Verdict.LOCKED),
        ({"status": CardStatus.EXPIRED}, Verdict.EXPIRED),
        ({"expires_on": date(2026, 11, 17)}, Verdict.EXPIRED),  # yesterday
    ],
)
def test_verify_pin_of_a_card_that_cannot_call(plan: Database, values: dict, verdict: Verdict):
    """A logged-in caller's card (confirming a payment) is told its state at once."""
    card = new_card(plan, Decimal("5.00"))
    set_card(plan, card, **values)
    result = login.verify_pin(plan, card.card_id, card.pin, CALLER, POLICY, now=NOW)
    assert (result.verdict, result.card_id, result.holder) == (verdict, card.card_id, None)
    # A wrong PIN on such a card is not even checked.
    login.verify_pin(plan, card.card_id, wrong(card), CALLER, POLICY, now=NOW)
    assert card_row(plan, card)[1] == 0
    assert failures(plan) == []


def test_card_expiring_today_still_works(plan: Database):
    card = new_card(plan, Decimal("5.00"))
    set_card(plan, card, expires_on=NOW.date())
    result = login.verify_pin(plan, card.card_id, card.pin, CALLER, POLICY, now=NOW)
    assert result.verdict is Verdict.OK


def test_empty_balance_logs_in_as_empty_with_holder(plan: Database):
    card = new_card(plan, Decimal("0"))
    result = login.verify_pin(plan, card.card_id, card.pin, CALLER, POLICY, now=NOW)
    assert (result.verdict, result.card_id) == (Verdict.EMPTY, card.card_id)
    assert result.holder is not None
    assert (result.holder.available, result.holder.currency) == (Decimal("0"), "USD")


def test_balance_held_by_live_calls_is_not_available(plan: Database):
    card = new_card(plan, Decimal("0.05"))
    other = new_card(plan, Decimal("0"), account=card.account)  # the same account
    grant = Ledger(plan).authorize("12125550000", card_id=card.card_id, call_key="k-1")
    assert isinstance(grant, Grant) and grant.amount == Decimal("0.05")  # 5 s at 0.01/s
    result = login.verify_pin(plan, other.card_id, other.pin, CALLER, POLICY, now=NOW)
    assert result.verdict is Verdict.EMPTY
    assert result.holder is not None and result.holder.available == 0
    Ledger(plan).release(grant.reservation_id)
    assert login.holder(plan, other.card_id).available == Decimal("0.05")


# --------------------------------------------------------------------------- throttling


def test_throttled_after_failures_on_different_cards_within_the_window(plan: Database):
    a, b = new_card(plan, Decimal("1")), new_card(plan, Decimal("1"))
    t = NOW
    login.verify_pin(plan, a.card_id, wrong(a), CALLER, POLICY, now=t)
    login.verify_pin(plan, b.card_id, wrong(b), CALLER, POLICY, now=t + timedelta(seconds=10))
    login.log_in(plan, "000000000000", "1234", CALLER, POLICY, now=t + timedelta(seconds=20))
    assert not login.throttled(plan, CALLER, POLICY, now=t + timedelta(seconds=30))
    login.verify_pin(plan, a.card_id, wrong(a), CALLER, POLICY, now=t + timedelta(seconds=40))
    assert len(failures(plan)) == POLICY.callerid_max_failures
    assert card_row(plan, a) == (CardStatus.ACTIVE, 2)  # no card was locked on the way
    assert login.throttled(plan, CALLER, POLICY, now=t + timedelta(seconds=41))
    # Until the window has passed since the failures: the oldest drops out first.
    window = timedelta(seconds=POLICY.callerid_failure_window)
    assert login.throttled(plan, CALLER, POLICY, now=t + window - timedelta(seconds=1))
    assert not login.throttled(plan, CALLER, POLICY, now=t + window + timedelta(seconds=1))
    assert not login.throttled(plan, CALLER, POLICY,
                               now=t + window + timedelta(seconds=41))
    # Other caller IDs, and withheld ones, are not affected.
    assert not login.throttled(plan, "13105550000", POLICY, now=t + timedelta(seconds=41))
    assert not login.throttled(plan, None, POLICY, now=t + timedelta(seconds=41))


def test_anonymous_callers_share_one_bucket(plan: Database):
    card = new_card(plan, Decimal("1"))
    login.log_in(plan, "000000000001", "1234", None, POLICY, now=NOW)
    login.log_in(plan, "000000000002", "1234", "", POLICY, now=NOW)
    login.verify_pin(plan, card.card_id, wrong(card), None, POLICY, now=NOW)
    assert not login.throttled(plan, None, POLICY, now=NOW)
    login.verify_pin(plan, card.card_id, wrong(card), "", POLICY, now=NOW)  # LOCKED now
    assert failures(plan) == [(ANONYMOUS, None), (ANONYMOUS, None),
                              (ANONYMOUS, card.card_id), (ANONYMOUS, card.card_id)]
    assert login.throttled(plan, None, POLICY, now=NOW + timedelta(seconds=1))
    assert login.throttled(plan, "", POLICY, now=NOW + timedelta(seconds=1))
    assert not login.throttled(plan, CALLER, POLICY, now=NOW + timedelta(seconds=1))


def test_no_failures_is_not_throttled(plan: Database):
    assert not login.throttled(plan, CALLER, POLICY)
    assert not login.throttled(plan, None, POLICY)


def test_forget_failures(plan: Database):
    for i in range(3):
        login.log_in(plan, "000000000000", "1234", CALLER, POLICY,
                     now=NOW - timedelta(hours=i))
    assert login.forget_failures(plan, NOW - timedelta(minutes=30)) == 2
    assert login.forget_failures(plan, NOW - timedelta(minutes=30)) == 0
    with plan.transaction() as s:
        assert s.scalar(select(func.count()).select_from(AuthFailure)) == 1


def test_policy_from_settings():
    from ivr.config import Settings

    policy = LoginPolicy.from_settings(Settings(pin_max_failures=2, callerid_max_failures=7,
                                                callerid_failure_window=60))
    assert policy == LoginPolicy(2, 7, 60)


# --------------------------------------------------------------------------- holder


def test_holder_after_a_call(plan: Database):
    card = new_card(plan, Decimal("1.00"))
    ledger = Ledger(plan)
    grant = ledger.authorize("12125550000", card_id=card.card_id, call_key="k-2")
    assert isinstance(grant, Grant)
    ledger.settle(grant.reservation_id, 30, uniqueid="k-2")
    info = login.holder(plan, card.card_id)
    assert info.available == Decimal("0.70") and info.last4 == card.number[-4:]
    with pytest.raises(LookupError):
        login.holder(plan, 999_999)


# --------------------------------------------------------------------------- a call's start


def test_arrival_is_pinless_and_throttled_in_one_read(plan: Database):
    """The access line's first database step: a registered caller ID's card, else whether
    that caller ID is throttled; the same answers as pinless() and throttled()."""
    card = new_card(plan, Decimal("5.00"), callerid=CALLER)
    stranger = "13105550000"
    arrived = login.arrival(plan, CALLER, POLICY, now=NOW)
    assert arrived.pinless == login.pinless(plan, CALLER, today=NOW)
    assert arrived.pinless is not None and arrived.pinless.card_id == card.card_id
    assert not arrived.throttled
    assert login.arrival(plan, stranger, POLICY, now=NOW) == login.Arrival(None, False)
    assert login.arrival(plan, None, POLICY, now=NOW) == login.Arrival(None, False)
    for n in range(POLICY.callerid_max_failures):
        login.log_in(plan, f"00000000000{n}", "1234", stranger, POLICY, now=NOW)
    later = NOW + timedelta(seconds=1)
    assert login.arrival(plan, stranger, POLICY, now=later) == login.Arrival(None, True)
    assert login.throttled(plan, stranger, POLICY, now=later)
    # A registered card logs in without a PIN: failures from its number do not stop it.
    for n in range(POLICY.callerid_max_failures):
        login.log_in(plan, f"00000000001{n}", "1234", CALLER, POLICY, now=NOW)
    arrived = login.arrival(plan, CALLER, POLICY, now=later)
    assert arrived.pinless is not None and arrived.pinless.verdict is Verdict.OK
    assert not arrived.throttled
