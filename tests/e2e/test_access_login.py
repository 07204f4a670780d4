"""Who may call, in a real Asterisk: PIN lock-out, a card's state told only after its
right PIN, pinless log-in by caller ID, the language menu, expired and empty cards, and a
caller ID refused after many failures."""

from __future__ import annotations

import logging
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select

from ivr.db.models import AuthFailure, Card, CardStatus
from ivr.login import ANONYMOUS
from ivr.testing.access import AccessLine, Caller, cdrs
from ivr.testing.phone import Phone

pytestmark = pytest.mark.asterisk


def card_row(line: AccessLine, card_id: int) -> Card:
    with line.db.transaction() as s:
        card = s.get(Card, card_id)
        assert card is not None
        return card


@pytest.mark.parametrize("access_line", [{"pin_max_failures": 3}], indirect=True)
async def test_wrong_pins_lock_the_card_and_pins_never_reach_a_log(
    access_line: AccessLine, phone: Phone, caplog: pytest.LogCaptureFixture, asterisk
):
    caplog.set_level(logging.DEBUG)
    card = access_line.card("5.00")
    wrong = "97531"  # PINs have 4 digits: never the right one
    call = await phone.call("ivr-access", callerid="15550005555")
    caller = Caller(call)
    for _ in range(3):
        await caller.answer("enter-card-number", card.number + "#")
        await caller.answer("enter-pin", wrong + "#")
    await caller.wait_prompt("too-many-attempts")
    await call.wait_ended()
    # The third wrong PIN locks the card, silently: a wrong PIN is a wrong PIN.
    assert caller.heard.count("invalid-login") == 3
    assert "card-locked" not in caller.heard
    assert card_row(access_line, card.card_id).status is CardStatus.LOCKED

    # The locked card's number is asked for its PIN; a wrong one is refused as any
    # other, and only the right one hears that the card is locked.
    call = await phone.call("ivr-access", callerid="15550005556")
    caller = Caller(call)
    await caller.answer("enter-card-number", card.number + "#")
    await caller.answer("enter-pin", wrong + "#")
    await caller.answer("enter-card-number", card.number + "#")
    await caller.answer("enter-pin", card.pin + "#")
    await caller.wait_prompt("card-locked")
    await call.wait_ended()
    assert caller.heard[1:] == ["enter-card-number", "enter-pin", "invalid-login",
                                "enter-card-number", "enter-pin", "card-locked", "goodbye"]
    await access_line.server.wait_idle()
    # The product's logs, even at DEBUG (the test phone's own AMI traffic is not ours),
    # and Asterisk's.
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("ivr"))
    assert "wrong PIN" in logged
    for secret in (card.pin, wrong, card.number):
        assert secret not in logged
        assert secret not in asterisk.log_file.read_text(errors="replace")


async def test_a_locked_card_is_asked_for_its_pin_and_told_only_after_the_right_one(
    access_line: AccessLine, phone: Phone
):
    """Locked by an operator: its number alone must not tell anyone that it exists."""
    card = access_line.card("5.00")
    with access_line.db.transaction() as s:
        s.get(Card, card.card_id).status = CardStatus.LOCKED
    call = await phone.call("ivr-access")
    caller = Caller(call)
    await caller.answer("enter-card-number", card.number + "#")
    await caller.answer("enter-pin", card.pin + "#", timeout=15)
    await caller.wait_prompt("card-locked")
    await call.wait_ended()
    assert caller.heard[1:] == ["enter-card-number", "enter-pin", "card-locked", "goodbye"]
    assert card_row(access_line, card.card_id).failed_pins == 0


async def test_an_unknown_card_number_is_answered_as_a_wrong_pin(
    access_line: AccessLine, phone: Phone
):
    """An unknown card number is asked for a PIN, then refused with the words, and the
    next question, of a wrong PIN on a real card."""
    card = access_line.card("5.00")
    unknown = card.number[:-1] + str((int(card.number[-1]) + 1) % 10)
    heard = []
    for number, pin in ((unknown, card.pin), (card.number, "97531")):
        call = await phone.call("ivr-access", callerid="15550004444")
        caller = Caller(call)
        await caller.answer("enter-card-number", number + "#")
        await caller.answer("enter-pin", pin + "#", timeout=15)
        await caller.wait_prompt("enter-card-number")  # asked again, from the start
        await call.hangup()
        await call.wait_ended()
        heard.append(caller.heard)
    assert heard[0] == heard[1] == ["welcome", "enter-card-number", "enter-pin",
                                    "invalid-login", "enter-card-number"]
    # Both count against the caller ID; only the real card counts a wrong PIN.
    with access_line.db.transaction() as s:
        assert [(f.callerid, f.card_id) for f in s.scalars(select(AuthFailure))] == [
            ("15550004444", None), ("15550004444", card.card_id)]
    assert card_row(access_line, card.card_id).failed_pins == 1


async def test_a_right_pin_resets_the_count(access_line: AccessLine, phone: Phone):
    card = access_line.card("5.00")
    wrong = "97531"  # PINs have 4 digits: never the right one
    call = await phone.call("ivr-access")
    caller = Caller(call)
    await caller.answer("enter-card-number", card.number + "#")
    await caller.answer("enter-pin", wrong + "#")
    await caller.wait_prompt("invalid-login")
    await caller.log_in(card)  # number and PIN again
    await caller.wait_prompt("enter-destination")
    assert card_row(access_line, card.card_id).failed_pins == 0
    await call.hangup()
    await call.wait_ended()


async def test_pinless_caller_is_recognised_by_caller_id(access_line: AccessLine, phone: Phone):
    card = access_line.card("3.50", callerid="15550006666")
    call = await phone.call("ivr-access", callerid="15550006666")
    caller = Caller(call)
    await caller.dial("9996021234")
    await caller.wait_prompt("call-cost")
    await call.hangup()
    await call.wait_ended()
    await access_line.server.wait_idle()
    heard = caller.heard
    assert heard[:2] == ["welcome", "welcome-back"]
    assert "enter-card-number" not in heard and "enter-pin" not in heard
    (cdr,) = cdrs(access_line)
    assert cdr.card_id == card.card_id and cdr.caller == "15550006666"
    assert cdr.cost == Decimal("0.02")


async def test_a_malformed_caller_id_is_withheld_not_a_pinless_log_in(
    access_line: AccessLine, phone: Phone, caplog: pytest.LogCaptureFixture
):
    """Its digits alone are a registered caller ID, but dialplan syntax is no telephone
    number: the caller is asked for a card, and failures count as anonymous."""
    caplog.set_level(logging.INFO, logger="ivr.agi")
    access_line.card("5.00", callerid="15550001123")
    malformed = "1555,0001&Local/123@default"
    call = await phone.call("ivr-access", callerid=malformed)
    caller = Caller(call)
    await caller.answer("enter-card-number", "400000000002#")
    await caller.answer("enter-pin", "1234#")
    await caller.wait_prompt("invalid-login")
    await call.hangup()
    await call.wait_ended()
    await access_line.server.wait_idle()
    assert caller.heard[:2] == ["welcome", "enter-card-number"]
    assert "welcome-back" not in caller.heard
    # Asterisk passed the caller ID on as it was set.
    assert any(f"call from {malformed!r}" in r.getMessage() for r in caplog.records)
    with access_line.db.transaction() as s:
        assert [f.callerid for f in s.scalars(select(AuthFailure))] == [ANONYMOUS]


@pytest.mark.parametrize("access_line", [{"access_languages": ""}], indirect=True)
async def test_language_menu_switches_every_prompt(access_line: AccessLine, phone: Phone):
    card = access_line.card("1.00")
    call = await phone.call("ivr-access")
    caller = Caller(call)
    await caller.wait_prompt("choose-language")
    await call.send_dtmf("2")
    await caller.log_in(card)
    await caller.wait_prompt("enter-destination")
    await call.hangup()
    await call.wait_ended()
    played = [c.args[0] for c in call.commands if c.verb in ("STREAM FILE", "GET DATA")
              and "/prompts/" in c.args[0]]
    # The menu is said in each language; after "2" everything is Spanish.
    assert "/en/choose-language/" in played[0]
    after = played[played.index(next(p for p in played if "/welcome/" in p)):]
    assert after and all("/es/" in p for p in after), after


async def test_expired_and_empty_cards_get_their_own_prompt(
    access_line: AccessLine, phone: Phone
):
    expired = access_line.card("5.00")
    with access_line.db.transaction() as s:
        s.get(Card, expired.card_id).expires_on = date.today() - timedelta(days=1)
    empty = access_line.card("0.00")
    # Each is told so after its right PIN (a card's state is private).
    for card, prompt in ((expired, "card-expired"), (empty, "card-empty")):
        call = await phone.call("ivr-access")
        caller = Caller(call)
        await caller.log_in(card)
        await caller.wait_prompt(prompt)
        await call.wait_ended()
        assert "enter-destination" not in caller.heard
    assert "your-balance-is" in caller.heard  # the empty card hears its balance


@pytest.mark.parametrize("access_line", [{"callerid_max_failures": 2}], indirect=True)
async def test_guessing_across_cards_from_one_caller_id_is_refused(
    access_line: AccessLine, phone: Phone
):
    for _ in range(2):  # two unknown card numbers
        call = await phone.call("ivr-access", callerid="15550007777")
        caller = Caller(call)
        await caller.answer("enter-card-number", "400000000002#")
        await caller.answer("enter-pin", "1234#")
        await caller.wait_prompt("invalid-login")
        await call.hangup()
        await call.wait_ended()
    good = access_line.card("5.00")
    call = await phone.call("ivr-access", callerid="15550007777")
    caller = Caller(call)
    await caller.wait_prompt("too-many-attempts")
    await call.wait_ended()
    assert "enter-card-number" not in caller.heard
    # Another caller ID is not affected.
    call = await phone.call("ivr-access", callerid="15550008888")
    caller = Caller(call)
    await caller.log_in(good)
    await caller.wait_prompt("enter-destination")
    await call.hangup()
    await call.wait_ended()


async def test_a_dead_database_tells_the_caller_the_service_is_unavailable(
    access_line: AccessLine, phone: Phone
):
    # The database file can no longer be opened: the route fails at log-in, and the
    # dialplan, told by the server (IVR_ERROR=FAILED), plays "service unavailable".
    path = Path(access_line.db.url.removeprefix("sqlite:///"))
    away = path.with_name(path.name + ".away")

    def break_it() -> None:
        access_line.db.engine.dispose()
        path.rename(away)
        path.mkdir()

    def mend_it() -> None:
        path.rmdir()
        away.rename(path)

    break_it()
    try:
        call = await phone.call("ivr-access", callerid="15550009999")
        await call.wait_ended(timeout=30)
        await access_line.server.wait_idle()
    finally:
        mend_it()
    assert ("Playback", "ss-noservice") in call.applications
    assert access_line.server.stats.failed == 1
    assert cdrs(access_line) == []  # the database is as it was
