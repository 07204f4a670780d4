"""The access line called by a real SIP user agent (baresip) over loopback: SIP, G.711 RTP
and RFC 4733 DTMF into the project's Asterisk, and checks on the audio the caller heard."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import pytest

from ivr.db.models import EntryKind
from ivr.prompts import PromptStore
from ivr.testing.access import AccessLine, Caller, account_state, cdrs, open_reservations
from ivr.testing.sipua import SipUA, match_score, read_pcm16, rms

pytestmark = pytest.mark.sip

# Normalised cross-correlation of a prompt's audio against what the UA recorded: the
# prompt played over G.711 scores ~1.0 (measured 0.99+), a prompt the caller never heard
# stays far below (measured under 0.3). The threshold sits between with a wide margin.
HEARD_THRESHOLD = 0.8
# Seconds of the recording searched for the first prompts (the search is O(n*m)).
OPENING = 12.0


def prompt_audio(store: PromptStore, prompt_id: str, lang: str = "en") -> bytes:
    """The prompt's current version as 8 kHz linear samples: its u-law file, which is
    what Asterisk sends a G.711 u-law caller (so no other round trip is needed)."""
    version = store.current(prompt_id, lang)
    assert version is not None, prompt_id
    base = store.version_base(prompt_id, lang, version.version)
    return read_pcm16(base.with_name(base.name + ".ulaw"))


async def test_a_sip_caller_logs_in_calls_and_hears_the_welcome(
    access_line: AccessLine, user_agent: SipUA, sip_calls, sip_port: int,
    instance_prompts: PromptStore,
):
    card = access_line.card("5.00")
    await user_agent.dial(f"sip:100@127.0.0.1:{sip_port}")
    await user_agent.wait_established()
    call = await sip_calls.next_call(user_agent)
    caller = Caller(call)
    await caller.log_in(card)
    # 999 603 ...: the test carrier answers, talks 3 seconds and hangs up.
    await caller.dial("9996031234")
    await caller.wait_prompt("another-call")
    await user_agent.hangup()
    reason = await user_agent.wait_closed()
    await call.wait_ended()
    await access_line.server.wait_idle()
    await user_agent.stop()  # closes the recording

    said = caller.heard
    assert said[:3] == ["welcome", "enter-card-number", "enter-pin"]
    assert "connecting" in said and "call-cost" in said
    assert reason  # baresip says why the call closed (we hung up)
    # Settled exactly: 3 seconds at 0.60 a minute, per second.
    (cdr,) = cdrs(access_line)
    assert cdr.billable_seconds == 3 and cdr.cost == Decimal("0.03")
    assert cdr.destination == "19996031234"
    balance, reserved, entries = account_state(access_line, card.account)
    assert [e.kind for e in entries] == [EntryKind.TOPUP, EntryKind.CALL]
    assert entries[1].amount == Decimal("-0.03")
    assert balance == Decimal("4.97") and reserved == 0
    assert not open_reservations(access_line)
    assert access_line.server.stats.failed == 0

    # What the caller heard: not silence, and the welcome prompt is in it.
    heard = read_pcm16(user_agent.recording)
    assert len(heard) > 2 * 8000 * 5, "less than 5 s of audio heard"
    assert rms(heard) > 300, f"the recording is silent (rms {rms(heard):.0f})"
    opening = heard[: int(OPENING * 8000) * 2]
    welcome, at = await asyncio.to_thread(
        match_score, opening, prompt_audio(instance_prompts, "welcome"))
    wrong, _ = await asyncio.to_thread(
        match_score, opening, prompt_audio(instance_prompts, "unknown-destination"))
    print(f"welcome score {welcome:.4f} at {at:.2f}s; a prompt not played: {wrong:.4f}")
    assert welcome > HEARD_THRESHOLD, (welcome, wrong)
    assert wrong < HEARD_THRESHOLD, (welcome, wrong)
    assert at < 3.0  # the welcome is the first thing heard


async def test_an_unknown_number_is_refused_without_an_agi_session(
    access_line: AccessLine, user_agent: SipUA, sip_calls, sip_port: int,
):
    await user_agent.dial(f"sip:555@127.0.0.1:{sip_port}")
    reason = await user_agent.wait_closed(timeout=15)
    assert reason.startswith("404"), reason
    assert "CALL_ESTABLISHED" not in [e.get("type") for e in user_agent.events]
    # The dialplan refused it: the inbound context, then Hangup(1), no AGI.
    call = await sip_calls.next_call(user_agent, timeout=5)
    await call.wait_ended()
    assert len(sip_calls.calls) == 1
    assert [app for app, _ in call.applications if app == "AGI"] == []
    assert ("Hangup", "1") in call.applications
    assert call.commands == []
    stats = access_line.server.stats
    assert stats.accepted == 0 and stats.refused == 0


# Each of the first five becomes "100" (the access line) once its other characters are
# dropped: the context must refuse, not clean up. "%40" is an escaped "@".
@pytest.mark.parametrize("user", ["1&00", "10,0", "10/0", "1%4000", "10;0", "1&2", "abc"])
async def test_a_called_number_with_other_characters_is_refused(
    access_line: AccessLine, tmp_path: Path, user_agent: SipUA, sip_port: int, user: str,
):
    """Characters a dial string would act on never get past the inbound context: the
    call is refused like an unknown number (Asterisk's 404 for no such extension, or
    the context's own Hangup(1))."""
    await user_agent.dial(f"sip:{user}@127.0.0.1:{sip_port}")
    reason = await user_agent.wait_closed(timeout=15)
    assert reason.startswith("404"), reason
    assert access_line.server.stats.accepted == 0


async def test_pinless_log_in_from_the_sip_caller_id(
    access_line: AccessLine, tmp_path: Path, sip_calls, sip_port: int, test_settings,
):
    """The trunk's caller ID (the From user) is the card's registered number: welcomed
    back, no card number or PIN asked, and the call is the card's."""
    card = access_line.card("5.00", callerid="12125550199")
    first = test_settings.rtp_end + 200
    ua = SipUA(tmp_path / "pinless", user="12125550199", rtp_ports=(first, first + 99))
    await ua.start()
    try:
        await ua.dial(f"sip:100@127.0.0.1:{sip_port}")
        await ua.wait_established()
        call = await sip_calls.next_call(ua)
        caller = Caller(call)
        await caller.dial("9996021234")  # the test carrier answers for 2 s
        await caller.wait_prompt("another-call")
        await ua.hangup()
        await ua.wait_closed()
        await call.wait_ended()
    finally:
        await ua.stop()
    await access_line.server.wait_idle()
    assert caller.heard[:2] == ["welcome", "welcome-back"]
    assert "enter-card-number" not in caller.heard and "enter-pin" not in caller.heard
    (cdr,) = cdrs(access_line)
    assert (cdr.card_id, cdr.billable_seconds, cdr.cost) == (card.card_id, 2, Decimal("0.02"))
    assert cdr.caller == "12125550199"


# The registered number 12125550199 with a character a dial string or a channel variable
# would act on in the middle ("%40" is an escaped "@"), and the caller ID Asterisk makes
# of it (PJSIP ends the user at ";", which starts a URI parameter there).
@pytest.mark.parametrize("user, callerid", [
    ("1212555&0199", "1212555&0199"), ("1212555,0199", "1212555,0199"),
    ("1212555/0199", "1212555/0199"), ("1212555;0199", "1212555"),
    ("1212555%400199", "1212555@0199"),
])
async def test_a_caller_id_with_other_characters_counts_as_withheld(
    access_line: AccessLine, tmp_path: Path, sip_calls, sip_port: int, test_settings,
    user: str, callerid: str,
):
    """A From user that is not written like a number is no caller ID (cut at ";", it is
    another number): no pinless log-in for the card registered to its digits, the card
    number is asked, and nothing of it is recorded."""
    access_line.card("5.00", callerid="12125550199")
    first = test_settings.rtp_end + 200
    ua = SipUA(tmp_path / "from", user=user, rtp_ports=(first, first + 99))
    seen: list[str] = []
    off = sip_calls.ami.on_event("Newchannel", lambda e: seen.append(e.get("CallerIDNum", "")))
    await ua.start()
    try:
        await ua.dial(f"sip:100@127.0.0.1:{sip_port}")
        await ua.wait_established()
        call = await sip_calls.next_call(ua)
        caller = Caller(call)
        await caller.wait_prompt("enter-card-number")
        await ua.hangup()
        await ua.wait_closed()
        await call.wait_ended()
    finally:
        off()
        await ua.stop()
    await access_line.server.wait_idle()
    # The characters did reach Asterisk as the caller ID ...
    assert seen[:1] == [callerid], seen
    # ... and went no further.
    assert caller.heard[:2] == ["welcome", "enter-card-number"], caller.heard
    assert "welcome-back" not in caller.heard
    assert cdrs(access_line) == []
    assert access_line.server.stats.failed == 0


async def test_an_invite_from_an_unknown_address_is_refused(
    access_line: AccessLine, asterisk, tmp_path: Path, test_settings, sip_port: int,
):
    """A UA on an address no trunk matches, with no account: challenged, it has nothing
    to answer with, and the call never reaches a line; the security log names it."""
    first = test_settings.rtp_end + 200
    ua = SipUA(tmp_path / "stranger", user="15550009999", listen_host="127.0.0.5",
               rtp_ports=(first, first + 99))
    await ua.start()
    try:
        await ua.dial(f"sip:100@127.0.0.1:{sip_port}")
        reason = await ua.wait_closed(timeout=15)
    finally:
        await ua.stop()
    assert reason.startswith(("401", "403", "407")), reason
    assert "CALL_ESTABLISHED" not in [e.get("type") for e in ua.events]
    assert access_line.server.stats.accepted == 0
    log = asterisk.host(f"{asterisk.state_dir}/log/security.log")
    assert "127.0.0.5" in (log.read_text() if log.exists() else ""), "not in security.log"
