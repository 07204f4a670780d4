"""A reservation's rate snapshot quotes its number exactly as the full table did."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from ivr.rating import NoRate, Plan, RateTable, max_seconds, parse_deck, quote
from ivr.rating.snapshot import dump_snapshot, load_snapshot, snapshot_rows

# Steps, time windows with gaps filled by shorter prefixes, a fallback, two services.
DECK = """\
plan,prefix,destination,connect_fee,rate,rate_unit,increment,from_second,days,start,end,service
p,*,Anywhere,0.05,1.20,60,60,0,,,,
p,44,UK,0.10,0.60,60,30,0,,,,
p,44,UK,,0.30,60,6,30,,,,
p,4420,London,0,0.90,60,1,0,mon-fri,08:00,19:00,
p,4420,London,0,0.45,60,1,0,sat-sun,,,
p,44207,London Central,0,1.50,60,10,0,*,12:00,13:00,
p,1,USA,0,0.06,60,6,0,,,,
p,1,USA,0,0.002,1,1,0,,,,data
"""
PLAN = Plan("p", "EUR", tz="Europe/London", decimals=3, max_cost=Decimal("40"))
NUMBERS = ["442079460000", "4420123", "447700900123", "15551234567", "861380013800", "4"]


def test_snapshots_quote_like_the_full_table():
    table = RateTable.build([PLAN], parse_deck(DECK))
    rnd = random.Random(7)
    start = datetime(2026, 3, 27, 0, 0, tzinfo=UTC)  # DST in London on the 29th
    for _ in range(400):
        number = rnd.choice(NUMBERS)
        service = rnd.choice(["voice", "voice", "data"])
        at = start + timedelta(minutes=rnd.randrange(5 * 1440))
        try:
            full = quote(table, PLAN, number, rnd.randrange(1, 7200), at, service, detail=True)
        except NoRate:
            continue
        text = dump_snapshot(PLAN, snapshot_rows(table, PLAN, number, service))
        plan, small = load_snapshot(text)
        assert plan == PLAN
        again = quote(small, plan, number, full.seconds, at, service, detail=True)
        assert again == full
        balance = Decimal(rnd.randrange(0, 5000)) / 100
        assert max_seconds(small, plan, number, balance, at, service) == max_seconds(
            table, PLAN, number, balance, at, service)


def test_a_snapshot_is_small_and_holds_only_the_numbers_prefixes():
    table = RateTable.build([PLAN], parse_deck(DECK))
    text = dump_snapshot(PLAN, snapshot_rows(table, PLAN, "442079460000", "voice"))
    prefixes = {row[0] for row in json.loads(text)["rows"]}
    assert prefixes == {"*", "44", "4420", "44207"}
    assert len(text) < 600
    assert load_snapshot(text) is load_snapshot(text)  # parsed once per distinct text
