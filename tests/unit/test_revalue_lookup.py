"""Which operator a number is with (ivr.revalue.lookup): numbers read with phonenumbers,
its carrier data, the simulated HLR and the plug-in loader. The ported-numbers table and
LocalLookup, which read the database, are in tests/db/test_customers.py."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from ivr.config import ConfigError, Settings, load_settings
from ivr.db import Database
from ivr.revalue.lookup import (
    InvalidMsisdn,
    LocalLookup,
    Lookup,
    LookupFailed,
    NumberLookup,
    SimulatedHlr,
    as_msisdn,
    carrier_name,
    check_mccmnc,
    check_operator,
    lookup_from_settings,
    parse_msisdn,
    simulated_hlr,
)


@pytest.mark.parametrize(("typed", "region", "e164"), [
    ("07912 345678", "GB", "+447912345678"),  # national, in the default region
    ("+44 7912 345678", "US", "+447912345678"),  # international, whatever the region
    ("00447912345678", "DE", "+447912345678"),  # the region's international prefix
    ("011 44 7400 123456", "US", "+447400123456"),
    ("0151 23456789", "DE", "+4915123456789"),
    ("+49 162 1234567", "GB", "+491621234567"),
    ("(212) 555-1234", "US", "+12125551234"),  # the US does not tell mobiles apart
])
def test_numbers_are_read_as_e164(typed: str, region: str, e164: str):
    assert parse_msisdn(typed, region) == e164


@pytest.mark.parametrize(("typed", "region", "why"), [
    ("020 7946 0000", "GB", "not a mobile number (fixed line)"),
    ("030 123456", "DE", "not a mobile number (fixed line)"),
    ("0800 1234567", "DE", "not a mobile number (toll free)"),
    ("+447700900123", "GB", "is not a valid number"),  # a range given to no operator
    ("7912 345678", "US", "is not a valid number"),  # a GB mobile read as a US number
    ("07912", "GB", "is not a valid number"),
    ("mobile", "GB", "not a telephone number"),
    ("", "GB", "not a telephone number"),
    ("+44" + "7" * 40, "GB", "not a telephone number"),
])
def test_no_mobile_number_is_refused_saying_why(typed: str, region: str, why: str):
    with pytest.raises(InvalidMsisdn, match=re.escape(why)):
        parse_msisdn(typed, region)


def test_checks_other_than_mobile():
    assert parse_msisdn("020 7946 0000", "GB", check="valid") == "+442079460000"
    with pytest.raises(InvalidMsisdn, match="not a valid number"):
        parse_msisdn("+447700900123", "GB", check="valid")
    assert parse_msisdn("+447700900123", "GB", check="none") == "+447700900123"
    with pytest.raises(InvalidMsisdn):
        parse_msisdn("none", "GB", check="none")


def test_as_msisdn_adds_the_plus_to_digits_only():
    assert as_msisdn("447912345678") == "+447912345678"
    assert as_msisdn(" +447912345678 ") == "+447912345678"
    assert as_msisdn("anonymous") == "anonymous"


@pytest.mark.parametrize(("msisdn", "operator"), [
    ("+447912345678", "O2"),
    ("+447400123456", "Three"),
    ("+447984123456", "EE"),
    ("+4915123456789", "T-Mobile"),
    ("+491621234567", "Vodafone"),
    ("+4915901234567", "O2"),
    ("+442079460000", ""),  # a fixed line: no operator's range
    ("+12125551234", ""),  # no carrier data for US ranges
    ("not a number", ""),
])
def test_carrier_data_names_the_range_holder(msisdn: str, operator: str):
    assert carrier_name(msisdn) == operator


def test_network_codes_and_operator_names():
    assert check_mccmnc(" 23415 ") == "23415"
    assert check_mccmnc("310260") == "310260"
    assert check_mccmnc("") == ""
    for bad in ("2341", "2341567", "23a15", "２３４１５"):
        with pytest.raises(ValueError, match="not a network code"):
            check_mccmnc(bad)
    assert check_operator("  Deutsche   Telekom ") == "Deutsche Telekom"
    for bad in ("", "   ", "x" * 65):
        with pytest.raises(ValueError, match="1 to 64 characters"):
            check_operator(bad)


def test_a_lookup_is_a_frozen_value():
    answer = Lookup("+447912345678", "O2", "23410", False, None, False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        answer.operator = "EE"  # type: ignore[misc]
    assert answer.as_dict() == {"msisdn": "+447912345678", "operator": "O2",
                                "mccmnc": "23410", "ported": False, "reachable": None,
                                "verified": False}


# --------------------------------------------------------------------------- simulated HLR


async def test_simulated_hlr_answers_from_its_table_and_verified():
    o2 = Lookup("+447912345678", "O2", "23410", False, True, False)
    ported = Lookup("+4915123456789", "Vodafone", "26202", True, False, False)
    hlr: NumberLookup = SimulatedHlr({"447912345678": o2, "+4915123456789": ported,
                                      "+447400123456": LookupFailed("timed out")})
    assert await hlr.lookup("+447912345678") == dataclasses.replace(o2, verified=True)
    assert await hlr.lookup("4915123456789") == dataclasses.replace(ported, verified=True)
    # Not in the table: an unknown subscriber, still a network's answer.
    assert await hlr.lookup("+447984123456") == Lookup("+447984123456", "", "", False,
                                                       False, True)
    with pytest.raises(LookupFailed, match="timed out"):
        await hlr.lookup("+447400123456")
    assert isinstance(hlr, SimulatedHlr)
    assert hlr.asked == ["+447912345678", "+4915123456789", "+447984123456",
                         "+447400123456"]


def test_simulated_hlr_factory_reads_its_file(tmp_path):
    settings = Settings(data_dir=tmp_path)
    empty = simulated_hlr(settings)
    assert empty.answers == {}
    (tmp_path / "simulated-hlr.json").write_text(json.dumps({
        "447912345678": {"operator": "EE", "mccmnc": "23430", "ported": True,
                         "reachable": True},
        "+4915123456789": {"operator": "T-Mobile"},
    }))
    hlr = simulated_hlr(settings)
    assert hlr.answers == {
        "+447912345678": Lookup("+447912345678", "EE", "23430", True, True, True),
        "+4915123456789": Lookup("+4915123456789", "T-Mobile", "", False, None, True),
    }
    (tmp_path / "simulated-hlr.json").write_text('{"+447912345678": {"mccmnc": "x"}}')
    with pytest.raises(ConfigError, match="not a network code"):
        simulated_hlr(settings)
    (tmp_path / "simulated-hlr.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not a JSON object"):
        simulated_hlr(settings)
    (tmp_path / "simulated-hlr.json").write_text("{")
    with pytest.raises(ConfigError, match="simulated-hlr.json"):
        simulated_hlr(settings)


# --------------------------------------------------------------------------- the plug-in


PLUGGED = SimulatedHlr()


def _factory(settings: Settings) -> SimulatedHlr:
    assert settings.revalue_lookup.endswith(":_factory")
    return PLUGGED


def test_lookup_from_settings_default_and_plugged():
    db = Database("sqlite://")  # never connected: LocalLookup only keeps it
    try:
        local = lookup_from_settings(Settings(), db)
        assert isinstance(local, LocalLookup) and local.db is db
        assert lookup_from_settings(Settings(revalue_lookup="  "), db).__class__ is LocalLookup
        plugged = lookup_from_settings(Settings(revalue_lookup=f"{__name__}:_factory"), db)
        assert plugged is PLUGGED
        demo = lookup_from_settings(
            Settings(revalue_lookup="ivr.revalue.lookup:simulated_hlr"), db)
        assert isinstance(demo, SimulatedHlr)
    finally:
        db.dispose()


@pytest.mark.parametrize(("name", "why"), [
    ("hlr", "neither ''"),
    ("ivr.revalue.lookup", "neither ''"),
    (":make", "neither ''"),
    ("ivr.revalue.lookup:", "neither ''"),
    ("no_such_package.hlr:make", "No module named 'no_such_package'"),
    ("ivr.revalue.lookup:no_such_factory", "no attribute 'no_such_factory'"),
])
def test_a_bad_plug_in_is_a_config_error(name: str, why: str):
    with pytest.raises(ConfigError, match=why):
        lookup_from_settings(Settings(revalue_lookup=name), Database("sqlite://"))


def test_the_code_length_setting_is_bounded():
    assert load_settings(environ={"IVR_REVALUE_CODE_LENGTH": "8"}).revalue_code_length == 8
    assert Settings().revalue_code_length == 6
    for bad in ("3", "13", "six"):
        with pytest.raises(ConfigError, match="revalue_code_length"):
            load_settings(environ={"IVR_REVALUE_CODE_LENGTH": bad})
