"""The newcomer's demo (ivr.demo, printed by `ivr run`): made once, shown the same on
every later run, kept private, and never a second plan in a database already in use."""

from __future__ import annotations

import stat
from decimal import Decimal
from pathlib import Path

from sqlalchemy import func, select

from ivr import sip
from ivr.config import load_settings
from ivr.db import Database
from ivr.db.models import Account, Card, RatingPlan, SipPhone
from ivr.demo import DEMO_FILE, TRY_NUMBER, demo_text, ensure_demo
from ivr.money.rates_store import create_plan
from ivr.secrets import verify_pin


def settings_in(tmp_path: Path, **changes: object):
    return load_settings(environ={}).replace(data_dir=tmp_path / "data",
                                             sip_bind="127.0.0.1:5070", **changes)


def count(db: Database, column) -> int:
    with db.reading() as s:
        return int(s.scalar(select(func.count(column))) or 0)


def test_the_first_run_makes_a_phone_a_plan_and_a_card_and_later_runs_show_the_same(
        sqlite_db: Database, tmp_path: Path):
    settings = settings_in(tmp_path)
    first = ensure_demo(sqlite_db, settings)
    second = ensure_demo(sqlite_db, settings)

    assert second == first
    assert first.phone == "softphone" and first.password
    assert first.card is not None and first.pin is not None
    assert first.balance == Decimal("5.00") and first.currency == "USD"
    assert count(sqlite_db, SipPhone.id) == 1
    assert count(sqlite_db, Card.id) == 1
    assert count(sqlite_db, RatingPlan.id) == 1
    with sqlite_db.reading() as s:
        phone = s.scalar(select(SipPhone))
        assert phone is not None
        assert phone.md5_cred == sip.md5_cred("softphone", first.password)
        card = s.scalar(select(Card))
        assert card is not None and card.number == first.card
        assert verify_pin(first.pin, card.pin_hash)
        account = s.get(Account, card.account_id)
        assert account is not None and account.balance == Decimal("5.00")
        assert s.scalar(select(RatingPlan.name)) == "demo"
    # Kept for the next runs, readable by the owner only.
    path = settings.data_dir / DEMO_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert first.password in text and first.card in text and first.pin in text


def test_the_file_stays_private_when_it_is_rewritten(sqlite_db: Database, tmp_path: Path):
    settings = settings_in(tmp_path)
    settings.data_dir.mkdir()
    path = settings.data_dir / DEMO_FILE
    path.write_text("stale = 1\n")
    path.chmod(0o644)
    demo = ensure_demo(sqlite_db, settings)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert demo.password is not None and demo.password in path.read_text()


def test_a_database_with_a_plan_gets_the_phone_and_no_second_plan_nor_a_demo_card(
        sqlite_db: Database, tmp_path: Path):
    with sqlite_db.transaction() as s:
        create_plan(s, "retail", "EUR")
    settings = settings_in(tmp_path)
    first = ensure_demo(sqlite_db, settings)
    assert ensure_demo(sqlite_db, settings) == first
    assert first.password and first.card is None and first.pin is None
    assert count(sqlite_db, RatingPlan.id) == 1
    assert count(sqlite_db, Card.id) == 0
    assert count(sqlite_db, SipPhone.id) == 1
    text = demo_text(first, settings)
    assert first.password in text and "demo card" not in text


def test_a_phone_of_that_name_made_elsewhere_keeps_its_password_unknown(
        sqlite_db: Database, tmp_path: Path):
    with sqlite_db.transaction() as s:
        theirs = sip.add_phone(s, "softphone").password
    settings = settings_in(tmp_path)
    demo = ensure_demo(sqlite_db, settings)
    assert demo.password is None
    assert count(sqlite_db, SipPhone.id) == 1
    text = demo_text(demo, settings)
    assert theirs not in text
    assert "ivr sip phones remove softphone" in text
    # The card is still made and kept: shown again next time.
    assert demo.card is not None and ensure_demo(sqlite_db, settings) == demo


def test_the_text_names_the_account_the_lines_the_card_and_a_number_to_try(
        sqlite_db: Database, tmp_path: Path):
    settings = settings_in(tmp_path)
    demo = ensure_demo(sqlite_db, settings)
    text = demo_text(demo, settings)
    assert demo.password is not None and demo.card is not None and demo.pin is not None
    for shown in ("127.0.0.1:5070", "user      softphone", f"password  {demo.password}",
                  "100 for the access line", "300 for the operator",
                  f"number {demo.card}, PIN {demo.pin} (5.00 USD left)", TRY_NUMBER,
                  "--no-demo"):
        assert shown in text, (shown, text)
    # Another carrier than the sandbox's: no number of the test carrier to try.
    other = settings.replace(trunk_dial="PJSIP/{number}@carrier")
    assert TRY_NUMBER not in demo_text(demo, other)
    # Listening on every address: the address to give is the public one.
    public = settings.replace(sip_bind="0.0.0.0:5060", sip_external_address="203.0.113.5")
    assert "domain    203.0.113.5:5060" in demo_text(demo, public)
