"""Test helpers for the access line: a rated plan, cards, and a caller that logs in.

Used by the real-Asterisk tests and the call-setup benchmark. Nothing here is a fake: the
cards, plans and ledger are the product's own, in whatever database the settings name.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from sqlalchemy import select

from ..agi import AgiServer
from ..app import App
from ..config import Settings
from ..db import Database
from ..db.models import Account, Card, Cdr, LedgerEntry, Reservation, ReservationStatus
from ..live.calls import CallController
from ..money.accounts import create_account, issue_cards
from ..money.ledger import Ledger, ledger_sum
from ..money.rates_store import create_plan, import_rows
from ..rating import RateRow
from .phone import Call, SeenCommand

PLAN = "retail"
# Per-second billing at 0.60/min to the US (1) and 1.20/min to the UK (44), so a call of
# n seconds costs exactly n cents or 2n cents.
TEST_RATES = (
    ("1", "USA", "0.60"),
    ("44", "United Kingdom", "1.20"),
    ("19999", "Test busy", "0.60"),
    ("19998", "Test no answer", "0.60"),
    ("19997", "Test congestion", "0.60"),
    ("19995", "Test unavailable", "0.60"),
)


def create_test_plan(db: Database, name: str = PLAN, currency: str = "USD") -> None:
    with db.transaction() as s:
        create_plan(s, name, currency)
        import_rows(s, [RateRow(name, prefix, Decimal(rate), destination=dest, increment=1)
                        for prefix, dest, rate in TEST_RATES])


@dataclass(frozen=True)
class CardInHand:
    number: str
    pin: str
    account: str
    card_id: int


def new_card(db: Database, balance: Decimal, *, plan: str = PLAN, account: str | None = None,
             callerid: str | None = None) -> CardInHand:
    """Issue one card (its own account with ``balance``, or joining ``account``)."""
    with tempfile.TemporaryDirectory() as tmp:
        issued = issue_cards(db, plan, 1, balance, Path(tmp) / "cards.csv", account=account)[0]
    with db.transaction() as s:
        card = s.scalar(select(Card).where(Card.number == issued.number))
        assert card is not None
        if callerid:
            card.callerid = callerid
        return CardInHand(issued.number, issued.pin, issued.account, card.id)


def new_account(db: Database, balance: Decimal, plan: str = PLAN) -> str:
    with db.transaction() as s:
        return create_account(s, plan, balance=balance).number


def utcnow() -> datetime:
    return datetime.now(UTC)


def prompt_id_of(cmd: SeenCommand) -> str | None:
    """A store path ``.../<lang>/<id>/v<n>`` as its prompt id; core sounds and
    ``number:5`` style entries as they are."""
    prompt = cmd.prompt
    if prompt is None:
        return None
    parts = prompt.split("/")
    if len(parts) >= 3 and parts[-1].startswith("v") and parts[-1][1:].isdigit():
        return parts[-2]
    return prompt


def heard(commands: list[SeenCommand]) -> list[str]:
    """What a caller heard, in order, as prompt ids."""
    return [p for p in map(prompt_id_of, commands) if p is not None]


class Caller:
    """Drives a test call prompt by prompt: each wait consumes the commands before it,
    so answering the same prompt twice waits for its second playing."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.cursor = 0

    async def wait_prompt(self, prompt_id: str, timeout: float = 60) -> int:
        def find(c: Call) -> int | None:
            for i in range(self.cursor, len(c.commands)):
                if prompt_id_of(c.commands[i]) == prompt_id:
                    return i + 1
            return None

        found = await self.call.wait_for(find, timeout, f"prompt {prompt_id!r}")
        assert isinstance(found, int)
        self.cursor = found
        return found - 1

    async def answer(self, prompt_id: str, digits: str, timeout: float = 60) -> None:
        """Wait for the prompt (a GET DATA) and type ``digits``."""
        await self.wait_prompt(prompt_id, timeout)
        await self.call.send_dtmf(digits)

    async def log_in(self, card: CardInHand) -> None:
        await self.answer("enter-card-number", card.number + "#")
        await self.answer("enter-pin", card.pin + "#")

    async def dial(self, digits: str) -> None:
        await self.answer("enter-destination", digits + "#")

    @property
    def heard(self) -> list[str]:
        return heard(self.call.commands)


@dataclass
class AccessLine:
    """The access line wired as `ivr serve` wires it, on a fresh SQLite database."""

    settings: Settings
    db: Database
    ledger: Ledger
    controller: CallController
    server: AgiServer
    app: App

    def card(self, balance: str, *, plan: str = PLAN, account: str | None = None,
             callerid: str | None = None) -> CardInHand:
        return new_card(self.db, Decimal(balance), plan=plan, account=account,
                        callerid=callerid)




def account_state(
    line: AccessLine | Database, number: str
) -> tuple[Decimal, Decimal, list[LedgerEntry]]:
    """Balance, reserved and ledger entries; checks the ledger sums to the balance."""
    db = line.db if isinstance(line, AccessLine) else line
    with db.transaction() as s:
        account = s.scalar(select(Account).where(Account.number == number))
        assert account is not None
        entries = list(s.scalars(select(LedgerEntry).where(LedgerEntry.account_id == account.id)
                                 .order_by(LedgerEntry.id)))
        assert ledger_sum(s, account.id) == account.balance
        return account.balance, account.reserved, entries


def balance_of(db: Database, account_id: int) -> Decimal:
    """An account's balance, checking the ledger sums to it."""
    with db.transaction() as s:
        account = s.get(Account, account_id)
        assert account is not None
        assert ledger_sum(s, account_id) == account.balance
        return account.balance


def cdrs(line: AccessLine | Database) -> list[Cdr]:
    db = line.db if isinstance(line, AccessLine) else line
    with db.transaction() as s:
        return list(s.scalars(select(Cdr).order_by(Cdr.id)))


def open_reservations(line: AccessLine | Database) -> list[Reservation]:
    db = line.db if isinstance(line, AccessLine) else line
    with db.transaction() as s:
        return list(s.scalars(select(Reservation).where(
            Reservation.status == ReservationStatus.ACTIVE)))


