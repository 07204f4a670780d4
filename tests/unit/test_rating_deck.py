"""Rate deck parsing and validation (ivr.rating.deck): formats, defaults, refusals."""

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from ivr.rating import (
    DeckError,
    Plan,
    RateRow,
    RateTable,
    Window,
    load_deck,
    parse_astpp,
    parse_deck,
    quote,
)
from ivr.rating.deck import ASTPP_COLUMNS, IVR_COLUMNS, parse_days, parse_time
from ivr.rating.model import ALL_DAYS

REPO = Path(__file__).resolve().parents[2]
ASTPP_DECK = REPO.parent / "shared" / "data" / "ratedecks" / "astpp_outbound_routes_AZ.csv"
HEADER = ",".join(IVR_COLUMNS) + "\n"


def problems_of(text: str, **kwargs) -> dict[int, str]:
    with pytest.raises(DeckError) as caught:
        parse_deck(text, **kwargs)
    lines = [line for line, _ in caught.value.problems]
    assert lines == sorted(lines)
    return {line: reason for line, reason in caught.value.problems}


@pytest.fixture(scope="module")
def astpp_path() -> Path:
    assert ASTPP_DECK.is_file(), (
        f"the ASTPP rate deck is missing: {ASTPP_DECK} (it lives in ../shared/data/ratedecks/ "
        "next to the repository and is always present in CI)"
    )
    return ASTPP_DECK


# --- the project's format -------------------------------------------------------------


def test_full_rows_are_parsed_exactly():
    first, step = parse_deck(
        HEADER
        + "retail,4420,London,0.015,0.0125,30,6,0,mon-fri,07:00,19:30,voice\n"
        + "retail,4420,,,0.01,60,1,60,mon-fri,07:00,19:30,voice\n"
    )
    weekdays = Window((0, 1, 2, 3, 4), 7 * 60, 19 * 60 + 30)
    assert first == RateRow(
        plan="retail",
        prefix="4420",
        rate=Decimal("0.0125"),
        destination="London",
        connect_fee=Decimal("0.015"),
        rate_unit=30,
        increment=6,
        from_second=0,
        window=weekdays,
        service="voice",
    )
    assert step == RateRow("retail", "4420", Decimal("0.01"), from_second=60, window=weekdays)
    assert (first.line, step.line) == (2, 3)
    assert str(first.rate) == "0.0125"  # Decimal(str), not a float's binary expansion


def test_empty_columns_take_defaults():
    (row,) = parse_deck(HEADER + "p,44,,,0.10,,,,,,,\n")
    assert (row.destination, row.connect_fee, row.rate_unit, row.increment) == ("", 0, 60, 1)
    assert (row.from_second, row.service) == (0, "voice")
    assert row.window == Window(ALL_DAYS, 0, 1440)


def test_optional_columns_may_be_missing_and_order_is_free():
    rows = parse_deck("rate,prefix,plan\n0.5,*,p\n1.5,33,p\n")
    assert [(r.prefix, r.rate, r.increment, r.service) for r in rows] == [
        ("*", Decimal("0.5"), 1, "voice"),
        ("33", Decimal("1.5"), 1, "voice"),
    ]


def test_blank_lines_are_skipped_and_line_numbers_stay_physical():
    problems = problems_of(HEADER + "p,44,,,0.10,,,,,,,\n\n\np,45,,,-1,,,,,,,\n")
    assert list(problems) == [5]


def test_quoted_fields_and_day_lists():
    (row,) = parse_deck(HEADER + 'p,44,"Bosnia, fixed",,0.1,,,,"sat,sun",,,\n')
    assert row.destination == "Bosnia, fixed"
    assert row.window.days == (5, 6)


@pytest.mark.parametrize(
    ("text", "days"),
    [
        ("", ALL_DAYS),
        ("*", ALL_DAYS),
        ("mon-fri", (0, 1, 2, 3, 4)),
        ("sat,sun", (5, 6)),
        ("Sat-Sun", (5, 6)),
        ("fri-mon", (0, 4, 5, 6)),
        ("mon,wed-fri", (0, 2, 3, 4)),
        ("sun", (6,)),
    ],
)
def test_days(text, days):
    assert parse_days(text) == days


@pytest.mark.parametrize("text", ["monday", "mon-xyz", "mon,,fri", "1-5"])
def test_bad_days(text):
    with pytest.raises(ValueError, match="unknown day"):
        parse_days(text)


def test_times():
    assert parse_time("", end=False) == 0
    assert parse_time("", end=True) == 1440
    assert parse_time("24:00", end=True) == 1440
    assert parse_time("7:05", end=False) == 425
    for bad in ("24:00", "25:00", "07:60", "0700", "7h"):
        with pytest.raises(ValueError, match="bad start time"):
            parse_time(bad, end=False)


def test_a_bad_deck_reports_every_bad_row_with_its_line():
    deck = HEADER + "\n".join(
        [
            "p,44,,,0.10,,,,,,,",  # 2 good
            "p,45,,,0.1O,,,,,,,",  # 3 bad money (letter O)
            "p,46,,,-0.10,,,,,,,",  # 4 negative rate
            "p,47,,,0.10,,0,,,,,",  # 5 increment 0
            "p,48,,,0.10,,,,mon-fry,,,",  # 6 unknown day
            "p,49,,,0.10,,,,,7:75,,",  # 7 bad HH:MM
            "p,44,,,0.20,,,,,,,",  # 8 duplicate of line 2
            "p,+50,,,0.10,,,,,,,",  # 9 bad prefix
            "p,51,,,0.10,0,,,,,,",  # 10 rate_unit 0
            "p,52,,abc,0.10,,,,,,,",  # 11 bad connect fee
            "p,53,,,0.10,,,,,,,Voice",  # 12 bad service
            "p,54,,,0.10,,,,",  # 13 wrong field count
            "p,55,,,0.10,,,-5,,,,",  # 14 negative from_second
            "p,56,,,0.10,,,,,08:00,08:00,",  # 15 empty window
            "p,57,,,1e-3,,,,,,,",  # 16 exponent
            "p,58,,,,,,,,,,",  # 17 empty rate
        ]
    )
    problems = problems_of(deck)
    assert sorted(problems) == list(range(3, 18))
    expected = {
        3: "bad rate '0.1O'",
        4: "negative rate",
        5: "increment must be > 0",
        6: "unknown day 'fry'",
        7: "bad start time '7:75'",
        8: "duplicate of line 2",
        9: "bad prefix '+50'",
        10: "rate_unit must be > 0",
        11: "bad connect_fee 'abc'",
        12: "bad service 'Voice'",
        13: "expected 12 fields, got 9",
        14: "from_second must not be negative",
        15: "empty time window",
        16: "bad rate '1e-3'",
        17: "rate is empty",
    }
    for line, fragment in expected.items():
        assert fragment in problems[line], (line, problems[line])
    message = str(pytest.raises(DeckError, parse_deck, deck).value)
    assert "15 problems" in message and "line 17: rate is empty" in message


def test_one_row_with_several_faults_lists_them_all():
    problems = problems_of(HEADER + "p,4x,,-1,zz,,,,xxx,,,\n")
    assert set(problems) == {2}
    for fragment in ("bad prefix", "bad rate", "unknown day"):
        assert fragment in problems[2]


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        ("plan,prefix,destination\n", "missing required column 'rate'"),
        ("prefix,rate\n", "missing required column 'plan'"),
        ("plan,prefix,rate,incremnt\n", "unknown column 'incremnt'"),
        ("plan,prefix,rate,rate\n", "appears twice"),
        ("", "empty deck"),
    ],
)
def test_bad_headers(header, fragment):
    problems = problems_of(header + ("p,44,0.1\n" if header else ""))
    assert list(problems) == [1]
    assert fragment in problems[1]


def test_steps_need_a_from_zero_row_and_connect_fee_only_there():
    problems = problems_of(
        HEADER
        + "p,44,,,0.10,,,30,,,,\n"  # 2: no from_second 0 row
        + "p,45,,,0.10,,,0,,,,\n"
        + "p,45,,0.05,0.10,,,30,,,,\n"  # 4: connect fee on a later step
    )
    assert "no from_second 0 row" in problems[2]
    assert "connect_fee is only allowed on the from_second 0 row" in problems[4]
    assert set(problems) == {2, 4}


def test_overlapping_windows_are_refused_and_partitions_accepted():
    problems = problems_of(
        HEADER
        + "p,44,,,0.10,,,,mon-fri,07:00,19:00,\n"
        + "p,44,,,0.05,,,,fri-sat,18:00,08:00,\n"  # overlaps Fri 18:00-19:00
        + "p,44,,,0.05,,,,mon-fri,07:00,20:00,\n"  # same days and start: overlaps line 2
    )
    assert set(problems) == {3, 4}
    assert "overlaps mon-fri 07:00-19:00 (line 2)" in problems[3]
    rows = parse_deck(
        HEADER
        + "p,44,,,0.10,,,,mon-fri,07:00,19:00,\n"
        + "p,44,,,0.05,,,,mon-fri,19:00,07:00,\n"
        + "p,44,,,0.02,,,,sat-sun,,,\n"
    )
    assert len(rows) == 3


def test_same_step_in_other_service_or_plan_is_not_a_duplicate():
    rows = parse_deck(HEADER + "p,44,,,0.10,,,,,,,\np,44,,,0.10,,,,,,,data\nq,44,,,0.10,,,,,,,\n")
    assert len(rows) == 3


def test_conflicting_destinations_are_refused():
    problems = problems_of(
        HEADER + "p,44,UK,,0.10,,,0,,,,\np,44,,,0.05,,,60,,,,\np,44,France,,0.05,,,90,,,,\n"
    )
    assert set(problems) == {4}
    assert "destination 'France' differs from 'UK' (line 2)" in problems[4]


def test_load_deck_reads_a_file_with_a_bom(tmp_path):
    path = tmp_path / "deck.csv"
    path.write_bytes(("\ufeff" + HEADER + "p,44,UK,,0.10,,,,,,,\r\n").encode())
    (row,) = load_deck(path)
    assert (row.prefix, row.destination, row.line) == ("44", "UK", 2)


def test_build_refuses_rows_of_unknown_plans_and_cross_deck_duplicates():
    rows = parse_deck(HEADER + "p,44,,,0.10,,,,,,,\nq,44,,,0.10,,,,,,,\n")
    with pytest.raises(DeckError) as caught:
        RateTable.build([Plan("p", "EUR")], rows)
    assert caught.value.problems == [(3, "unknown plan 'q'")]
    with pytest.raises(DeckError, match="duplicate"):
        RateTable.build([Plan("p", "EUR"), Plan("q", "EUR")], rows + rows)


def test_plan_validation():
    with pytest.raises(ValueError, match="currency"):
        Plan("p", "euro")
    with pytest.raises(KeyError):
        Plan("p", "EUR", tz="Mars/Olympus")
    with pytest.raises(TypeError, match="never a float"):
        Plan("p", "EUR", max_cost=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="more decimals"):
        Plan("p", "EUR", decimals=2, max_cost=Decimal("1.005"))
    with pytest.raises(ValueError):
        Plan("p", "EUR", rounding="sideways")  # type: ignore[arg-type]
    assert Plan("p", "EUR", rounding="half-up").rounding == "half-up"


# --- ASTPP ------------------------------------------------------------------------------

ASTPP_HEADER = ",".join(ASTPP_COLUMNS) + "\n"


def test_astpp_deck_parses_all_prefixes(astpp_path):
    rows = load_deck(astpp_path, format="astpp", plan="az")
    assert len(rows) == 36_205
    assert len({r.prefix for r in rows}) == 36_205
    assert {r.plan for r in rows} == {"az"}
    by_prefix = {r.prefix: r for r in rows}
    first = by_prefix["93"]
    assert (first.destination, first.rate, first.rate_unit, first.increment) == (
        "Afghanistan",
        Decimal("0.20930"),
        60,
        6,
    )
    assert first.line == 2
    assert by_prefix["16784601475"].increment == 1
    assert sum(r.increment == 6 for r in rows) == 36_204
    table = RateTable.build([Plan("az", "USD")], rows)
    assert table.prefix_count("az") == 36_205


def test_astpp_included_seconds_become_a_free_first_step():
    rows = parse_astpp(ASTPP_HEADER + "34,Spain,0.10,30,0.60,6,7,^34.*\n35,X,0,0,0.5,6,8,\n", "r")
    free, priced, single = rows
    assert (free.from_second, free.rate, free.increment, free.connect_fee) == (
        0,
        Decimal(0),
        1,
        Decimal("0.10"),
    )
    assert (priced.from_second, priced.rate, priced.increment, priced.connect_fee) == (
        30,
        Decimal("0.60"),
        6,
        Decimal(0),
    )
    assert (single.from_second, single.rate, single.increment) == (0, Decimal("0.5"), 6)
    plan = Plan("r", "EUR", decimals=2)
    table = RateTable.build([plan], rows)
    at = datetime(2024, 1, 1, tzinfo=UTC)
    # 20 s: inside the included seconds, only the connect fee.
    assert quote(table, plan, "34911", 20, at).cost == Decimal("0.10")
    # 31 s: one 6 s increment at 0.60/min = 0.06 after the free 30 s.
    assert quote(table, plan, "34911", 31, at).cost == Decimal("0.16")


def test_astpp_bad_rows_are_refused_with_lines():
    problems = problems_of(
        ASTPP_HEADER
        + "34,Spain,0,0,0.60,0,7,^34.*\n"
        + "35,X,0,0,-0.5,6,8,^35.*\n"
        + "36,Y,0,0,0.5,6,9,^3[67].*\n"
        + "*,Z,0,0,0.5,6,9,\n",
        format="astpp",
        plan="r",
    )
    assert set(problems) == {2, 3, 4, 5}
    assert "increment must be > 0" in problems[2]
    assert "negative rate" in problems[3]
    assert "unsupported astpp_pattern" in problems[4]
    assert "prefix must be digits" in problems[5]


def test_astpp_needs_a_plan_name():
    with pytest.raises(ValueError, match="plan name"):
        parse_deck(ASTPP_HEADER, format="astpp")


def test_build_checks_rows_made_in_code():
    rows = [
        RateRow("p", "44", 0.1),  # type: ignore[arg-type]
        RateRow("p", "4a", Decimal(1), increment=0, line=7),
        RateRow("p", "5", Decimal(1), increment=1.0),  # type: ignore[arg-type]
        RateRow("p", "6", Decimal("NaN")),
    ]
    with pytest.raises(DeckError) as caught:
        RateTable.build([Plan("p", "EUR")], rows)
    reasons = dict((r, line) for line, r in caught.value.problems)
    assert reasons == {
        "rate must be a finite Decimal (never a float): 0.1": 0,
        "bad prefix '4a' (digits, or * for any number); increment must be > 0": 7,
        "increment must be an int: 1.0": 0,
        "rate must be a finite Decimal (never a float): Decimal('NaN')": 0,
    }
