"""The diff of two rate decks (ivr.rating.diff): prefixes added, removed and changed,
compared by value with all their rows (windows, steps, connect fees)."""

from __future__ import annotations

from decimal import Decimal

from ivr.rating import parse_deck
from ivr.rating.diff import amount_text, diff_rows, rates_text

HEADER = ("plan,prefix,destination,connect_fee,rate,rate_unit,increment,from_second,days,"
          "start,end,service\n")
OLD = HEADER + (
    "p,1,USA,0,0.60,60,1,0,,,,\n"
    "p,44,United Kingdom,0,1.20,60,1,0,,,,\n"
    "p,49,Germany,0.10,0.80,60,60,0,,,,\n"
    "p,34,Spain,0,0.30,60,1,0,mon-fri,08:00,18:00,\n"
    "p,34,Spain,0,0.20,60,1,0,mon-fri,18:00,08:00,\n"
    "p,34,Spain,0,0.20,60,1,0,sat-sun,,,\n"
    "p,7,Russia,0,0.5,60,1,0,,,,\n"
    "p,7,Russia,0,0.5,60,1,0,,,,sms\n"
)


def diff(old: str, new: str):
    return diff_rows(parse_deck(old), parse_deck(new))


def test_the_same_deck_written_otherwise_changes_nothing():
    # Amounts by value (0.6 == 0.60), rows in any order, other line numbers.
    lines = OLD.splitlines(keepends=True)
    same = lines[0] + "".join(reversed(lines[1:])).replace("0.60", "0.6000")
    d = diff(OLD, same)
    assert d.empty and d.unchanged == 6
    assert (d.added, d.removed, d.changed) == ((), (), ())


def test_added_removed_and_changed_prefixes_with_old_and_new():
    new = HEADER + (
        "p,1,USA,0,0.50,60,1,0,,,,\n"  # rate changed
        "p,44,UK,0,1.20,60,1,0,,,,\n"  # destination changed
        "p,49,Germany,0.10,0.80,60,30,0,,,,\n"  # increment changed
        "p,34,Spain,0,0.30,60,1,0,mon-fri,08:00,18:00,\n"  # a window less
        "p,34,Spain,0,0.20,60,1,0,mon-fri,18:00,08:00,\n"
        "p,33,France,0,0.90,60,1,0,,,,\n"  # added
        "p,7,Russia,0,0.5,60,1,0,,,,\n"  # sms of 7 removed
    )
    d = diff(OLD, new)
    assert [(c.prefix, c.service) for c in d.added] == [("33", "voice")]
    assert [(c.prefix, c.service, c.label) for c in d.removed] == [("7", "sms", "7 (sms)")]
    assert [c.prefix for c in d.changed] == ["1", "34", "44", "49"]
    assert d.unchanged == 1  # 7 (voice)
    by = {c.prefix: c for c in d.changed}
    assert (by["1"].old_rates, by["1"].new_rates) == ("0.60/min", "0.50/min")
    assert (by["44"].old_destination, by["44"].new_destination) == ("United Kingdom", "UK")
    assert by["44"].old_rates == by["44"].new_rates == "1.20/min"
    assert by["49"].old_rates == "0.10 connect + 0.80/min by 60 s"
    assert by["49"].new_rates == "0.10 connect + 0.80/min by 30 s"
    assert by["34"].old_rates == ("0.30/min in mon-fri 08:00-18:00; "
                                  "0.20/min in mon-fri 18:00-08:00; "
                                  "0.20/min in sat-sun 00:00-24:00")
    assert len(by["34"].old) == 3 and len(by["34"].new) == 2
    assert d.added[0].old == () and d.added[0].new_rates == "0.90/min"
    assert d.removed[0].new == () and d.removed[0].old_destination == "Russia"


def test_a_step_from_a_later_second_is_part_of_the_prefix():
    old = HEADER + "p,1,USA,0,0.60,60,1,0,,,,\n"
    new = HEADER + "p,1,USA,0,0.60,60,1,0,,,,\np,1,USA,0,0.30,60,1,600,,,,\n"
    d = diff(old, new)
    assert [c.prefix for c in d.changed] == ["1"]
    assert d.changed[0].new_rates == "0.60/min; 0.30/min from 600 s"
    assert diff(new, new).empty


def test_everything_against_an_empty_deck_is_added():
    d = diff_rows([], parse_deck(OLD))
    assert len(d.added) == 6 and not d.removed and not d.changed


def test_amounts_are_shown_exactly():
    assert amount_text(Decimal("0.600000")) == "0.60"
    assert amount_text(Decimal("0.0125")) == "0.0125"
    assert amount_text(Decimal("3")) == "3.00"
    assert amount_text(Decimal("100")) == "100.00"
    assert rates_text([]) == ""
