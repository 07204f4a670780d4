"""Property tests of the rating engine against a naive reference.

The reference rates a call increment by increment: it converts each increment's start
instant to the plan's local time, picks the longest matching prefix with a row holding
then, sums exact fractions and rounds once with Decimal.quantize. The engine (fast path,
general path and max_seconds) must agree with it exactly.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal, localcontext
from fractions import Fraction
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ivr.rating import NoRate, Plan, RateTable, Rounding, max_seconds, parse_deck, quote
from ivr.rating.deck import IVR_COLUMNS
from ivr.rating.money import max_numerator, round_ratio

# RATING_EXAMPLES=5000 for a longer local run.
PROPS = settings(
    max_examples=int(os.environ.get("RATING_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Each prefix takes one of these window sets (days as weekday numbers, start, end minutes,
# and the CSV spelling). Some cover the whole week, some leave gaps.
WEEKDAYS, WEEKEND, EVERY = (0, 1, 2, 3, 4), (5, 6), (0, 1, 2, 3, 4, 5, 6)
WINDOW_SETS = [
    [(EVERY, 0, 1440, "*", "", "")],
    [
        (WEEKDAYS, 420, 1140, "mon-fri", "07:00", "19:00"),
        (WEEKDAYS, 1140, 420, "mon-fri", "19:00", "07:00"),
        (WEEKEND, 0, 1440, "sat,sun", "", ""),
    ],
    [(EVERY, 90, 120, "*", "01:30", "02:00"), (EVERY, 120, 90, "*", "02:00", "01:30")],
    [(WEEKDAYS, 0, 1440, "mon-fri", "00:00", "24:00")],
    [(EVERY, 0, 720, "*", "", "12:00"), (WEEKEND, 720, 1440, "sat-sun", "12:00", "")],
]
ZONES = ["UTC", "Europe/London", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]
# Dates around DST changes of those zones, and ordinary ones.
DATES = ["2024-03-10", "2024-03-31", "2024-04-07", "2024-06-07", "2024-10-06", "2024-10-27",
         "2024-11-03", "2024-12-31"]  # fmt: skip
PREFIXES = ["*", "1", "12", "123", "2", "21"]
NUMBERS = ["1", "12", "123", "1234", "2", "21", "219", "3", "9", ""]


@dataclass(frozen=True)
class Step:
    from_second: int
    increment: int
    rate: Decimal
    rate_unit: int
    connect_fee: Decimal


@dataclass(frozen=True)
class Rate:
    prefix: str
    days: tuple[int, ...]
    start: int
    end: int
    steps: tuple[Step, ...]
    csv_window: tuple[str, str, str]


def money(max_units: int = 3000) -> st.SearchStrategy[Decimal]:
    return st.builds(
        lambda n, k: Decimal(n).scaleb(-k),
        st.integers(0, max_units),
        st.integers(0, 4),
    )


@st.composite
def steps(draw) -> tuple[Step, ...]:
    froms = sorted(draw(st.sets(st.integers(1, 400), max_size=2)))
    out = []
    for i, f in enumerate([0, *froms]):
        fee = draw(st.one_of(st.just(Decimal(0)), money(200))) if i == 0 else Decimal(0)
        out.append(
            Step(
                from_second=f,
                increment=draw(st.sampled_from([1, 1, 6, 30, 60, 45, 7])),
                rate=draw(money()),
                rate_unit=draw(st.sampled_from([60, 60, 1, 7, 100])),
                connect_fee=fee,
            )
        )
    return tuple(out)


@st.composite
def decks(draw) -> list[Rate]:
    prefixes = draw(st.sets(st.sampled_from(PREFIXES), min_size=1))
    rates = []
    for prefix in sorted(prefixes):
        for days, start, end, *spelling in draw(st.sampled_from(WINDOW_SETS)):
            rates.append(Rate(prefix, days, start, end, draw(steps()), tuple(spelling)))
    return rates


@st.composite
def plans(draw) -> Plan:
    decimals = draw(st.integers(0, 6))
    capped = draw(st.booleans())
    return Plan(
        "p",
        "EUR",
        tz=draw(st.sampled_from(ZONES)),
        decimals=decimals,
        rounding=draw(st.sampled_from(list(Rounding))),
        max_cost=Decimal(draw(st.integers(0, 5000))).scaleb(-decimals) if capped else None,
    )


@st.composite
def instants(draw, tz: str, before: int = 4000, rates: list[Rate] | None = None) -> datetime:
    """Up to ``before`` seconds before a window boundary (of ``rates`` if given) or a DST
    change, in the plan's zone; given in UTC or in that zone."""
    times = {m % 1440 for r in rates or [] for m in (r.start, r.end)}
    minute = draw(st.sampled_from(sorted(times | {0, 90, 120, 420, 1140})))
    day = datetime.fromisoformat(draw(st.sampled_from(DATES)))
    at = day + timedelta(days=draw(st.integers(0, 6)), minutes=minute)
    back = timedelta(seconds=draw(st.integers(0, before)), microseconds=draw(st.integers(0, 9)))
    at = at.replace(tzinfo=ZoneInfo(tz)).astimezone(UTC) - back
    return at.astimezone(draw(st.sampled_from([UTC, ZoneInfo(tz)])))


def to_csv(rates: list[Rate]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(IVR_COLUMNS)
    for r in rates:
        for s in r.steps:
            fee = "" if s.connect_fee == 0 else str(s.connect_fee)
            writer.writerow(["p", r.prefix, f"dest {r.prefix}", fee, str(s.rate), s.rate_unit,
                             s.increment, s.from_second, *r.csv_window, ""])  # fmt: skip
    return out.getvalue()


def build(rates: list[Rate], plan: Plan) -> RateTable:
    return RateTable.build([plan], parse_deck(to_csv(rates)))


# --- the reference ----------------------------------------------------------------------

METHODS = {Rounding.UP: ROUND_CEILING, Rounding.HALF_UP: ROUND_HALF_UP, Rounding.DOWN: ROUND_FLOOR}


class Refused(Exception):
    pass


def holds(rate: Rate, local: datetime) -> bool:
    minute = local.hour * 60 + local.minute
    if local.weekday() not in rate.days:
        return False
    if rate.start < rate.end:
        return rate.start <= minute < rate.end
    return minute >= rate.start or minute < rate.end


def rate_at(rates: list[Rate], number: str, instant: datetime, tz: ZoneInfo) -> Rate:
    local = instant.astimezone(tz)
    found = [r for r in rates if number.startswith(r.prefix.strip("*")) and holds(r, local)]
    if not number or not found:
        raise Refused
    return max(found, key=lambda r: -1 if r.prefix == "*" else len(r.prefix))


def reference(rates, plan, number, seconds, at) -> tuple[Decimal, int, str]:
    tz = ZoneInfo(plan.tz)
    start = at.astimezone(UTC)
    first = rate_at(rates, number, start, tz)
    total = Fraction(first.steps[0].connect_fee) if seconds else Fraction(0)
    t = 0
    while t < seconds:
        rate = rate_at(rates, number, start + timedelta(seconds=t), tz)
        step = [s for s in rate.steps if s.from_second <= t][-1]
        total += Fraction(step.rate) * step.increment / step.rate_unit
        t += step.increment
    with localcontext() as ctx:
        ctx.prec = 200
        exact = Decimal(total.numerator) / Decimal(total.denominator)
        cost = exact.quantize(Decimal(1).scaleb(-plan.decimals), rounding=METHODS[plan.rounding])
    if plan.max_cost is not None:
        cost = min(cost, plan.max_cost)
    return cost, t, first.prefix


# --- properties -------------------------------------------------------------------------


@PROPS
@given(data=st.data(), rates=decks(), plan=plans())
def test_quote_equals_the_naive_reference(data, rates, plan):
    table = build(rates, plan)
    number = data.draw(st.sampled_from(NUMBERS))
    seconds = data.draw(st.one_of(st.integers(0, 3000), st.integers(600, 3000)))
    at = data.draw(instants(plan.tz, seconds, rates))
    try:
        expected = reference(rates, plan, number, seconds, at)
    except Refused:
        for detail in (False, True):
            try:
                quote(table, plan, number, seconds, at, detail=detail)
            except NoRate:
                continue
            raise AssertionError("the engine rated a call the reference refuses") from None
        event("refused")
        return
    for detail in (False, True):
        q = quote(table, plan, number, seconds, at, detail=detail)
        assert (q.cost, q.charged_seconds, q.prefix) == expected
        assert q.cost.as_tuple().exponent == -plan.decimals or q.cost == plan.max_cost
    event(f"windows crossed: {min(len({p.window for p in q.pieces}), 3)}")
    event(f"prefixes used: {min(len({p.prefix for p in q.pieces}), 2)}")


@PROPS
@given(data=st.data(), rates=decks(), plan=plans())
def test_cost_never_decreases_as_seconds_grow(data, rates, plan):
    table = build(rates, plan)
    number = data.draw(st.sampled_from(NUMBERS[:-1]))
    at = data.draw(instants(plan.tz, 20_000, rates))
    durations = sorted(data.draw(st.lists(st.integers(0, 20_000), min_size=2, max_size=6)))
    costs = []
    for s in durations:
        try:
            costs.append(quote(table, plan, number, s, at).cost)
        except NoRate:
            break  # a gap: every longer call is refused too
    assert costs == sorted(costs)


@PROPS
@given(data=st.data(), rates=decks(), plan=plans())
def test_max_seconds_is_the_largest_affordable_duration(data, rates, plan):
    table = build(rates, plan)
    number = data.draw(st.sampled_from(NUMBERS[:-1]))
    at = data.draw(instants(plan.tz, 20_000, rates))
    balance = data.draw(money(30_000))
    limit = data.draw(st.integers(0, 8000))
    try:
        m = max_seconds(table, plan, number, balance, at, limit=limit)
    except NoRate:
        try:
            reference(rates, plan, number, 0, at)
        except Refused:
            return
        raise AssertionError("max_seconds refused a number the reference rates") from None
    assert 0 <= m <= limit
    assert quote(table, plan, number, m, at).cost <= balance
    if m < limit:
        try:
            assert quote(table, plan, number, m + 1, at).cost > balance
        except NoRate:
            pass  # the call runs into a time without a rate: cut there


@PROPS
@given(data=st.data(), rates=decks(), plan=plans())
def test_pieces_cover_the_charged_time_in_order(data, rates, plan):
    table = build(rates, plan)
    number = data.draw(st.sampled_from(NUMBERS[:-1]))
    seconds = data.draw(st.integers(1, 200_000))
    at = data.draw(instants(plan.tz, 20_000, rates))
    try:
        q = quote(table, plan, number, seconds, at, detail=True)
    except NoRate:
        return
    assert q.pieces[0].offset == 0
    for before, after in zip(q.pieces, q.pieces[1:], strict=False):
        assert after.offset == before.offset + before.seconds
        assert (before.prefix, before.window, before.rate, before.increment) != (
            after.prefix,
            after.window,
            after.rate,
            after.increment,
        ) or before.rate_unit != after.rate_unit
    assert all(p.seconds % p.increment == 0 for p in q.pieces)
    assert sum(p.seconds for p in q.pieces) == q.charged_seconds
    assert seconds <= q.charged_seconds < seconds + max(p.increment for p in q.pieces)
    assert quote(table, plan, number, seconds, at).cost == q.cost


@PROPS
@given(rates=decks())
def test_deck_csv_round_trip(rates):
    rows = parse_deck(to_csv(rates))
    assert len(rows) == sum(len(r.steps) for r in rates)
    flat = [(r, s) for r in rates for s in r.steps]
    for row, (rate, step) in zip(rows, flat, strict=True):
        assert (row.prefix, row.window.days, row.window.start, row.window.end) == (
            rate.prefix,
            rate.days,
            rate.start,
            rate.end,
        )
        assert (row.rate, row.rate_unit, row.increment, row.from_second, row.connect_fee) == (
            step.rate,
            step.rate_unit,
            step.increment,
            step.from_second,
            step.connect_fee,
        )


# --- money helpers ----------------------------------------------------------------------


@given(
    numerator=st.integers(0, 10**30),
    denominator=st.integers(1, 10**12),
    method=st.sampled_from(list(Rounding)),
)
def test_round_ratio_is_decimal_quantize(numerator, denominator, method):
    with localcontext() as ctx:
        ctx.prec = 100
        exact = Decimal(numerator) / Decimal(denominator)
        expected = exact.quantize(Decimal(1), rounding=METHODS[method])
    assert round_ratio(numerator, denominator, method) == int(expected)


@given(
    limit=st.integers(-5, 10**9),
    denominator=st.integers(1, 10**9),
    factor=st.sampled_from([1, 10, 100, 10**4, 10**6]),
    method=st.sampled_from(list(Rounding)),
)
def test_max_numerator_is_exact(limit, denominator, factor, method):
    n = max_numerator(limit, denominator, factor, method)
    assert n >= -1
    if n >= 0:
        assert round_ratio(n * factor, denominator, method) <= limit
    assert round_ratio((n + 1) * factor, denominator, method) > limit
