"""The SIP settings as they are rendered into the instance's config (no Asterisk needed)."""

from __future__ import annotations

import pytest

from ivr.asterisk import AsteriskSetupError
from ivr.asterisk.instance import (
    sip_bind_value,
    sip_external_lines,
    sip_line_routes,
    sip_lines_dialplan,
)
from ivr.config import Settings


def test_the_default_lines_are_the_access_revalue_and_operator_numbers():
    assert sip_line_routes(Settings().sip_lines) == {"100": "ivr-access", "200": "ivr-revalue",
                                                     "300": "ivr-operator"}
    assert sip_lines_dialplan("18005550100=access, 300=operator").splitlines() == [
        "exten => 18005550100,1,Goto(ivr-access,s,1)",
        "exten => 300,1,Goto(ivr-operator,s,1)",
    ]


@pytest.mark.parametrize("spec, message", [
    ("100=voicemail", "unknown line"),
    ("1=access", "2 or more digits"),
    ("1&00=access", "2 or more digits"),
    ("100", "NUMBER=LINE"),
    ("100=access,100=operator", "given twice"),
    ("١٠٠=access", "2 or more digits"),  # digits, but not ASCII ones
])
def test_a_bad_line_mapping_is_refused_with_a_clear_error(spec: str, message: str):
    with pytest.raises(AsteriskSetupError, match=message):
        sip_line_routes(spec)


def test_addresses_cannot_add_config_lines():
    assert sip_bind_value("0.0.0.0:5060") == "0.0.0.0:5060"
    assert sip_bind_value("[::1]:5062") == "[::1]:5062"
    for bad in ("127.0.0.1", "127.0.0.1:50x", "127.0.0.1:5060\nallow=all", "h;x:5060"):
        with pytest.raises(AsteriskSetupError):
            sip_bind_value(bad)
    assert sip_external_lines("") == ""
    assert sip_external_lines("203.0.113.7").splitlines() == [
        "external_signaling_address = 203.0.113.7",
        "external_media_address = 203.0.113.7",
    ]
    with pytest.raises(AsteriskSetupError):
        sip_external_lines("203.0.113.7\n[evil]")
