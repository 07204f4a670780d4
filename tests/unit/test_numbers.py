"""Keypad entries and caller IDs normalised to E.164 digits (ivr.numbers)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ivr.numbers import (
    E164_MAX_DIGITS,
    MAX_DIGITS,
    InvalidNumber,
    keypad_digits,
    normalise,
    normalise_callerid,
    plausible_callerid,
)


@pytest.mark.parametrize(
    ("typed", "region", "e164"),
    [
        ("2125551234", "US", "12125551234"),  # national, 10 digits
        ("12125551234", "US", "12125551234"),  # 1 + 10
        ("011442079460000", "US", "442079460000"),  # US international prefix
        ("01133123456789", "US", "33123456789"),
        ("*212#555*1234#", "US", "12125551234"),  # keypad symbols are not digits
        ("00442079460000", "GB", "442079460000"),  # most of the world's prefix
        ("02079460000", "GB", "442079460000"),  # national, trunk prefix 0
        ("2079460000", "GB", "442079460000"),
        ("0012125551234", "GB", "12125551234"),
        ("02079460000", "gb", "442079460000"),  # region case does not matter
        ("004989123456", "GB", "4989123456"),
    ],
)
def test_normalise(typed, region, e164):
    assert normalise(typed, region) == e164


def test_the_same_number_typed_three_ways_rates_the_same():
    assert {normalise("011442079460000", "US"), normalise("00442079460000", "GB"),
            normalise("02079460000", "GB")} == {"442079460000"}


@pytest.mark.parametrize(
    ("typed", "region"),
    [
        ("", "US"),
        ("*#", "US"),  # nothing but symbols
        ("abc", "US"),
        ("1", "US"),
        ("12", "US"),
        ("911", "US"),  # a short code: no E.164 form
        ("5551234", "US"),  # 7 digits: local dialling only, the area code is missing
        ("212555123", "US"),  # 9 digits
        ("212555123456", "US"),  # 12 digits
        ("011", "US"),  # the prefix alone
        ("01144", "US"),  # a country code alone
        ("011999123456", "US"),  # no such country code
        ("0113312345678", "US"),  # France has 9 national digits, not 8
        ("1" * (MAX_DIGITS + 1), "US"),  # longer than the keypad entry
        ("00817122345020951036", "GB"),  # possible in Japan's metadata, but 18 digits
        ("0000", "GB"),
        ("020794", "GB"),
    ],
)
def test_impossible_numbers_are_refused(typed, region):
    with pytest.raises(InvalidNumber):
        normalise(typed, region)


def test_invalid_number_is_a_value_error():
    with pytest.raises(ValueError, match="too long"):
        normalise("0" * (MAX_DIGITS + 5))


def test_dialplan_syntax_never_survives():
    assert normalise("212&555,1234/PJSIP", "US") == "12125551234"


def test_keypad_digits():
    assert keypad_digits("*12#3 4-5") == "12345"
    assert keypad_digits(None) == ""
    assert keypad_digits("") == ""
    assert keypad_digits("٣٤٥") == ""  # other scripts' digits are not keypad digits


@pytest.mark.parametrize(
    ("callerid", "region", "e164"),
    [
        ("12125551234", "US", "12125551234"),
        ("2125551234", "US", "12125551234"),
        ("+12125551234", "US", "12125551234"),
        (" +1 (212) 555-1234 ", "US", "12125551234"),
        ("+442079460000", "US", "442079460000"),  # the + is honoured
        ("+12125551234", "GB", "12125551234"),
        ("02079460000", "GB", "442079460000"),
    ],
)
def test_normalise_callerid(callerid, region, e164):
    assert normalise_callerid(callerid, region) == e164


def test_an_international_callerid_is_never_read_as_a_national_number():
    # +49 89 123456 (Munich) is also 10 digits, like a US national number.
    assert normalise_callerid("+4989123456", "US") == "4989123456"
    assert normalise_callerid("4989123456", "US") == "14989123456"


@pytest.mark.parametrize(
    "callerid",
    [None, "", "   ", "anonymous", "Anonymous", "unknown", "<unknown>", "asterisk", "0",
     "+", "911", "5551234", "9" * (MAX_DIGITS + 1)],
    ids=repr,  # a bare "asterisk" id would count as the asterisk marker (tests/conftest.py)
)
def test_normalise_callerid_none(callerid):
    assert normalise_callerid(callerid, "US") is None


@pytest.mark.parametrize(
    "callerid",
    [
        "1555,0001&Local/123@default",  # the digits alone are 15550001123
        "1555,0001&Local/123",
        "15550001123&Local/1@x",
        "15550001123,20",  # Dial's timeout argument
        "15550001123/n",
        "15550001123@example.com",
        "sip:15550001123@example.com",
        "tel:+15550001123",
        "15550001123;user=phone",
        "15550001123 ext 5",
        "1-800-FLOWERS",  # a vanity number spells digits phonenumbers would read
        "+1555000112x3",
        "15550001123#",
        "*15550001123",
        "1+5550001123",  # a + only at the start
        "++15550001123",
        "1555\t0001123",
        "1555_0001123",
        "[1555]0001123",
        "1555'0001123",
        '"15550001123"',
        "<15550001123>",
        "１５５５０００１１２３",  # full-width digits
        "١٥٥٥٠٠٠١١٢٣",  # Arabic-Indic digits
        "1" + " " * 40 + "5550001123",  # too long with its separators
    ],
    ids=repr,
)
def test_a_malformed_callerid_is_withheld(callerid):
    assert not plausible_callerid(callerid)
    assert normalise_callerid(callerid, "US") is None


@pytest.mark.parametrize(
    ("callerid", "e164"),
    [
        ("15550001123", "15550001123"),
        ("+1 555 000 1123", "15550001123"),
        ("+1-555-000-1123", "15550001123"),
        ("1.555.000.1123", "15550001123"),
        ("(555) 000-1123", "15550001123"),
        ("  5550001123  ", "15550001123"),
    ],
)
def test_a_callerid_written_like_a_number_is_read(callerid, e164):
    assert plausible_callerid(callerid)
    assert normalise_callerid(callerid, "US") == e164


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=40))
def test_a_callerid_is_read_only_when_it_is_digits_and_separators(callerid):
    if normalise_callerid(callerid, "US") is None:
        return
    rest = callerid.strip().removeprefix("+")
    assert rest and all(ch in "0123456789 ().-" for ch in rest)


KEYPAD = st.text(alphabet="0123456789*#", max_size=MAX_DIGITS + 4)


@settings(max_examples=500, deadline=None)
@given(typed=KEYPAD | st.builds(lambda tail: "011" + tail, KEYPAD)
       | st.builds(lambda tail: "00" + tail, KEYPAD),
       region=st.sampled_from(["US", "GB", "DE", "FR", "JP", "IN"]))
def test_output_is_digits_and_never_longer_than_e164(typed, region):
    try:
        e164 = normalise(typed, region)
    except InvalidNumber:
        return
    assert e164.isascii() and e164.isdigit()
    assert 1 <= len(e164) <= E164_MAX_DIGITS
    assert e164[0] != "0"  # starts with a country code
