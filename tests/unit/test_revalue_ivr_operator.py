"""IVR-to-IVR operators: their settings and what is keyed in (no Asterisk here; the calls
are tests/e2e/test_revalue_ivr2ivr.py)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from ivr.config import ConfigError, load_settings
from ivr.revalue.direct import (
    HttpOperatorApi,
    RechargeRequest,
    RechargeState,
    load_operators_file,
    operators_from_settings,
    parse_operators,
)
from ivr.revalue.ivr_operator import IvrOperator, request_keys


def test_inline_ivr_operators() -> None:
    ops = parse_operators("Sim=ivr:+19994000@8642*9; Bare=ivr:19994001;"
                          " Web=http:http://127.0.0.1:8099@T", timeout=20)
    sim = ops["sim"]
    assert (sim.kind, sim.number, sim.code, sim.timeout, sim.url) == (
        "ivr", "19994000", "8642*9", 20.0, "")
    assert "8642" not in repr(sim)
    assert ops["Bare"].code == ""
    assert ops.callback_secrets()["Sim"] == b""  # no callbacks: nothing signs them
    assert isinstance(ops["Web"].client(), HttpOperatorApi)
    for text, message in (
        ("Sim=ivr:", "2 to 20 digits"),
        ("Sim=ivr:1999-4000", "2 to 20 digits"),
        ("Sim=ivr:19994000@12#4", "keypad digits"),
        ("Sim", "NAME=ivr:NUMBER"),
        ("Sim=ivr:1;sim=ivr:2", "2 to 20 digits"),
        ("Sim=ivr:19;sim=ivr:29", "given twice"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_operators(text)


def test_ivr_operators_file(tmp_path: Path) -> None:
    path = tmp_path / "operators.toml"
    path.write_text('[operators."Sim"]\ninterface = "ivr"\nnumber = "19994000"\n'
                    'code = "0864"\ntimeout = 45\n\n'
                    '[operators.Web]\nurl = "http://127.0.0.1:8099"\n')
    ops = operators_from_settings(load_settings(environ={"IVR_REVALUE_OPERATORS": str(path)}))
    assert (ops["sim"].kind, ops["sim"].number, ops["sim"].code, ops["sim"].timeout) == (
        "ivr", "19994000", "0864", 45.0)
    assert ops["web"].kind == "http"
    for body, message in (
        ('interface = "ivr"\nurl = "http://h"\nnumber = "1"', "unknown key 'url'"),
        ('interface = "ivr"\ncode = "1"', "number missing"),
        ('interface = "ivr"\nnumber = "19994000"\ncode = 864', "code must be a string"),
        ('interface = "ivr"\nnumber = "19994000"\ntimeout = 0', "more than 0"),
    ):
        path.write_text(f"[operators.A]\n{body}\n")
        with pytest.raises(ConfigError, match=message):
            load_operators_file(path)


def test_keys_of_a_request() -> None:
    req = RechargeRequest("rv-1", "+15553000001", "Sim", Decimal("25.5"), "USD")
    assert request_keys(req, "864") == "15553000001#2550#864#"
    assert request_keys(req, "") == "15553000001#2550##"
    with pytest.raises(ValueError, match="whole number of cents"):
        request_keys(RechargeRequest("rv-2", "+15553000001", "Sim", Decimal("1.005"),
                                     "USD"), "864")


async def test_without_asterisk_nothing_is_sent() -> None:
    client = parse_operators("Sim=ivr:19994000@864")["Sim"].client()
    assert isinstance(client, IvrOperator)
    req = RechargeRequest("rv-3", "+15553000001", "Sim", Decimal("5"), "USD")
    answer = await client.recharge(req)
    assert answer.state is RechargeState.DECLINED
    assert "nothing was sent" in answer.reason and answer.operator == "Sim"
    # An IVR cannot be asked afterwards.
    assert (await client.status("rv-3")).state is RechargeState.UNKNOWN
    await client.aclose()
