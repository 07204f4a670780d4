"""Worked examples of the rating engine with exact, hand-computed costs."""

import dataclasses
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from ivr.rating import (
    MAX_CALL_SECONDS,
    NoRate,
    Plan,
    Quote,
    RateTable,
    Rounding,
    max_seconds,
    parse_deck,
    quote,
)
from ivr.rating.deck import IVR_COLUMNS

DOC = Path(__file__).resolve().parents[2] / "docs" / "rating.md"
ASTPP_DECK = (
    Path(__file__).resolve().parents[3] / "shared/data/ratedecks/astpp_outbound_routes_AZ.csv"
)
HEADER = ",".join(IVR_COLUMNS) + "\n"
LONDON = ZoneInfo("Europe/London")
D = Decimal


def make(deck: str, **plan_kwargs) -> tuple[RateTable, Plan]:
    plan = Plan(**{"name": "p", "currency": "EUR", "decimals": 4, **plan_kwargs})
    return RateTable.build([plan], parse_deck(HEADER + deck)), plan


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def london(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=LONDON)


MONDAY = utc("2024-06-03T09:00:00")


def cost(table, plan, number, seconds, at=MONDAY, service="voice") -> Decimal:
    fast = quote(table, plan, number, seconds, at, service)
    slow = quote(table, plan, number, seconds, at, service, detail=True)
    assert slow.cost == fast.cost and slow.charged_seconds == fast.charged_seconds
    assert sum(p.seconds for p in slow.pieces) == slow.charged_seconds
    return fast.cost


# --- the worked example of docs/rating.md ---------------------------------------------


def _doc_table(doc: str, header: str) -> list[list[str]]:
    lines = doc[doc.index(header) :].splitlines()[2:]
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    assert rows, f"no rows under {header!r}"
    return rows


@pytest.fixture(scope="module")
def demo() -> tuple[RateTable, Plan, str]:
    doc = DOC.read_text()
    block = re.search(r"## Worked example.*?```csv\n(.*?)```", doc, re.S)
    assert block, "docs/rating.md lost its worked example deck"
    plan = Plan("demo", "EUR", tz="Europe/London", decimals=2, rounding=Rounding.UP)
    assert "EUR, time zone `Europe/London`, 2 decimals, rounding `up`" in doc
    return RateTable.build([plan], parse_deck(block[1])), plan, doc


def test_docs_worked_example_quotes(demo):
    table, plan, doc = demo
    rows = _doc_table(doc, "| number | service | answered (UTC) | seconds | cost |")
    assert len(rows) == 8
    for number, service, at, seconds, expected, _why in rows:
        got = cost(table, plan, number, int(seconds), datetime.fromisoformat(at), service)
        assert got == D(expected), (number, at, seconds)
        assert str(got) == expected  # written with the plan's 2 decimals


def test_docs_worked_example_max_seconds(demo):
    table, plan, doc = demo
    rows = _doc_table(doc, "| number | answered (UTC) | balance | max_seconds |")
    assert len(rows) == 4
    for number, at, balance, expected, _why in rows:
        got = max_seconds(table, plan, number, D(balance), datetime.fromisoformat(at))
        assert got == int(expected), (number, balance)


def test_worked_example_breakdown_at_19h(demo):
    table, plan, _ = demo
    q = quote(table, plan, "447700900123", 150, utc("2024-06-05T17:58:30"), detail=True)
    assert [(p.offset, p.seconds, p.window, p.rate) for p in q.pieces] == [
        (0, 60, "mon-fri 07:00-19:00", D("0.20")),
        (60, 30, "mon-fri 07:00-19:00", D("0.12")),
        (90, 60, "mon-fri 19:00-07:00", D("0.08")),
    ]
    assert (q.prefix, q.destination, q.currency) == ("447", "UK mobile", "EUR")


# --- steps, increments, connect fee ---------------------------------------------------

A2B = "p,34,Spain,,0.06,,30,0,,,,\np,34,,,0.06,,6,30,,,,\n"  # 0.001/s, 30/6


@pytest.mark.parametrize(
    ("seconds", "expected", "charged"),
    [
        (1, "0.030", 30),  # the whole initial 30 s block
        (30, "0.030", 30),
        (31, "0.036", 36),  # then 6 s blocks
        (36, "0.036", 36),
        (37, "0.042", 42),
        (3600, "3.600", 3600),
    ],
)
def test_a2billing_30_6(seconds, expected, charged):
    table, plan = make(A2B)
    q = quote(table, plan, "34911", seconds, MONDAY)
    assert q.cost == D(expected) and q.charged_seconds == charged


def test_first_minute_then_per_second_at_a_lower_rate():
    table, plan = make("p,1,,,0.60,,60,0,,,,\np,1,,,0.30,,1,60,,,,\n")
    assert cost(table, plan, "1555", 1) == D("0.60")
    assert cost(table, plan, "1555", 60) == D("0.60")
    assert cost(table, plan, "1555", 61) == D("0.605")
    assert cost(table, plan, "1555", 90) == D("0.75")


def test_an_increment_past_the_next_step_is_charged_whole_at_its_own_step():
    # 45 s increments until second 60: they start at 0 and 45 (45 < 60); the next starts at
    # 90, already in the 1 s step. 91 s = 2 x 45 s at 0.60/min + 1 s at 0.06/min.
    table, plan = make("p,1,,,0.60,,45,0,,,,\np,1,,,0.06,,1,60,,,,\n")
    assert cost(table, plan, "1", 46) == D("0.90")
    assert cost(table, plan, "1", 90) == D("0.90")
    assert cost(table, plan, "1", 91) == D("0.901")


def test_connect_fee_once_per_answered_call():
    table, plan = make("p,1,,0.25,0.60,,60,,,,,\n")
    assert cost(table, plan, "1", 1) == D("0.85")
    assert cost(table, plan, "1", 121) == D("2.05")  # 0.25 + 3 minutes, fee not repeated
    unanswered = quote(table, plan, "1", 0, MONDAY)
    assert unanswered.cost == 0 and unanswered.connect_fee == 0 and unanswered.charged_seconds == 0
    assert quote(table, plan, "1", 1, MONDAY).connect_fee == D("0.25")


def test_connect_fee_is_the_one_of_the_window_at_answer_time():
    table, plan = make(
        "p,1,,0.50,0.60,,60,,mon-fri,07:00,19:00,\np,1,,0.10,0.30,,60,,mon-fri,19:00,07:00,\n",
        tz="UTC",
    )
    # 18:59 peak: fee 0.50 + 1 min peak 0.60 + 1 min night 0.30.
    assert cost(table, plan, "1", 120, utc("2024-06-03T18:59:00")) == D("1.40")
    # 19:00 night: fee 0.10 + 2 min night.
    assert cost(table, plan, "1", 120, utc("2024-06-03T19:00:00")) == D("0.70")


# --- prefix matching ------------------------------------------------------------------

MATCHING = (
    "p,*,Anywhere,,9,,60,,,,,\n"
    "p,4,Four,,4,,60,,,,,\n"
    "p,44,UK,,44,,60,,,,,\n"
    "p,441,UK one,,441,,60,,,,,\n"
    "p,4412345,Deep,,7,,60,,,,,\n"
)


@pytest.mark.parametrize(
    ("number", "prefix", "price"),
    [
        ("4412", "441", "441"),
        ("44123", "441", "441"),
        ("4412345", "4412345", "7"),
        ("44123456789", "4412345", "7"),
        ("4420", "44", "44"),
        ("44", "44", "44"),
        ("49", "4", "4"),
        ("4", "4", "4"),
        ("5", "*", "9"),
        ("+44", "*", "9"),  # matched as given: no normalisation
        ("0044", "*", "9"),
    ],
)
def test_longest_prefix_wins_then_fallback(number, prefix, price):
    table, plan = make(MATCHING)
    q = quote(table, plan, number, 60, MONDAY)
    assert (q.prefix, q.cost) == (prefix, D(price))


def test_unknown_destination_is_refused():
    table, plan = make("p,44,UK,,0.10,,,,,,,\n")
    with pytest.raises(NoRate) as caught:
        quote(table, plan, "33123", 60, MONDAY)
    assert caught.value.reason == "no matching prefix"
    assert (caught.value.number, caught.value.plan, caught.value.service) == ("33123", "p", "voice")
    with pytest.raises(NoRate):
        quote(table, plan, "33123", 0, MONDAY)  # refused even unanswered
    with pytest.raises(NoRate):
        max_seconds(table, plan, "33123", D(10), MONDAY)
    with pytest.raises(NoRate, match="empty number"):
        quote(table, plan, "", 60, MONDAY)


def test_empty_number_is_refused_even_with_a_fallback():
    table, plan = make("p,*,,,0.10,,,,,,,\n")
    with pytest.raises(NoRate, match="empty number"):
        quote(table, plan, "", 60, MONDAY)


# --- time windows and time zones --------------------------------------------------------

PEAK = (
    "p,1,,,0.60,,60,,mon-fri,07:00,19:00,\n"  # 0.01/s
    "p,1,,,0.30,,60,,mon-fri,19:00,07:00,\n"  # 0.005/s
    "p,1,,,0.06,,60,,sat-sun,,,\n"  # 0.001/s
)


def test_crossing_19h_straddling_increment_priced_where_it_starts():
    table, plan = make(PEAK, tz="Europe/London")
    at = london("2024-06-05T18:58:30")  # Wednesday
    # Increments start at 18:58:30 and 18:59:30 (peak), 19:00:30 (night).
    assert cost(table, plan, "1", 180, at) == D("1.50")
    assert cost(table, plan, "1", 120, at) == D("1.20")
    # Starting exactly at 19:00:00: all night.
    assert cost(table, plan, "1", 180, london("2024-06-05T19:00:00")) == D("0.90")


def test_crossing_midnight_into_the_weekend():
    table, plan = make(PEAK, tz="Europe/London")
    q = quote(table, plan, "1", 300, london("2024-06-07T23:58:00"), detail=True)  # Friday
    assert q.cost == D("0.60") + D("0.18")  # 2 min night + 3 min weekend
    assert [(p.offset, p.window) for p in q.pieces] == [
        (0, "mon-fri 19:00-07:00"),
        (120, "sat-sun 00:00-24:00"),
    ]
    # Sunday night into Monday night rates.
    assert cost(table, plan, "1", 180, london("2024-06-09T23:59:00")) == D("0.06") + D("0.60")


def test_night_window_wraps_on_its_own_day():
    table, plan = make(PEAK, tz="UTC")
    assert cost(table, plan, "1", 60, utc("2024-06-03T03:00:00")) == D("0.30")  # Mon 03:00
    assert cost(table, plan, "1", 60, utc("2024-06-08T03:00:00")) == D("0.06")  # Sat 03:00


def test_plan_time_zone_decides_the_window_not_utc():
    london_plan = Plan("london", "GBP", tz="Europe/London")
    tokyo_plan = Plan("tokyo", "JPY", tz="Asia/Tokyo")
    rows = parse_deck(HEADER + PEAK.replace("p,", "london,") + PEAK.replace("p,", "tokyo,"))
    table = RateTable.build([london_plan, tokyo_plan], rows)
    at = utc("2024-06-05T18:30:00")  # 19:30 in London (BST), Thursday 03:30 in Tokyo
    assert cost(table, london_plan, "1", 60, at) == D("0.30")  # night
    assert cost(table, tokyo_plan, "1", 60, at) == D("0.30")  # night
    at = utc("2024-06-05T17:30:00")  # 18:30 London: peak; 02:30 Tokyo: night
    assert cost(table, london_plan, "1", 60, at) == D("0.60")
    assert cost(table, tokyo_plan, "1", 60, at) == D("0.30")
    # The same instant written in another zone is the same call.
    same = at.astimezone(ZoneInfo("America/New_York"))
    assert quote(table, london_plan, "1", 600, same) == quote(table, london_plan, "1", 600, at)


def test_summer_time_starts_mid_call():
    # 2024-03-31 01:00 UTC: London jumps from 01:00 GMT to 02:00 BST.
    table, plan = make(
        "p,1,,,0.60,,60,,,00:00,02:00,\np,1,,,0.06,,60,,,02:00,24:00,\n", tz="Europe/London"
    )
    at = utc("2024-03-31T00:59:00")  # 00:59 local
    q = quote(table, plan, "1", 120, at, detail=True)
    assert q.cost == D("0.66")  # the second minute starts at 02:00 BST, not 01:00
    assert [p.offset for p in q.pieces] == [0, 60]
    # Given as a London wall time, at is still the right instant.
    assert quote(table, plan, "1", 120, london("2024-03-31T00:59:00")).cost == D("0.66")


def test_summer_time_ends_mid_call():
    # 2024-10-27 01:00 UTC: London goes back from 02:00 BST to 01:00 GMT. Window P holds
    # 01:30-02:00 local, which happens twice that night.
    table, plan = make(
        "p,1,,,0.60,,60,,,01:30,02:00,\np,1,,,0.06,,60,,,02:00,01:30,\n", tz="Europe/London"
    )
    at = utc("2024-10-27T00:25:00")  # 01:25 BST
    q = quote(table, plan, "1", 80 * 60, at, detail=True)
    # 01:25-01:30 BST Q (5), 01:30-02:00 BST P (30), 01:00-01:30 GMT Q (30), 01:30-01:45 GMT P (15)
    assert [(p.offset // 60, p.seconds // 60, p.rate) for p in q.pieces] == [
        (0, 5, D("0.06")),
        (5, 30, D("0.60")),
        (35, 30, D("0.06")),
        (65, 15, D("0.60")),
    ]
    assert q.cost == 35 * D("0.06") + 45 * D("0.60")


def test_a_partial_window_prefix_falls_back_per_instant():
    # A weekend promotion on 44 over an always-valid 4.
    table, plan = make("p,4,Four,,0.60,,60,,,,,\np,44,UK promo,,0.06,,60,,sat-sun,,,\n")
    sunday = utc("2024-06-09T23:59:00")
    q = quote(table, plan, "4420", 120, sunday, detail=True)
    assert (q.prefix, q.destination, q.cost) == ("44", "UK promo", D("0.66"))
    assert [p.prefix for p in q.pieces] == ["44", "4"]
    monday = quote(table, plan, "4420", 60, MONDAY)
    assert (monday.prefix, monday.cost) == ("4", D("0.60"))


def test_no_rate_in_force_mid_call():
    table, plan = make("p,4,Four,,0.60,,60,,mon-fri,,,\n")
    friday = utc("2024-06-07T23:58:00")
    assert cost(table, plan, "4", 120, friday) == D("1.20")
    with pytest.raises(NoRate, match=r"no rate in force at 2024-06-08T00:00:00\+00:00"):
        quote(table, plan, "4", 121, friday)
    assert max_seconds(table, plan, "4", D(100), friday) == 120
    with pytest.raises(NoRate, match="no matching prefix has a rate at"):
        quote(table, plan, "4", 60, utc("2024-06-08T12:00:00"))


def test_an_increment_running_into_a_time_without_rate_is_charged_whole():
    # Found by the property test: the call ends before the gap, its last increment does not.
    table, plan = make("p,1,,,0.60,,60,,mon-fri,,12:00,\n", tz="UTC")
    at = utc("2024-06-07T11:59:30")  # Friday; no rate from 12:00
    assert cost(table, plan, "1", 2, at) == D("0.60")
    assert cost(table, plan, "1", 60, at) == D("0.60")
    with pytest.raises(NoRate, match="60 s into the call"):
        quote(table, plan, "1", 61, at)
    assert max_seconds(table, plan, "1", D(100), at) == 60


# --- rounding, cap, services ------------------------------------------------------------


@pytest.mark.parametrize(
    ("rounding", "decimals", "rate", "expected"),
    [
        ("up", 4, "0.01", "0.0017"),  # 10 s at 0.01/min = 0.001666...
        ("half-up", 4, "0.01", "0.0017"),
        ("down", 4, "0.01", "0.0016"),
        ("up", 2, "0.75", "0.13"),  # 10 s at 0.75/min = 0.125 exactly
        ("half-up", 2, "0.75", "0.13"),
        ("down", 2, "0.75", "0.12"),
        ("half-up", 2, "0.72", "0.12"),  # 0.12 exactly: nothing to round
        ("up", 0, "0.72", "1"),
    ],
)
def test_rounding_methods(rounding, decimals, rate, expected):
    table, plan = make(f"p,1,,,{rate},,1,,,,,\n", decimals=decimals, rounding=rounding)
    q = quote(table, plan, "1", 10, MONDAY)
    assert str(q.cost) == expected


def test_rounding_is_applied_once_not_per_piece():
    # 5 s peak + 5 s night at 0.06/min = 0.005 + 0.0025 = 0.0075: rounded up once, 0.01.
    # Rounding each piece up would give 0.02.
    table, plan = make(
        "p,1,,,0.06,,1,,mon-fri,07:00,19:00,\np,1,,,0.03,,1,,mon-fri,19:00,07:00,\n",
        tz="UTC",
        decimals=2,
    )
    q = quote(table, plan, "1", 10, utc("2024-06-03T18:59:55"), detail=True)
    assert len(q.pieces) == 2 and q.cost == D("0.01")


def test_max_cost_caps_the_call():
    table, plan = make("p,1,,0.10,0.60,,60,,,,,\n", decimals=2, max_cost=D("5.00"))
    assert cost(table, plan, "1", 60 * 8) == D("4.90")
    assert cost(table, plan, "1", 60 * 9) == D("5.00")  # 5.50 capped
    assert cost(table, plan, "1", 3600) == D("5.00")
    # With the cap affordable, the call may last up to the limit.
    assert max_seconds(table, plan, "1", D("5.00"), MONDAY) == MAX_CALL_SECONDS
    assert max_seconds(table, plan, "1", D("4.99"), MONDAY) == 8 * 60


def test_services_are_rated_separately():
    table, plan = make(
        "p,*,Voice,,0.60,,60,,,,,\n"
        "p,*,Data,,0.05,1024,1,,,,,data\n"  # per KB unit, 0.05 per MB
        "p,900,Premium,0.50,1.20,,1,,,,,premium\n"
        "p,*,Video,,1.20,,6,,,,,video\n"
    )
    assert cost(table, plan, "900123", 60) == D("0.60")
    assert cost(table, plan, "900123", 60, service="premium") == D("1.70")
    assert cost(table, plan, "1", 2048, service="data") == D("0.10")
    assert cost(table, plan, "1", 1, service="data") == D("0.0001")  # 0.0000488.. up
    assert cost(table, plan, "1", 7, service="video") == D("0.24")
    with pytest.raises(NoRate, match="no rates for service 'sms'"):
        quote(table, plan, "1", 1, MONDAY, "sms")
    with pytest.raises(NoRate):
        quote(table, plan, "1", 1, MONDAY, "premium")  # only 900 is premium
    assert max_seconds(table, plan, "1", D("1.00"), MONDAY, "data") == 20480


# --- max_seconds ------------------------------------------------------------------------


def test_max_seconds_never_lets_the_first_block_overdraw():
    # A2Billing bug #22: 30 s initial block at 0.06/min = 0.03 must fit entirely.
    table, plan = make(A2B)
    assert max_seconds(table, plan, "34", D("0.029"), MONDAY) == 0
    assert max_seconds(table, plan, "34", D("0.03"), MONDAY) == 30
    assert max_seconds(table, plan, "34", D("0.0359"), MONDAY) == 30
    assert max_seconds(table, plan, "34", D("0.036"), MONDAY) == 36
    assert max_seconds(table, plan, "34", D("1"), MONDAY) == 30 + 161 * 6  # 0.97 / 0.006
    assert max_seconds(table, plan, "34", D("-1"), MONDAY) == 0
    for balance in ("0.03", "0.036", "0.5", "1"):
        m = max_seconds(table, plan, "34", D(balance), MONDAY)
        assert cost(table, plan, "34", m) <= D(balance) < cost(table, plan, "34", m + 1)


def test_max_seconds_with_connect_fee_and_rounding():
    table, plan = make("p,1,,0.10,0.01,,1,,,,,\n", decimals=2, rounding="half-up")
    # 0.10 + s x 0.01/60 rounded half-up to cents <= 0.20: s x 0.01/60 < 0.105 -> s <= 629.
    assert max_seconds(table, plan, "1", D("0.20"), MONDAY) == 629
    assert cost(table, plan, "1", 629) == D("0.20") and cost(table, plan, "1", 630) == D("0.21")
    assert max_seconds(table, plan, "1", D("0.09"), MONDAY) == 0


def test_max_seconds_free_destination_and_limit():
    table, plan = make("p,1,,,0,,,,,,,\n")
    assert max_seconds(table, plan, "1", D(0), MONDAY) == MAX_CALL_SECONDS
    assert max_seconds(table, plan, "1", D(0), MONDAY, limit=90) == 90
    table, plan = make("p,1,,,0.60,,60,,,,,\n")
    assert max_seconds(table, plan, "1", D(1000), MONDAY, limit=90) == 90
    assert max_seconds(table, plan, "1", D(1000), MONDAY, limit=0) == 0


def test_max_seconds_across_windows():
    table, plan = make(PEAK, tz="UTC")
    at = utc("2024-06-05T18:58:00")  # 2 peak minutes then night
    # 1.20 for 2 peak minutes + 0.80 / 0.30 = 2 whole night minutes.
    assert max_seconds(table, plan, "1", D("2.00"), at) == 240
    assert cost(table, plan, "1", 240, at) == D("1.80")
    assert cost(table, plan, "1", 241, at) == D("2.10")


# --- API details ------------------------------------------------------------------------


def test_quote_is_a_frozen_value():
    table, plan = make(A2B)
    q = quote(table, plan, "34911", 31, MONDAY)
    assert q == Quote("p", "voice", "34911", "34", "Spain", 31, 36, D("0.036"), "EUR", D(0))
    assert hash(q) == hash(dataclasses.replace(q))
    with pytest.raises(dataclasses.FrozenInstanceError):
        q.cost = D(0)  # type: ignore[misc]
    assert q == quote(table, "p", "34911", 31, MONDAY)  # plan by name


def test_bad_arguments():
    table, plan = make(A2B)
    with pytest.raises(ValueError, match="timezone-aware"):
        quote(table, plan, "34", 1, datetime(2024, 6, 3, 9))
    with pytest.raises(ValueError, match=">= 0"):
        quote(table, plan, "34", -1, MONDAY)
    with pytest.raises(TypeError):
        quote(table, plan, "34", 1.5, MONDAY)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        quote(table, plan, "34", True, MONDAY)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="never a float"):
        max_seconds(table, plan, "34", 1.0, MONDAY)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown plan"):
        quote(table, "nope", "34", 1, MONDAY)
    with pytest.raises(ValueError, match="differs"):
        quote(table, dataclasses.replace(plan, decimals=2), "34", 1, MONDAY)
    same = dataclasses.replace(plan)
    assert same is not plan
    assert quote(table, same, "34", 1, MONDAY).cost == D("0.03")


def test_long_calls_across_many_windows_match_the_sum_of_their_days():
    table, plan = make(PEAK, tz="Europe/London")
    start = london("2024-06-03T00:00:00")  # a whole week from Monday 00:00
    week = quote(table, plan, "1", 7 * 86400, start, detail=True)
    weekday = 12 * 60 * D("0.60") + 12 * 60 * D("0.30")
    assert week.cost == 5 * weekday + 2 * 24 * 60 * D("0.06")
    # Night and peak alternate from Monday 00:00 to Friday 19:00-24:00, then the weekend.
    assert [p.rate for p in week.pieces] == [D("0.30"), D("0.60")] * 5 + [D("0.30"), D("0.06")]
    offsets = [start + timedelta(seconds=p.offset) for p in week.pieces[-2:]]
    assert offsets == [london("2024-06-07T19:00:00"), london("2024-06-08T00:00:00")]


def test_exact_whatever_the_callers_decimal_context():
    table, plan = make("p,1,,,0.0123,1,1,,,,,data\n", decimals=6)
    with localcontext() as ctx:
        ctx.prec = 3
        assert quote(table, plan, "1", 12_345, MONDAY, "data").cost == D("151.843500")
        huge = quote(table, plan, "1", 10**40 + 1, MONDAY, "data").cost
    assert huge == D("123" + "0" * 36 + ".012300")  # 1.23e38 + 0.0123


def test_real_deck_quote():
    assert ASTPP_DECK.is_file(), f"missing rate deck {ASTPP_DECK}"
    from ivr.rating import load_deck

    plan = Plan("az", "USD")
    table = RateTable.build([plan], load_deck(ASTPP_DECK, format="astpp", plan="az"))
    q = quote(table, plan, "93701234567", 61, MONDAY)
    # 9370 Afghanistan Cellular-AWCC at 0.10400/min in 6 s increments: 66 s = 0.1144.
    assert (q.prefix, q.destination, q.charged_seconds, q.cost) == (
        "9370",
        "Afghanistan Cellular-AWCC",
        66,
        D("0.1144"),
    )
    assert quote(table, plan, "9371", 61, MONDAY).prefix == "937"
    assert quote(table, plan, "9361", 61, MONDAY).prefix == "93"
    with pytest.raises(NoRate):
        quote(table, plan, "0000", 61, MONDAY)
