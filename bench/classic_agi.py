#!/usr/bin/env python3
"""The baseline of bench/callsetup.py: a classic AGI script, one process per call.

Asterisk's ``AGI(classic_agi.py,<database>)`` forks and runs it with the AGI environment on
stdin and its commands read from stdout; pyst2 speaks the protocol. It does what the
access line does, the way A2Billing-era scripts do it: sqlite3 on the same schema, the card
looked up by number, the PIN checked against its scrypt hash (ivr.secrets.verify_pin, the
same cost as ours), the balance read, the destination normalised (ivr.numbers.normalise),
the longest matching prefix found with one SQL query (``prefix IN (...)`` over every prefix
of the number), the affordable seconds computed in Decimal, a reservation row inserted
(and the account's ``reserved`` raised) in one transaction, the minutes announced, then
``EXEC Dial``. After Dial the reservation is released and the caller may call again.

    python3 bench/classic_agi.py DATABASE < agi environment
"""

from __future__ import annotations

import sqlite3
import sys
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal

from asterisk.agi import AGI

from ivr.numbers import InvalidNumber, normalise
from ivr.secrets import verify_pin

MICROS = Decimal(10**6)  # money columns hold integer micro-units
QUANTUM = Decimal("0.0001")  # the test plan's 4 decimals, rounded up
MAX_SECONDS = 86_400
DIAL_TIMEOUT = 60
TRUNK = "Local/{number}@ivr-test-callee"
REGION = "US"
TRIES = 3


def now() -> str:
    """A timestamp as SQLAlchemy stores a DateTime in SQLite."""
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def say_money(agi: AGI, amount: Decimal) -> None:
    dollars = int(amount)
    cents = int((amount - dollars) * 100)
    agi.say_number(dollars)
    agi.stream_file("digits/dollars")
    if cents:
        agi.stream_file("vm-and")
        agi.say_number(cents)
        agi.stream_file("unit-cents")


def log_in(agi: AGI, db: sqlite3.Connection) -> tuple[int, int] | None:
    """(card id, account id) of a card whose number and PIN were typed, or None."""
    for _ in range(TRIES):
        number = agi.get_data("enter-card-number", 10000, 20)
        row = db.execute(
            "SELECT cards.id, cards.pin_hash, cards.account_id FROM cards"
            " JOIN accounts ON accounts.id = cards.account_id"
            " WHERE cards.number = ? AND cards.status = 'active' AND accounts.status = 'active'"
            " AND (cards.expires_on IS NULL OR cards.expires_on >= date('now'))",
            (number,),
        ).fetchone()
        if row is None:
            agi.stream_file("invalid-card")
            continue
        card_id, pin_hash, account_id = row
        for _ in range(TRIES):
            pin = agi.get_data("enter-pin", 10000, 12)
            if verify_pin(pin, pin_hash):
                return card_id, account_id
            agi.stream_file("wrong-pin")
        return None
    return None


def rate(db: sqlite3.Connection, plan_id: int, number: str) -> tuple | None:
    """The longest prefix of ``number`` in the plan: one query, like A2Billing."""
    prefixes = [number[:n] for n in range(1, len(number) + 1)]
    marks = ",".join("?" * len(prefixes))
    return db.execute(
        "SELECT prefix, destination, connect_fee, rate, rate_unit, increment FROM rates"
        " WHERE plan_id = ? AND service = 'voice' AND from_second = 0"
        f" AND prefix IN ({marks}) ORDER BY length(prefix) DESC LIMIT 1",
        (plan_id, *prefixes),
    ).fetchone()


def afford(available: Decimal, row: tuple) -> tuple[int, Decimal]:
    """(seconds, cost) of the longest call the available balance pays for."""
    _, _, connect_fee, per_unit, unit, increment = row
    connect, price = Decimal(connect_fee) / MICROS, Decimal(per_unit) / MICROS
    budget = available - connect
    if budget <= 0:
        return 0, Decimal(0)
    seconds = MAX_SECONDS if price == 0 else min(MAX_SECONDS, int(budget * unit / price))
    seconds -= seconds % increment
    while seconds > 0:
        cost = (connect + price * seconds / unit).quantize(QUANTUM, rounding=ROUND_CEILING)
        if cost <= available:
            return seconds, cost
        seconds -= increment
    return 0, Decimal(0)


def reserve(db: sqlite3.Connection, card_id: int, account_id: int, number: str, key: str,
            channel: str) -> tuple[int, int, Decimal] | None:
    """Rate and hold: (reservation id, seconds, amount), or None when refused."""
    db.execute("BEGIN IMMEDIATE")
    try:
        balance, reserved, plan_id = db.execute(
            "SELECT balance, reserved, plan_id FROM accounts WHERE id = ?", (account_id,)
        ).fetchone()
        row = rate(db, plan_id, number)
        if row is None:
            db.execute("ROLLBACK")
            return None
        seconds, cost = afford(Decimal(balance - reserved) / MICROS, row)
        if seconds <= 0:
            db.execute("ROLLBACK")
            return None
        amount = int(cost * MICROS)
        stamp = now()
        cursor = db.execute(
            "INSERT INTO reservations (account_id, card_id, plan_id, number, prefix,"
            " destination, service, seconds, amount, status, rated_at, call_key, channel,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, 'voice', ?, ?, 'active', ?, ?, ?, ?)",
            (account_id, card_id, plan_id, number, row[0], row[1], seconds, amount, stamp,
             key, channel, stamp),
        )
        db.execute("UPDATE accounts SET reserved = reserved + ? WHERE id = ?",
                   (amount, account_id))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return int(cursor.lastrowid or 0), seconds, cost


def release(db: sqlite3.Connection, reservation_id: int, account_id: int, amount: Decimal,
            status: str) -> None:
    db.execute("BEGIN IMMEDIATE")
    db.execute(
        "UPDATE reservations SET status = 'released', closed_at = ?, uniqueid = call_key"
        " WHERE id = ? AND status = 'active'",
        (now(), reservation_id),
    )
    db.execute("UPDATE accounts SET reserved = reserved - ? WHERE id = ?",
               (int(amount * MICROS), account_id))
    db.execute("COMMIT")


def main() -> int:
    db_path = sys.argv[1]
    agi = AGI()
    uniqueid, channel = agi.env.get("agi_uniqueid", "call"), agi.env.get("agi_channel", "")
    agi.answer()
    agi.stream_file("welcome")
    db = sqlite3.connect(db_path, timeout=30, isolation_level=None)
    db.execute("PRAGMA busy_timeout = 30000")
    who = log_in(agi, db)
    if who is None:
        agi.stream_file("too-many-attempts")
        agi.hangup()
        return 0
    card_id, account_id = who
    balance, reserved = db.execute(
        "SELECT balance, reserved FROM accounts WHERE id = ?", (account_id,)
    ).fetchone()
    agi.stream_file("your-balance-is")
    say_money(agi, Decimal(balance - reserved) / MICROS)
    attempt = 0
    while True:
        typed = agi.get_data("enter-destination", 10000, 20)
        try:
            number = normalise(typed, REGION)
        except InvalidNumber:
            agi.stream_file("invalid-number")
            continue
        attempt += 1
        key = f"{uniqueid}-{attempt}"
        held = reserve(db, card_id, account_id, number, key, channel)
        if held is None:
            agi.stream_file("unknown-destination")
            continue
        reservation_id, seconds, amount = held
        agi.stream_file("you-have")
        agi.say_number(seconds // 60)
        agi.stream_file("minutes")
        agi.stream_file("for-this-call")
        agi.stream_file("connecting")
        agi.set_variable("IVR_SETTLED", "0")
        agi.set_variable("IVR_CALL_KEY", key)
        agi.set_variable("CHANNEL(hangup_handler_push)", "ivr-access-hangup,s,1")
        agi.set_variable("TIMEOUT(absolute)", DIAL_TIMEOUT + seconds + 30)
        agi.appexec("Dial", f"{TRUNK.format(number=number)},{DIAL_TIMEOUT}")
        status = agi.get_variable("DIALSTATUS") or "UNKNOWN"
        release(db, reservation_id, account_id, amount, status)
        agi.stream_file("no-answer" if status == "NOANSWER" else "call-failed")
        if agi.get_data("another-call", 5000, 1) != "1":
            break
    agi.stream_file("goodbye")
    agi.hangup()
    db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
