#!/usr/bin/env python3
"""The baseline of bench/callsetup.py: a classic AGI script, one process per call.

Asterisk's ``AGI(classic_agi.py,<database>)`` forks and runs it with the AGI environment on
stdin and its commands read from stdout; pyst2 speaks the protocol. It does what the
access line does, the way A2Billing-era scripts do it: sqlite3 on the same schema, the card
looked up by number, the PIN checked against its stored hash (ivr.secrets.check_pin under
the server's PIN key ring, the file given as second argument: the same cost as ours), the
balance read, the destination normalised (ivr.numbers.normalise),
the longest matching prefix found with one SQL query (``prefix IN (...)`` over every prefix
of the number), the affordable seconds computed in Decimal, a reservation row inserted
(and the account's ``reserved`` raised) in one transaction, the minutes announced, then
``EXEC Dial``. After Dial the reservation is released and the caller may call again.

    python3 bench/classic_agi.py DATABASE [PIN_KEY_FILE] < agi environment

bench/callsetup.py plays Asterisk itself and is answered with bare sound names. In a real
Asterisk (bench/capacity.py: ``AGI()`` in the ``ivr-bench-classic`` context) two options
make it play and bill what the access line does:

    python3 bench/classic_agi.py --store DIR --settle DATABASE PIN_KEY_FILE

``--store DIR``: the prompt store (``DIR/<lang>/<id>/v<n>.*``, as Asterisk sees it): each
prompt id is played from its newest version there, the same files as the server's; names
the store lacks (``digits/dollars``, ``minutes``) are Asterisk's core sounds.
``--settle``: Dial hands the called channel ``U(ivr-access-answered^<seconds>^<key>)``,
so Asterisk limits the call and records its answered length in AstDB (``ivr-calls/<key>``,
dialplan/ivr-access.conf); after Dial the record is read and an answered call is charged
for its whole answered seconds: ledger entry, balance, reservation and CDR in one SQLite
transaction (A2Billing style, raw SQL on the server's schema), then the cost and the new
balance are said as the server says them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sqlite3
import sys
import time
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Decimal
from pathlib import Path

from asterisk.agi import AGI, AGIAppError, AGIHangup

from ivr.numbers import InvalidNumber, normalise
from ivr.secrets import PinKeys, check_pin

MICROS = Decimal(10**6)  # money columns hold integer micro-units
QUANTUM = Decimal("0.0001")  # the test plan's 4 decimals, rounded up
MAX_SECONDS = 86_400
DIAL_TIMEOUT = 60
TRUNK = "Local/{number}@ivr-test-callee"
REGION = "US"
TRIES = 3
LANG = "en"
ASTDB_FAMILY = "ivr-calls"  # the answered call's record (dialplan/ivr-access.conf)
RECORD_WAIT = 3.0  # seconds to wait for an answered call's record, as the server does
RECORD_POLL = 0.05
VERSION_RE = re.compile(r"v(\d+)\.")


class Sounds:
    """Prompt ids to what STREAM FILE plays: the newest version in the store, else the
    name itself (a core sound; and without a store, as bench/callsetup.py expects)."""

    def __init__(self, store: str | None = None) -> None:
        self.store = store
        self.cache: dict[str, str] = {}

    def __call__(self, name: str) -> str:
        if self.store is None:
            return name
        found = self.cache.get(name)
        if found is None:
            folder = os.path.join(self.store, LANG, name)
            try:
                versions = [int(m.group(1)) for f in os.listdir(folder)
                            if (m := VERSION_RE.match(f))]
            except OSError:
                versions = []
            found = f"{folder}/v{max(versions)}" if versions else name
            self.cache[name] = found
        return found


SOUND = Sounds()


def now() -> str:
    """A timestamp as SQLAlchemy stores a DateTime in SQLite."""
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def say_money(agi: AGI, amount: Decimal) -> None:
    dollars = int(amount)
    cents = int((amount - dollars) * 100)
    if dollars or not cents:
        agi.say_number(dollars)
        agi.stream_file(SOUND("unit-dollar" if dollars == 1 else "digits/dollars"))
    if cents:
        if dollars:
            agi.stream_file(SOUND("vm-and"))
        agi.say_number(cents)
        agi.stream_file(SOUND("unit-cent" if cents == 1 else "unit-cents"))


def log_in(agi: AGI, db: sqlite3.Connection, keys: PinKeys | None) -> tuple[int, int] | None:
    """(card id, account id) of a card whose number and PIN were typed, or None."""
    for _ in range(TRIES):
        number = agi.get_data(SOUND("enter-card-number"), 10000, 20)
        row = db.execute(
            "SELECT cards.id, cards.pin_hash, cards.account_id FROM cards"
            " JOIN accounts ON accounts.id = cards.account_id"
            " WHERE cards.number = ? AND cards.status = 'active' AND accounts.status = 'active'"
            " AND (cards.expires_on IS NULL OR cards.expires_on >= date('now'))",
            (number,),
        ).fetchone()
        if row is None:
            agi.stream_file(SOUND("invalid-card"))
            continue
        card_id, pin_hash, account_id = row
        for _ in range(TRIES):
            pin = agi.get_data(SOUND("enter-pin"), 10000, 12)
            if check_pin(pin, pin_hash, number, keys):
                return card_id, account_id
            agi.stream_file(SOUND("wrong-pin"))
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


def charge_for(row: tuple, seconds: int) -> Decimal:
    """What ``seconds`` answered cost at a rate row: the connect fee, then the seconds
    rounded up to the billing increment, the total rounded up to the plan's 4 decimals."""
    _, _, connect_fee, per_unit, unit, increment = row
    if seconds <= 0:
        return Decimal(0)
    billed = -(-seconds // increment) * increment
    cost = Decimal(connect_fee) / MICROS + Decimal(per_unit) / MICROS * billed / unit
    return cost.quantize(QUANTUM, rounding=ROUND_CEILING)


def settle(db: sqlite3.Connection, reservation_id: int, account_id: int, key: str,
           billsec: int, caller: str, status: str) -> tuple[int, Decimal, Decimal]:
    """Charge an answered call for its answered seconds (at most the grant): the ledger
    entry, the balance, the reservation and the CDR in one transaction. Returns (seconds,
    cost, balance after)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        card_id, plan_id, number, prefix, destination, granted, held, created, plan = db.execute(
            "SELECT r.card_id, r.plan_id, r.number, r.prefix, r.destination, r.seconds,"
            " r.amount, r.created_at, p.name FROM reservations r"
            " JOIN rating_plans p ON p.id = r.plan_id WHERE r.id = ? AND r.status = 'active'",
            (reservation_id,),
        ).fetchone()
        seconds = min(billsec, granted)
        row = rate(db, plan_id, number)
        cost = charge_for(row, seconds) if row is not None else Decimal(0)
        balance, reserved, currency = db.execute(
            "SELECT balance, reserved, currency FROM accounts WHERE id = ?", (account_id,)
        ).fetchone()
        ceiling = balance - (reserved - held)  # never below zero
        micros = min(int(cost * MICROS), max(ceiling, 0))
        cost = Decimal(micros) / MICROS
        after = balance - micros
        stamp = now()
        db.execute("UPDATE accounts SET balance = ?, reserved = reserved - ? WHERE id = ?",
                   (after, held, account_id))
        if micros:
            db.execute(
                "INSERT INTO ledger_entries (account_id, kind, amount, balance_after, ref,"
                " note, created_at) VALUES (?, 'call', ?, ?, ?, ?, ?)",
                (account_id, -micros, after, key, f"{number} {seconds}s", stamp),
            )
        db.execute(
            "UPDATE reservations SET status = 'settled', uniqueid = ?, closed_at = ?"
            " WHERE id = ?", (key, stamp, reservation_id),
        )
        db.execute(
            "INSERT INTO cdrs (uniqueid, account_id, card_id, reservation_id, caller,"
            " destination, destination_name, prefix, plan, service, started_at, answered_at,"
            " ended_at, billable_seconds, cost, currency, hangup_cause)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'voice', ?, NULL, ?, ?, ?, ?, ?)",
            (key, account_id, card_id, reservation_id, caller, number, destination, prefix,
             plan, created, stamp, seconds, micros, currency, status),
        )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return seconds, cost, Decimal(after) / MICROS


def answered_record(agi: AGI, key: str, status: str) -> str | None:
    """The AstDB record the called channel's hang-up handler writes (``ANSWER,<ms>``);
    an answered call's is waited for, as the server does."""
    deadline = time.monotonic() + RECORD_WAIT
    while True:
        result = agi.execute("DATABASE GET", ASTDB_FAMILY, key)["result"]
        if result[0] == "1":
            return str(result[1])
        if status != "ANSWER" or time.monotonic() > deadline:
            return None
        time.sleep(RECORD_POLL)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", help="the prompt store, as Asterisk sees it")
    parser.add_argument("--settle", action="store_true",
                        help="charge answered calls (real Asterisk: ivr-access-answered)")
    parser.add_argument("database")
    parser.add_argument("pin_key_file", nargs="?")
    return parser.parse_args(argv)


def main() -> int:
    args = parse_args(sys.argv[1:])
    SOUND.store = args.store
    # The PIN key ring file (pin.key), as the server reads it: cards issued under it
    # have keyed PIN hashes; without it only scrypt hashes can be checked.
    keys = PinKeys.parse(Path(args.pin_key_file).read_text()) if args.pin_key_file else None
    agi = AGI()
    try:
        return session(agi, args, keys)
    except (AGIHangup, AGIAppError):  # the caller hung up (GET DATA's -1 is an AGIAppError)
        return 0


def session(agi: AGI, args: argparse.Namespace, keys: PinKeys | None) -> int:
    uniqueid, channel = agi.env.get("agi_uniqueid", "call"), agi.env.get("agi_channel", "")
    caller = agi.env.get("agi_callerid", "")
    agi.answer()
    agi.stream_file(SOUND("welcome"))
    db = sqlite3.connect(args.database, timeout=30, isolation_level=None)
    db.execute("PRAGMA busy_timeout = 30000")
    who = log_in(agi, db, keys)
    if who is None:
        agi.stream_file(SOUND("too-many-attempts"))
        agi.hangup()
        return 0
    card_id, account_id = who
    balance, reserved = db.execute(
        "SELECT balance, reserved FROM accounts WHERE id = ?", (account_id,)
    ).fetchone()
    agi.stream_file(SOUND("your-balance-is"))
    say_money(agi, Decimal(balance - reserved) / MICROS)
    attempt = 0
    while True:
        typed = agi.get_data(SOUND("enter-destination"), 10000, 20)
        try:
            number = normalise(typed, REGION)
        except InvalidNumber:
            agi.stream_file(SOUND("invalid-number"))
            continue
        attempt += 1
        key = f"{uniqueid}-{attempt}"
        held = reserve(db, card_id, account_id, number, key, channel)
        if held is None:
            agi.stream_file(SOUND("unknown-destination"))
            continue
        reservation_id, seconds, amount = held
        try:
            agi.stream_file(SOUND("you-have"))
            agi.say_number(seconds // 60)
            agi.stream_file(SOUND("minutes"))
            agi.stream_file(SOUND("for-this-call"))
            agi.stream_file(SOUND("connecting"))
            agi.set_variable("IVR_SETTLED", "0")
            agi.set_variable("IVR_CALL_KEY", key)
            agi.set_variable("CHANNEL(hangup_handler_push)", "ivr-access-hangup,s,1")
            agi.set_variable("TIMEOUT(absolute)", DIAL_TIMEOUT + seconds + 30)
        except AGIHangup:
            release(db, reservation_id, account_id, amount, "HANGUP")
            raise
        target = f"{TRUNK.format(number=number)},{DIAL_TIMEOUT}"
        if args.settle:
            target += f",U(ivr-access-answered^{seconds}^{key})"
        # Dial returns -1 when the called party hangs up first (the caller's channel is
        # still up: no "g" option is needed under AGI); pyst2 raises for any -1.
        with contextlib.suppress(AGIAppError):
            agi.appexec("Dial", target)
        status = agi.get_variable("DIALSTATUS") or "UNKNOWN"
        record = answered_record(agi, key, status) if args.settle else None
        if record is not None and record.startswith("ANSWER,"):
            ms = record.partition(",")[2]
            billsec = int(ms) // 1000 if ms.isdigit() else 0
            _, cost, after = settle(db, reservation_id, account_id, key, billsec, caller,
                                    status)
            agi.set_variable("IVR_SETTLED", "1")
            agi.execute("DATABASE DEL", ASTDB_FAMILY, key)
            agi.set_variable("TIMEOUT(absolute)", 0)
            agi.stream_file(SOUND("call-cost"))
            say_money(agi, cost)
            agi.stream_file(SOUND("your-balance-is"))
            say_money(agi, after)
        else:
            release(db, reservation_id, account_id, amount, status)
            if args.settle:
                agi.set_variable("IVR_SETTLED", "1")
                agi.execute("DATABASE DEL", ASTDB_FAMILY, key)
            agi.stream_file(SOUND("no-answer" if status == "NOANSWER" else "call-failed"))
        if agi.get_data(SOUND("another-call"), 5000, 1) != "1":
            break
    agi.stream_file(SOUND("goodbye"))
    agi.hangup()
    db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
