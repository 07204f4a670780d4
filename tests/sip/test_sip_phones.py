"""Softphone accounts (`ivr sip phones`): a real baresip registers nothing, calls with
digest authentication from another loopback address than the test trunk's, reaches the
lines by short number, and nothing else; a wrong password gets no AGI session."""

from __future__ import annotations

from pathlib import Path

import pytest

from ivr import sip
from ivr.asterisk import AsteriskInstance
from ivr.testing.access import AccessLine, Caller
from ivr.testing.sipua import SipUA

pytestmark = pytest.mark.sip

PHONE_HOST = "127.0.0.2"  # not 127.0.0.1: requests from there are the test trunk's


def add_phone(line: AccessLine, asterisk: AsteriskInstance, name: str) -> str:
    """What `ivr sip phones add` does: the account in the database, the PJSIP objects in
    the instance, res_pjsip reloaded (live calls untouched). Its password."""
    with line.db.transaction() as s:
        password = sip.add_phone(s, name, "15550007777").password
    with line.db.reading() as s:
        sip.write_objects(s, asterisk.host(asterisk.etc_dir), key=line.app.secret_key)
    asterisk.cli("module reload res_pjsip.so")
    return password


async def phone(workdir: Path, name: str, password: str, sip_port: int,
                rtp: int) -> SipUA:
    ua = SipUA(workdir, user=name, listen_host=PHONE_HOST,
               domain=f"127.0.0.1:{sip_port}", password=password, rtp_ports=(rtp, rtp + 99))
    await ua.start()
    return ua


async def test_a_phone_calls_the_access_line_and_a_wrong_password_gets_nothing(
    access_line: AccessLine, asterisk: AsteriskInstance, sip_calls, sip_port: int,
    test_settings, tmp_path: Path,
):
    password = add_phone(access_line, asterisk, "deskphone")
    assert "deskphone" in asterisk.cli("pjsip show endpoints")
    rtp = test_settings.rtp_end + 300

    # The right password: the access line answers, its first prompt is the welcome.
    ua = await phone(tmp_path / "right", "deskphone", password, sip_port, rtp)
    try:
        await ua.dial(f"sip:100@127.0.0.1:{sip_port}")
        await ua.wait_established()
        call = await sip_calls.next_call(ua)
        assert call.channel.startswith("PJSIP/deskphone-"), call.channel
        caller = Caller(call)
        await caller.wait_prompt("enter-card-number")
        await ua.hangup()
        await ua.wait_closed()
        await call.wait_ended()
        assert caller.heard[:2] == ["welcome", "enter-card-number"]
        # A phone reaches the lines, not a trunk: any other number has no line (404).
        ua.events.clear()  # the first call's events
        await ua.dial(f"sip:442071234567@127.0.0.1:{sip_port}")
        reason = await ua.wait_closed(timeout=15)
        assert reason.startswith("404"), reason
    finally:
        await ua.stop()
    await access_line.server.wait_idle()
    accepted = access_line.server.stats.accepted

    # A wrong password: refused by the digest check, no AGI session, no call.
    ua = await phone(tmp_path / "wrong", "deskphone", "not-the-password", sip_port, rtp + 100)
    try:
        await ua.dial(f"sip:100@127.0.0.1:{sip_port}")
        reason = await ua.wait_closed(timeout=15)
        assert reason.startswith(("401", "403", "407")), reason
        assert "CALL_ESTABLISHED" not in [e.get("type") for e in ua.events]
    finally:
        await ua.stop()

    # A user name nobody has: the same answer as a wrong password (nothing tells which
    # accounts exist).
    ua = await phone(tmp_path / "nobody", "nobody", "whatever", sip_port, rtp + 200)
    try:
        await ua.dial(f"sip:100@127.0.0.1:{sip_port}")
        unknown = await ua.wait_closed(timeout=15)
    finally:
        await ua.stop()
    assert unknown.split()[0] == reason.split()[0], (unknown, reason)
    assert access_line.server.stats.accepted == accepted
    # Both refusals are in Asterisk's security log with the address they came from.
    log = asterisk.host(f"{asterisk.state_dir}/log/security.log")
    text = log.read_text() if log.exists() else ""
    assert "127.0.0.2" in text, text[-2000:]
