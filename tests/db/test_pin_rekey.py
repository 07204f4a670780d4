"""Card PINs under the PIN key ring (ivr.login, ivr.money.accounts): older scrypt hashes
and hashes of an older key are re-keyed on the next successful log-in, wrong PINs
re-key nothing; batches are issued keyed, streamed to their file, at batch speed. On
SQLite and on a real PostgreSQL."""

from __future__ import annotations

import csv
import stat
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select

from ivr import login
from ivr.db import Database
from ivr.db.models import Account, Card, EntryKind, LedgerEntry
from ivr.login import LoginPolicy, Verdict
from ivr.money.accounts import issue_card_file, issue_cards
from ivr.money.ledger import ledger_sum
from ivr.secrets import PinKeyError, PinKeys
from ivr.testing.access import PLAN, create_test_plan

NOW = datetime(2026, 11, 18, 12, 0, tzinfo=UTC)
CALLER = "12125551234"
K1 = PinKeys((("k1", bytes(range(32))),))
K2 = K1.rotated(bytes(range(100, 132)), "k2")  # k2 newest, k1 kept to verify


@pytest.fixture
def plan(db: Database) -> Database:
    create_test_plan(db)
    return db


def policy(keys: PinKeys | None) -> LoginPolicy:
    return LoginPolicy(pin_max_failures=3, callerid_max_failures=100, pin_keys=keys)


def stored(db: Database, number: str) -> tuple[str, int]:
    with db.reading() as s:
        card = s.scalar(select(Card).where(Card.number == number))
        assert card is not None
        return card.pin_hash, card.failed_pins


def other_pin(pin: str) -> str:
    return "0000" if pin != "0000" else "1111"


def test_an_old_scrypt_hash_logs_in_and_is_rekeyed(plan: Database, tmp_path: Path):
    (card,) = issue_cards(plan, PLAN, 1, Decimal("5"), tmp_path / "c.csv")  # no key ring
    before, _ = stored(plan, card.number)
    assert before.startswith("scrypt$")
    result = login.log_in(plan, card.number, card.pin, CALLER, policy(K1), now=NOW)
    assert result.verdict is Verdict.OK
    after, failed = stored(plan, card.number)
    assert after == K1.hash(card.pin, card.number) and failed == 0
    # The keyed hash logs in from now on, and is left as it is.
    result = login.log_in(plan, card.number, card.pin, CALLER, policy(K1), now=NOW)
    assert result.verdict is Verdict.OK and stored(plan, card.number)[0] == after


def test_a_wrong_pin_rekeys_nothing(plan: Database, tmp_path: Path):
    (card,) = issue_cards(plan, PLAN, 1, Decimal("5"), tmp_path / "c.csv")
    before, _ = stored(plan, card.number)
    result = login.log_in(plan, card.number, other_pin(card.pin), CALLER, policy(K1),
                          now=NOW)
    assert result.verdict is Verdict.WRONG_PIN
    assert stored(plan, card.number) == (before, 1)
    # Nor does a right PIN on a card that cannot log in (locked by wrong PINs).
    for _ in range(2):
        login.log_in(plan, card.number, other_pin(card.pin), CALLER, policy(K1), now=NOW)
    result = login.log_in(plan, card.number, card.pin, CALLER, policy(K1), now=NOW)
    assert result.verdict is Verdict.LOCKED
    assert stored(plan, card.number)[0] == before


def test_without_the_key_ring_an_old_hash_logs_in_unchanged(plan: Database,
                                                            tmp_path: Path):
    (card,) = issue_cards(plan, PLAN, 1, Decimal("5"), tmp_path / "c.csv")
    before, _ = stored(plan, card.number)
    result = login.log_in(plan, card.number, card.pin, CALLER, policy(None), now=NOW)
    assert result.verdict is Verdict.OK and stored(plan, card.number)[0] == before


def test_rotation_old_key_hashes_verify_and_are_rekeyed(plan: Database, tmp_path: Path):
    a, b = issue_cards(plan, PLAN, 2, Decimal("5"), tmp_path / "c.csv", pin_keys=K1)
    assert stored(plan, a.number)[0].startswith("hmac$k1$")
    # After rotation: a k1 hash still logs in (log_in), and comes out under k2.
    assert login.log_in(plan, a.number, a.pin, CALLER, policy(K2), now=NOW).verdict \
        is Verdict.OK
    assert stored(plan, a.number)[0] == K2.hash(a.pin, a.number)
    # So does one confirming a payment (verify_pin), by card id.
    with plan.reading() as s:
        b_id = s.scalar(select(Card.id).where(Card.number == b.number))
    assert b_id is not None
    wrong = login.verify_pin(plan, b_id, other_pin(b.pin), CALLER, policy(K2), now=NOW)
    assert wrong.verdict is Verdict.WRONG_PIN
    assert stored(plan, b.number)[0].startswith("hmac$k1$")  # a wrong PIN: not re-keyed
    right = login.verify_pin(plan, b_id, b.pin, CALLER, policy(K2), now=NOW)
    assert right.verdict is Verdict.OK
    assert stored(plan, b.number) == (K2.hash(b.pin, b.number), 0)
    # Once re-keyed, the old key can go: a ring of k2 alone logs both in.
    only_k2 = PinKeys(K2.keys[:1])
    for card in (a, b):
        assert login.log_in(plan, card.number, card.pin, CALLER, policy(only_k2),
                            now=NOW).verdict is Verdict.OK


def test_a_keyed_hash_without_the_ring_is_an_error_not_a_wrong_pin(plan: Database,
                                                                   tmp_path: Path):
    (card,) = issue_cards(plan, PLAN, 1, Decimal("5"), tmp_path / "c.csv", pin_keys=K1)
    with pytest.raises(PinKeyError):
        login.log_in(plan, card.number, card.pin, CALLER, policy(None), now=NOW)
    assert stored(plan, card.number)[1] == 0  # nothing counted


def test_an_unknown_number_is_checked_against_a_keyed_decoy(plan: Database, monkeypatch):
    checked: list[str] = []
    real = K1.verify

    def spy(self: PinKeys, pin: str, stored_hash: str, subject: str) -> bool:
        checked.append(stored_hash)
        return real(pin, stored_hash, subject)

    monkeypatch.setattr(PinKeys, "verify", spy)
    result = login.log_in(plan, "000000000000", "1234", CALLER, policy(K1), now=NOW)
    assert result.verdict is Verdict.UNKNOWN_CARD
    assert len(checked) == 1 and checked[0].startswith("hmac$k1$")


def test_a_batch_is_keyed_streamed_to_its_file_and_counted(plan: Database, tmp_path: Path):
    out = tmp_path / "batch.csv"
    told: list[int] = []
    batch, count = issue_card_file(plan, PLAN, 4500, Decimal("2.50"), out, pin_keys=K2,
                                   batch="BIG", progress=told.append)
    assert (batch, count) == ("BIG", 4500)
    assert sum(told) == 4500 and len(told) == 3  # by chunks of 2000
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    with out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4500 and len({r["card_number"] for r in rows}) == 4500
    assert len({r["account"] for r in rows}) == 4500
    assert {r["balance"] for r in rows} == {"2.50"}
    with plan.reading() as s:
        hashes = {number: pin_hash for number, pin_hash in s.execute(
            select(Card.number, Card.pin_hash).where(Card.batch == "BIG"))}
        accounts = s.scalars(select(Account).join(Card, Card.account_id == Account.id)
                             .where(Card.batch == "BIG")).all()
        assert len(accounts) == 4500
        assert all(a.balance == Decimal("2.50") for a in accounts)
        assert all(ledger_sum(s, a.id) == a.balance for a in accounts[:50])
        entries = s.scalar(select(func.count()).select_from(LedgerEntry)
                           .where(LedgerEntry.kind == EntryKind.TOPUP,
                                  LedgerEntry.ref.startswith("opening:")))
        assert entries == 4500
    for r in rows:
        assert hashes[r["card_number"]] == K2.hash(r["pin"], r["card_number"])
    some = rows[1234]
    assert login.log_in(plan, some["card_number"], some["pin"], CALLER, policy(K2),
                        now=NOW).verdict is Verdict.OK


def test_a_failed_batch_leaves_no_file_and_no_card(plan: Database, tmp_path: Path):
    out = tmp_path / "batch.csv"

    def interrupted(n: int) -> None:  # after the first chunk was written to the file
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        issue_card_file(plan, PLAN, 3000, Decimal("1"), out, pin_keys=K1,
                        progress=interrupted)
    assert not out.exists()
    out.write_text("kept\n")
    with pytest.raises(FileExistsError):
        issue_card_file(plan, PLAN, 10, Decimal("1"), out, pin_keys=K1)
    assert out.read_text() == "kept\n"
    with plan.reading() as s:
        assert s.scalar(select(func.count()).select_from(Card)) == 0
