"""A deck staged for confirmation (the console's two-step upload), on SQLite and on a
real PostgreSQL: checked like `ivr rates import` and compared with the plan's rates with
nothing applied; applied later exactly as staged, and refused when the plan's rates or
the staged bytes changed in between."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import select

from ivr.db import Database
from ivr.db.models import RatingPlan
from ivr.money.rates_store import (
    DeckUnreadable,
    StagedDeckGone,
    StaleRates,
    apply_staged,
    create_plan,
    import_rows,
    list_plans,
    longest_call,
    quote_call,
    stage_deck,
)
from ivr.rating import DeckError, parse_deck

AT = datetime(2026, 11, 18, 12, 0, tzinfo=UTC)
HEADER = ("plan,prefix,destination,connect_fee,rate,rate_unit,increment,from_second,days,"
          "start,end,service\n")
CURRENT = HEADER + "retail,1,USA,0,0.60,60,1,0,,,,\nretail,44,UK,0,1.20,60,1,0,,,,\n"
NEW = HEADER + "retail,1,USA,0,0.50,60,1,0,,,,\nretail,33,France,0,0.90,60,1,0,,,,\n"


@pytest.fixture
def plan(db: Database) -> str:
    with db.transaction() as s:
        create_plan(s, "retail", "USD", decimals=2)
        create_plan(s, "other", "USD", decimals=2)
        import_rows(s, parse_deck(CURRENT))
    return "retail"


def version(db: Database) -> int:
    with db.reading() as s:
        return s.scalar(select(RatingPlan.rates_version).where(RatingPlan.name == "retail"))


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    return tmp_path / "staged"


def usa_minute(db: Database) -> Decimal:
    return quote_call(db, "retail", "15551234567", 60, AT)[1].cost


def test_staged_then_applied_exactly_once(db: Database, plan: str, staging: Path):
    staged = stage_deck(db, staging, NEW.encode(), plan, filename="new.csv", by="ann")
    assert staged.diff is not None
    assert [c.prefix for c in staged.diff.added] == ["33"]
    assert [c.prefix for c in staged.diff.removed] == ["44"]
    assert [(c.prefix, c.old_rates, c.new_rates) for c in staged.diff.changed] == [
        ("1", "0.60/min", "0.50/min")]
    assert (staged.version, staged.rows) == (1, 2)
    assert version(db) == 1 and usa_minute(db) == Decimal("0.60")  # nothing applied

    seen = []
    done, result = apply_staged(db, staging, staged.token,
                                on_apply=lambda s, st, r: seen.append((st.filename, r.versions)))
    assert seen == [("new.csv", {"retail": 2})] and result.plans == {"retail": 2}
    assert done.by == "ann"
    assert version(db) == 2 and usa_minute(db) == Decimal("0.50")
    assert {p.name: (p.rates, p.prefixes, p.rates_version) for p in list_plans(db)} == {
        "retail": (2, 2, 2), "other": (0, 0, 0)}
    with pytest.raises(StagedDeckGone):
        apply_staged(db, staging, staged.token)
    assert list(staging.iterdir()) == []


def test_refused_when_the_rates_changed_since(db: Database, plan: str, staging: Path):
    first = stage_deck(db, staging, NEW.encode(), plan)
    second = stage_deck(db, staging, NEW.replace("0.50", "0.55").encode(), plan)
    apply_staged(db, staging, second.token)
    assert usa_minute(db) == Decimal("0.55")
    with pytest.raises(StaleRates, match="changed since"):
        apply_staged(db, staging, first.token, on_apply=lambda *a: pytest.fail("applied"))
    assert version(db) == 2 and usa_minute(db) == Decimal("0.55")


def test_refused_when_the_staged_copy_changed(db: Database, plan: str, staging: Path):
    staged = stage_deck(db, staging, NEW.encode(), plan)
    (staging / f"{staged.token}.csv").write_text(NEW.replace("0.50", "0.01"))
    with pytest.raises(StagedDeckGone, match="changed"):
        apply_staged(db, staging, staged.token)
    for token in ("../../etc/passwd", "x" * 32):
        with pytest.raises(StagedDeckGone):
            apply_staged(db, staging, token)
    assert version(db) == 1


def test_bad_decks_are_refused_by_line_and_nothing_is_staged(db: Database, plan: str,
                                                             staging: Path):
    bad = NEW + "other,34,Spain,0,0.1,60,1,0,,,,\nretail,35,X,0,-1,60,1,0,,,,\n"
    with pytest.raises(DeckError) as caught:
        stage_deck(db, staging, bad.encode(), plan)
    assert [line for line, _ in caught.value.problems] == [4, 5]
    assert "for plan 'retail' only" in caught.value.problems[0][1]
    with pytest.raises(DeckUnreadable, match="not UTF-8"):
        stage_deck(db, staging, b"\xff\xfe" + NEW.encode("utf-16-le"), plan)
    assert not staging.exists() or list(staging.iterdir()) == []
    assert version(db) == 1


def test_quotes_and_the_longest_call(db: Database, plan: str):
    p, q = quote_call(db, plan, "447700900123", 90, AT, detail=True)
    assert (q.cost, q.prefix, q.destination, p.currency) == (Decimal("1.80"), "44", "UK", "USD")
    assert q.pieces and q.pieces[0].rate == Decimal("1.20")
    _, seconds, q = longest_call(db, plan, "15551234567", Decimal("1.00"), AT)
    assert (seconds, q.prefix) == (100, "1")
