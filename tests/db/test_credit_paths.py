"""Every way money comes into an account re-arms the low-balance notice, on SQLite and on a
real PostgreSQL.

A notice goes out once per dip below the account's level (ivr.money.notify); the next one is
due only after a credit has lifted the available balance back to the level. Each way in
(a typed card, the saved payment method, an auto-recharge during a call, a recharge code,
an operator's credit or adjustment from the command line) goes through
``ivr.money.ledger.credit``, whose after-credit rules do the re-arming: these tests hold every
one of them to it, and hold a credit that leaves the balance below the level to leaving
the notice as sent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from ivr import payments
from ivr.db import Database
from ivr.db.models import Account, PaymentMethod
from ivr.money.accounts import create_account
from ivr.money.notify import check_low_balance
from ivr.money.vouchers import RedeemVerdict, generate, redeem
from ivr.testing.access import balance_of, create_test_plan

LEVEL = Decimal("5")  # the account's low_balance_notice
START = Decimal("1")  # its balance: below the level, so a notice was sent
EXPIRY = "1230"
KEY = b"credit-paths-key"


class Outbox:
    """A notice channel that keeps what it was given (a Sender, ivr.money.notify)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    async def send(self, to: str, subject: str, body: str) -> None:
        self.sent.append((to, subject))


@pytest.fixture
def plan(db: Database) -> Database:
    create_test_plan(db)  # "retail", USD
    return db


@pytest.fixture
def gw() -> payments.SandboxGateway:
    return payments.SandboxGateway(b"credit-paths", delay=0, timeout=5)


@pytest.fixture
def cli(plan: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ivr_cli):
    """``ivr ARGS`` in process, on the test's database."""
    monkeypatch.setenv("IVR_DATABASE_URL", plan.url)
    monkeypatch.setenv("IVR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    return ivr_cli


async def notified_account(db: Database) -> int:
    """An account below its notice level that was sent the notice (by the real notice
    code, so the test starts from the state a live system is in)."""
    with db.transaction() as s:
        account = create_account(s, "retail", balance=START)
        account.low_balance_notice = LEVEL
        account.email = "holder@example.test"
        account_id = account.id
    outbox = Outbox()
    assert await check_low_balance(db, account_id, email=outbox, sms=None)
    assert outbox.sent and notified_at(db, account_id) is not None
    return account_id


def notified_at(db: Database, account_id: int) -> datetime | None:
    with db.transaction() as s:
        account = s.get(Account, account_id)
        assert account is not None
        return account.low_balance_notified_at


def account_number(db: Database, account_id: int) -> str:
    with db.transaction() as s:
        account = s.get(Account, account_id)
        assert account is not None
        return account.number


def link_card(db: Database, gw: payments.SandboxGateway, account_id: int) -> None:
    """The account's saved payment method: the sandbox's approved test card."""
    with db.transaction() as s:
        s.add(PaymentMethod(account_id=account_id, token=gw.token_for(payments.SANDBOX_APPROVE),
                            last4="1111", brand="visa", expiry=EXPIRY, active=True,
                            created_at=datetime.now(UTC)))


# --------------------------------------------------------------------------- the ways in
# Each credits ``amount`` to the account, the way a caller or an operator does.

Way = Callable[..., Awaitable[None]]


async def by_card(db: Database, account_id: int, amount: Decimal, *,
                  gw: payments.SandboxGateway, **_: object) -> None:
    card = payments.CardDetails(payments.SANDBOX_APPROVE, EXPIRY, "123")
    result = await payments.pay_with_card(db, gw, account_id, card, amount,
                                          payment_id="card-1")
    assert result.verdict is payments.TopUpVerdict.APPROVED


async def by_saved_method(db: Database, account_id: int, amount: Decimal, *,
                          gw: payments.SandboxGateway, **_: object) -> None:
    link_card(db, gw, account_id)
    result = await payments.pay_with_stored(db, gw, account_id, amount, payment_id="saved-1")
    assert result.verdict is payments.TopUpVerdict.APPROVED


async def by_auto_recharge(db: Database, account_id: int, amount: Decimal, *,
                           gw: payments.SandboxGateway, **_: object) -> None:
    link_card(db, gw, account_id)
    with db.transaction() as s:
        account = s.get(Account, account_id)
        assert account is not None
        account.auto_recharge_threshold = Decimal("20")  # the balance is below it
        account.auto_recharge_amount = amount
    assert await payments.recharge(db, gw, account_id=account_id, call_key="call-1/1",
                                   uniqueid="1700000000.1")


async def by_recharge_code(db: Database, account_id: int, amount: Decimal, *,
                           tmp_path: Path, **_: object) -> None:
    [voucher] = generate(db, 1, amount, "USD", tmp_path / "codes.csv", key=KEY)
    result = redeem(db, voucher.code, account_id=account_id, key=KEY)
    assert result.verdict is RedeemVerdict.OK


async def by_operator_credit(db: Database, account_id: int, amount: Decimal, *,
                             cli: Callable[..., str], **_: object) -> None:
    cli("accounts", "credit", account_number(db, account_id), str(amount), "--ref", "op-1")


async def by_operator_adjustment(db: Database, account_id: int, amount: Decimal, *,
                                 cli: Callable[..., str], **_: object) -> None:
    cli("accounts", "credit", account_number(db, account_id), str(amount), "--kind",
        "adjustment", "--note", "goodwill")


WAYS: dict[str, Way] = {
    "card": by_card,
    "saved_method": by_saved_method,
    "auto_recharge": by_auto_recharge,
    "recharge_code": by_recharge_code,
    "operator_credit": by_operator_credit,
    "operator_adjustment": by_operator_adjustment,
}


async def credit_by(way: str, request: pytest.FixtureRequest, db: Database, account_id: int,
                    amount: Decimal) -> None:
    """Credit ``amount`` the ``way`` named, and check the money arrived."""
    before = balance_of(db, account_id)
    extras = {"gw": request.getfixturevalue("gw"), "tmp_path": request.getfixturevalue("tmp_path")}
    if way.startswith("operator"):
        extras["cli"] = request.getfixturevalue("cli")
    await WAYS[way](db, account_id, amount, **extras)
    assert balance_of(db, account_id) == before + amount


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("way", list(WAYS))
async def test_a_credit_back_to_the_level_rearms_the_notice(way: str, plan: Database,
                                                           request: pytest.FixtureRequest):
    account = await notified_account(plan)
    await credit_by(way, request, plan, account, Decimal("10"))  # 1 + 10 >= 5
    assert notified_at(plan, account) is None
    # Re-armed means the next dip below the level sends the notice again.
    with plan.transaction() as s:
        s.get(Account, account).low_balance_notice = Decimal("100")
    outbox = Outbox()
    assert await check_low_balance(plan, account, email=outbox, sms=None)
    assert len(outbox.sent) == 1


@pytest.mark.parametrize("way", list(WAYS))
async def test_a_credit_that_leaves_the_balance_below_the_level_does_not(
    way: str, plan: Database, request: pytest.FixtureRequest
):
    account = await notified_account(plan)
    sent = notified_at(plan, account)
    await credit_by(way, request, plan, account, Decimal("2"))  # 1 + 2 < 5
    assert notified_at(plan, account) == sent
    assert not await check_low_balance(plan, account, email=Outbox(), sms=None)


async def test_exactly_the_level_counts_as_back(plan: Database, gw: payments.SandboxGateway):
    account = await notified_account(plan)
    card = payments.CardDetails(payments.SANDBOX_APPROVE, EXPIRY, "123")
    await payments.pay_with_card(plan, gw, account, card, LEVEL - START, payment_id="c-1")
    assert balance_of(plan, account) == LEVEL
    assert notified_at(plan, account) is None


async def test_a_declined_auto_recharge_credits_nothing_and_keeps_the_notice(
    plan: Database, gw: payments.SandboxGateway
):
    account = await notified_account(plan)
    sent = notified_at(plan, account)
    with plan.transaction() as s:
        s.add(PaymentMethod(account_id=account, token=gw.token_for(payments.SANDBOX_DECLINE),
                            last4="0002", brand="visa", expiry=EXPIRY, active=True,
                            created_at=datetime.now(UTC)))
        a = s.get(Account, account)
        a.auto_recharge_threshold, a.auto_recharge_amount = Decimal("20"), Decimal("10")
    assert not await payments.recharge(plan, gw, account_id=account, call_key="call-9/1")
    assert balance_of(plan, account) == START
    assert notified_at(plan, account) == sent
    # Once per call: the same call does not try again.
    assert not await payments.recharge(plan, gw, account_id=account, call_key="call-9/1")
    assert gw.charges == 1
