"""The access line (ivr.flows.access) against the scripted fake Asterisk, on an
application built for each test: log-in by card and PIN or by caller ID, wrong PINs, a
busy destination, a hang-up while the minutes are told, and two applications side by
side in one process. Every case checks the money to the cent: balance, held amount,
ledger entries, call records and reservations.

What Asterisk itself does with Dial and the hang-up handlers is the real-Asterisk tests'
business (tests/e2e); here the dialplan's answers are scripted (ivr.testing.scripted).
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select

from ivr.db import Database
from ivr.db.models import AuthFailure, Card, CardStatus, EntryKind, Reservation, ReservationStatus
from ivr.flows.access import dialplan_word
from ivr.testing.access import account_state, cdrs, open_reservations
from ivr.testing.scripted import (
    CALLER_ID,
    Line,
    LineFactory,
    Outcome,
    ScriptedCaller,
    prompt_of,
    quoted_args,
)

US_NUMBER = "12125550100"

# What a caller with 5.00 hears up to Dial: 500 s at 0.60/min is "8 minutes".
LOG_IN = ["welcome", "enter-card-number", "enter-pin", "your-balance-is"]
TO_DIAL = ["enter-destination", "you-have", "for-this-call", "connecting"]


def reservations(db: Database) -> list[Reservation]:
    with db.transaction() as s:
        return list(s.scalars(select(Reservation).order_by(Reservation.id)))


def card_row(db: Database, card_id: int) -> Card:
    with db.transaction() as s:
        card = s.get(Card, card_id)
        assert card is not None
        s.expunge(card)
        return card


def log_in_keys(number: str, pin: str, *destinations: str) -> dict[str, list[str | None]]:
    return {"enter-card-number": [number], "enter-pin": [pin],
            "enter-destination": list(destinations)}


async def test_card_and_pin_call_answered_for_42_seconds_is_settled(line: Line) -> None:
    card = line.card("5.00")
    caller = ScriptedCaller(log_in_keys(card.number, card.pin, US_NUMBER),
                            dials=[Outcome.answered(42)])
    commands = await line.call(caller)

    assert caller.heard == [
        *LOG_IN, "number:5", "digits/dollars",
        "enter-destination", "you-have", "number:8", "minutes", "for-this-call", "connecting",
        "call-cost", "number:42", "unit-cents",
        "your-balance-is", "number:4", "digits/dollars", "vm-and", "number:58", "unit-cents",
        "another-call", "goodbye",
    ]
    assert caller.dialled == [f"Local/{US_NUMBER}@ivr-test-callee"]
    # The record was there at once: read once, no polling (access.RECORD_WAIT).
    assert sum(c.startswith("DATABASE GET") for c in commands) == 1
    assert 'DATABASE DEL "ivr-calls" "1700000000.1-1"' in commands
    assert caller.astdb == {}  # settled here: the record is not left for recovery
    assert commands[-1] == "HANGUP"

    balance, reserved, entries = account_state(line.db, card.account)
    assert (balance, reserved) == (Decimal("4.58"), Decimal(0))
    calls = [e for e in entries if e.kind is EntryKind.CALL]
    assert [(e.amount, e.balance_after) for e in calls] == [(Decimal("-0.42"), Decimal("4.58"))]
    assert sum(e.amount for e in entries) == Decimal("4.58")
    [cdr] = cdrs(line.db)
    assert (cdr.billable_seconds, cdr.cost, cdr.destination, cdr.card_id, cdr.currency) == (
        42, Decimal("0.42"), US_NUMBER, card.card_id, "USD")
    assert cdr.hangup_cause == "ANSWER"
    [res] = reservations(line.db)
    assert res.status is ReservationStatus.SETTLED and res.call_key == "1700000000.1-1"
    assert open_reservations(line.db) == []
    await line.app.charging.aclose()
    assert not line.app.charging._tasks  # the after-call notice check has ended


async def test_three_wrong_pins_end_the_call(line: Line) -> None:
    card = line.card("5.00")
    caller = ScriptedCaller({"enter-card-number": [card.number] * 3,
                             "enter-pin": ["0000", "1111", "2222"]})
    await line.call(caller)

    assert caller.prompts == [
        "welcome",
        *["enter-card-number", "enter-pin", "invalid-login"] * 3,
        "too-many-attempts", "goodbye",
    ]
    row = card_row(line.db, card.card_id)
    # Consecutive wrong PINs count against the card (locked at pin_max_failures = 5)...
    assert (row.failed_pins, row.status) == (3, CardStatus.ACTIVE)
    with line.db.transaction() as s:  # ...and against the caller ID, on any card
        failures = s.scalar(select(func.count(AuthFailure.id)).where(
            AuthFailure.callerid == CALLER_ID, AuthFailure.card_id == card.card_id))
    assert failures == 3
    assert reservations(line.db) == [] and cdrs(line.db) == []
    balance, reserved, entries = account_state(line.db, card.account)
    assert (balance, reserved) == (Decimal("5.00"), Decimal(0))
    assert [e.kind for e in entries if e.kind is EntryKind.CALL] == []


async def test_pinless_log_in_by_caller_id(line: Line) -> None:
    card = line.card("1.00", callerid="12125550199")
    caller = ScriptedCaller({"enter-destination": [US_NUMBER]}, dials=[Outcome.answered(10)])
    await line.call(caller, callerid="+12125550199")

    assert caller.heard == [
        "welcome", "welcome-back", "your-balance-is", "number:1", "unit-dollar",
        "enter-destination", "you-have", "number:1", "minute", "for-this-call", "connecting",
        "call-cost", "number:10", "unit-cents",
        "your-balance-is", "number:90", "unit-cents", "another-call", "goodbye",
    ]
    assert "enter-pin" not in caller.prompts and "enter-card-number" not in caller.prompts
    balance, reserved, entries = account_state(line.db, card.account)
    assert (balance, reserved) == (Decimal("0.90"), Decimal(0))
    assert [e.amount for e in entries if e.kind is EntryKind.CALL] == [Decimal("-0.10")]
    [cdr] = cdrs(line.db)
    assert (cdr.billable_seconds, cdr.cost, cdr.caller) == (10, Decimal("0.10"), "12125550199")


async def test_busy_destination_releases_the_hold(line: Line) -> None:
    card = line.card("5.00")
    caller = ScriptedCaller(log_in_keys(card.number, card.pin, US_NUMBER),
                            dials=[Outcome("BUSY")])
    await line.call(caller)

    assert caller.prompts == [*LOG_IN, *TO_DIAL, "busy", "another-call", "goodbye"]
    balance, reserved, entries = account_state(line.db, card.account)
    assert (balance, reserved) == (Decimal("5.00"), Decimal(0))
    assert [e for e in entries if e.kind is EntryKind.CALL] == []
    [res] = reservations(line.db)
    assert res.status is ReservationStatus.RELEASED
    [cdr] = cdrs(line.db)  # a zero-cost record of the attempt
    assert (cdr.billable_seconds, cdr.cost, cdr.hangup_cause) == (0, Decimal(0), "BUSY")


def _steps(commands: list[str]) -> list[str]:
    """A call's AGI commands in short: a played or asked prompt by what is heard, any other
    command as its verb and first argument."""
    out = []
    for command in commands:
        heard = prompt_of(command)
        if heard is not None:
            out.append(heard)
        else:
            verb = command.split(' "', 1)[0]
            args = quoted_args(command)
            out.append(f"{verb} {args[0]}" if args else verb)
    return out


# One paid call, one AGI round trip each. Dial's B() sets the caller channel's variables
# for the call (ivr-access-prepare) in Dial's own round trip.
CALL_STEPS = ["enter-destination", "you-have", "number:8", "minutes", "for-this-call",
              "connecting", "EXEC Dial"]


async def test_the_agi_commands_of_a_session_with_one_answered_call(line: Line) -> None:
    card = line.card("5.00")
    caller = ScriptedCaller(log_in_keys(card.number, card.pin, US_NUMBER),
                            dials=[Outcome.answered(42)])
    commands = await line.call(caller)

    assert _steps(commands) == [
        "ANSWER", *LOG_IN, "number:5", "digits/dollars",
        *CALL_STEPS,
        # The called channel's record is there: it tells ANSWER, no DIALSTATUS read.
        "DATABASE GET ivr-calls",
        "SET VARIABLE IVR_SETTLED", "DATABASE DEL ivr-calls", "SET VARIABLE TIMEOUT(absolute)",
        "call-cost", "number:42", "unit-cents",
        "your-balance-is", "number:4", "digits/dollars", "vm-and", "number:58", "unit-cents",
        "another-call", "SET VARIABLE IVR_DONE", "goodbye", "HANGUP",
    ]
    assert len(commands) == 31  # 37 before Dial took the variables (5 SET VARIABLE)
    key = "1700000000.1-1"
    dial = next(c for c in commands if c.startswith("EXEC"))
    assert dial == (f'EXEC "Dial" "Local/{US_NUMBER}@ivr-test-callee,60,'
                    f'U(ivr-access-answered^300^{key})B(ivr-access-prepare^s^1({key}^390))"')
    assert caller.astdb == {}


async def test_the_database_steps_of_a_paid_call(
    line: Line, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each step is a hand-off to a database thread and back: a paid call takes four (the
    caller ID's card or throttle, the log-in, the reservation, the charge, which also
    tells the balance said after the call). An unanswered call reads the balance again."""
    card = line.card("5.00")
    steps: list[str] = []
    run = line.db.run

    async def counted(func: Any, /, *args: Any, **kwargs: Any) -> Any:
        steps.append(func.__name__)
        return await run(func, *args, **kwargs)

    monkeypatch.setattr(line.db, "run", counted)
    keys = log_in_keys(card.number, card.pin, US_NUMBER, US_NUMBER) | {"another-call": ["1"]}
    caller = ScriptedCaller(keys, dials=[Outcome.answered(42), Outcome("BUSY")])
    await line.call(caller)

    # The outbound trunk is read once per OUTBOUND_TTL, not per call (ivr.app).
    assert steps.count("_read_outbound") == 1
    steps.remove("_read_outbound")
    assert steps == ["arrival", "log_in", "authorize", "settle",
                     "authorize", "release", "holder"]
    assert caller.heard[caller.heard.index("call-cost"):][:10] == [
        "call-cost", "number:42", "unit-cents",
        "your-balance-is", "number:4", "digits/dollars", "vm-and", "number:58", "unit-cents",
        "another-call"]


async def test_the_agi_commands_of_an_unanswered_call(line: Line) -> None:
    card = line.card("5.00")
    keys = log_in_keys(card.number, card.pin, US_NUMBER, US_NUMBER) | {"another-call": ["1"]}
    caller = ScriptedCaller(keys, dials=[Outcome("NOANSWER"), Outcome("BUSY")])
    commands = await line.call(caller)

    # No record: DIALSTATUS says how it ended, and there is nothing to delete.
    after_dial = ["DATABASE GET ivr-calls", "GET VARIABLE DIALSTATUS",
                  "SET VARIABLE IVR_SETTLED", "SET VARIABLE TIMEOUT(absolute)"]
    assert _steps(commands) == [
        "ANSWER", *LOG_IN, "number:5", "digits/dollars",
        *CALL_STEPS, *after_dial, "no-answer", "another-call",
        *CALL_STEPS, *after_dial, "busy", "another-call",
        "SET VARIABLE IVR_DONE", "goodbye", "HANGUP",
    ]
    assert len(commands) == 36  # 48 before Dial took the variables and the DEL went
    assert [c.split(",")[2] for c in commands if c.startswith("EXEC")] == [
        'U(ivr-access-answered^300^1700000000.1-1)B(ivr-access-prepare^s^1(1700000000.1-1^390))"',
        'U(ivr-access-answered^300^1700000000.1-2)B(ivr-access-prepare^s^1(1700000000.1-2^390))"',
    ]
    balance, reserved, _ = account_state(line.db, card.account)
    assert (balance, reserved) == (Decimal("5.00"), Decimal(0))
    assert [r.status for r in reservations(line.db)] == [ReservationStatus.RELEASED] * 2


async def test_a_call_key_unfit_for_the_dial_string_is_never_dialled(line: Line) -> None:
    """The call key goes into Dial's Gosub arguments, where , ^ ( ) | $ mean something:
    a channel uniqueid with any of them (Asterisk's never have) is refused before Dial,
    and the hold is released."""
    card = line.card("5.00")
    caller = ScriptedCaller(log_in_keys(card.number, card.pin, US_NUMBER))
    commands = await caller.call("127.0.0.1", line.server.port, "access",
                                 uniqueid="1700000000.1,B(x)")
    await line.server.wait_idle()

    assert not any(c.startswith("EXEC") for c in commands)
    assert caller.prompts == [*LOG_IN, "enter-destination", "you-have", "for-this-call"]
    assert line.server.stats.failed == 1
    balance, reserved, _ = account_state(line.db, card.account)
    assert (balance, reserved) == (Decimal("5.00"), Decimal(0))
    assert [r.status for r in reservations(line.db)] == [ReservationStatus.RELEASED]
    assert dialplan_word("1700000000.25-3") == "1700000000.25-3"
    for bad in ("", "a,b", "a^b", "a(b", "a)b", "${X}", "a|b", "a b", "x" * 121):
        with pytest.raises(ValueError):
            dialplan_word(bad)


def _index(commands: list[str], prefix: str) -> int:
    """1-based position of the first command starting with ``prefix``."""
    return next(i for i, c in enumerate(commands, 1) if c.startswith(prefix))


async def test_hang_up_at_you_have_releases_the_reservation(line: Line) -> None:
    # The same call to the end, on another card, tells where "you-have" comes.
    probe_card = line.card("5.00")
    probe = ScriptedCaller(log_in_keys(probe_card.number, probe_card.pin, US_NUMBER),
                           dials=[Outcome("BUSY")])
    full = await line.call(probe, uniqueid="1700000000.100")
    you_have = next(i for i, c in enumerate(full, 1) if "/you-have/" in c)

    card = line.card("5.00")
    caller = ScriptedCaller(log_in_keys(card.number, card.pin, US_NUMBER))
    commands = await line.call(caller, hangup_after=you_have, uniqueid="1700000000.2")

    assert caller.prompts == [*LOG_IN, "enter-destination", "you-have"]
    assert not any(c.startswith("EXEC") for c in commands)
    assert line.server.stats.hung_up == 1
    balance, reserved, entries = account_state(line.db, card.account)
    assert (balance, reserved) == (Decimal("5.00"), Decimal(0))  # nothing held, nothing paid
    assert [e for e in entries if e.kind is EntryKind.CALL] == []
    mine = [r for r in reservations(line.db) if r.card_id == card.card_id]
    assert [r.status for r in mine] == [ReservationStatus.RELEASED]
    assert open_reservations(line.db) == []
    await line.app.charging.aclose()
    assert not line.app.charging._tasks


async def test_a_hang_up_anywhere_between_reservation_and_dial_releases_it(line: Line) -> None:
    """After each command from the reservation's first prompt to the last one before
    Dial, in turn: the hold is always released, never left held or charged. (The hang-up
    after the very last command before Dial: the next test.)"""
    card = line.card("5.00")
    probe = ScriptedCaller(log_in_keys(card.number, card.pin, US_NUMBER),
                           dials=[Outcome("BUSY")])
    full = await line.call(probe, uniqueid="1700000000.100")
    first = next(i for i, c in enumerate(full, 1) if "/you-have/" in c)
    dial = _index(full, 'EXEC "Dial"')
    assert dial - first == 5  # "you have", "eight", "minutes", "for this call", "connecting"
    for n in range(first, dial - 1):
        caller = ScriptedCaller(log_in_keys(card.number, card.pin, US_NUMBER))
        commands = await line.call(caller, hangup_after=n, uniqueid=f"1700000001.{n}")
        assert not any(c.startswith("EXEC") for c in commands), n
        balance, reserved, _ = account_state(line.db, card.account)
        assert (balance, reserved) == (Decimal("5.00"), Decimal(0)), n
        assert open_reservations(line.db) == [], n
    assert line.server.stats.hung_up == dial - 1 - first
    assert all(r.status is ReservationStatus.RELEASED for r in reservations(line.db))
    assert all(c.cost == 0 for c in cdrs(line.db))


async def test_a_hang_up_just_before_dial_releases_the_hold(line: Line) -> None:
    """The caller hangs up right after "connecting": the session knows it and refuses to
    send EXEC Dial, so Dial never runs and nobody (no hang-up handler record of a Dial,
    no call) will settle this hold: it should be released now, as after any other
    prompt before Dial."""
    card = line.card("5.00")
    probe = ScriptedCaller(log_in_keys(card.number, card.pin, US_NUMBER),
                           dials=[Outcome("BUSY")])
    full = await line.call(probe, uniqueid="1700000000.100")
    dial = _index(full, 'EXEC "Dial"')
    assert "/connecting/" in full[dial - 2]
    caller = ScriptedCaller(log_in_keys(card.number, card.pin, US_NUMBER))
    commands = await line.call(caller, hangup_after=dial - 1, uniqueid="1700000000.2")
    assert not any(c.startswith("EXEC") for c in commands)  # Dial never ran
    balance, reserved, _ = account_state(line.db, card.account)
    assert (balance, reserved) == (Decimal("5.00"), Decimal(0))
    assert open_reservations(line.db) == []


async def test_scripted_hang_up_while_the_minutes_are_told(line: Line) -> None:
    """The scripted caller hangs up during a prompt itself (result -1, then HANGUP)."""
    card = line.card("5.00")
    caller = ScriptedCaller(log_in_keys(card.number, card.pin, US_NUMBER),
                            hangup_at="for-this-call")
    await line.call(caller)
    assert caller.prompts == [*LOG_IN, "enter-destination", "you-have", "for-this-call"]
    assert line.server.stats.hung_up == 1
    balance, reserved, _ = account_state(line.db, card.account)
    assert (balance, reserved) == (Decimal("5.00"), Decimal(0))
    assert [r.status for r in reservations(line.db)] == [ReservationStatus.RELEASED]


async def test_two_apps_side_by_side_do_not_see_each_other(make_line: LineFactory) -> None:
    line_a, line_b = await make_line("a"), await make_line("b")
    assert line_a.server.port != line_b.server.port
    card_a, card_b = line_a.card("5.00"), line_b.card("2.00")
    caller_a = ScriptedCaller(log_in_keys(card_a.number, card_a.pin, US_NUMBER),
                              dials=[Outcome.answered(42)])
    caller_b = ScriptedCaller(log_in_keys(card_b.number, card_b.pin, US_NUMBER),
                              dials=[Outcome.answered(7)])
    await asyncio.gather(line_a.call(caller_a), line_b.call(caller_b))

    assert account_state(line_a.db, card_a.account)[:2] == (Decimal("4.58"), Decimal(0))
    assert account_state(line_b.db, card_b.account)[:2] == (Decimal("1.93"), Decimal(0))
    assert [(c.billable_seconds, c.cost, c.card_id) for c in cdrs(line_a.db)] == [
        (42, Decimal("0.42"), card_a.card_id)]
    assert [(c.billable_seconds, c.cost, c.card_id) for c in cdrs(line_b.db)] == [
        (7, Decimal("0.07"), card_b.card_id)]
    with line_b.db.transaction() as s:
        assert s.scalar(select(Card.id).where(Card.number == card_a.number)) is None

    # Card A is unknown to app B: refused as any unknown number, nothing changes on A.
    stranger = ScriptedCaller({"enter-card-number": [card_a.number] * 3,
                               "enter-pin": [card_a.pin] * 3})
    await line_b.call(stranger, uniqueid="1700000000.9")
    assert stranger.prompts == [
        "welcome", *["enter-card-number", "enter-pin", "invalid-login"] * 3,
        "too-many-attempts", "goodbye"]
    assert account_state(line_a.db, card_a.account)[:2] == (Decimal("4.58"), Decimal(0))
    assert len(cdrs(line_a.db)) == 1 and len(cdrs(line_b.db)) == 1
    assert card_row(line_a.db, card_a.card_id).failed_pins == 0
    assert line_a.app.charging is not line_b.app.charging
    assert line_a.app.db.engine.url != line_b.app.db.engine.url


async def test_the_outbound_sip_trunk_takes_the_call_with_its_strip_and_prefix(
        line: Line) -> None:
    """`ivr sip trunks add carrier ... --outbound --strip 1 --prefix 00`: the paid call's
    outgoing leg is dialled on that trunk, not trunk_dial; only digits reach it."""
    from ivr import sip

    with line.db.transaction() as s:
        sip.add_trunk(s, "carrier", "198.51.100.7", key=line.app.secret_key, outbound=True,
                      prefix="00", strip=1)
    card = line.card("5.00")
    caller = ScriptedCaller(log_in_keys(card.number, card.pin, US_NUMBER),
                            dials=[Outcome.answered(10)])
    await line.call(caller)
    assert caller.dialled == [f"PJSIP/00{US_NUMBER[1:]}@carrier"]
    [cdr] = cdrs(line.db)
    assert (cdr.billable_seconds, cdr.cost) == (10, Decimal("0.10"))
