"""Both ends over real SIP: a caller's UA dials the access line on u-law, and the paid
call's outgoing leg leaves on a SIP carrier trunk (``ivr sip trunks add --outbound``) to a
second UA, the carrier, which answers on a-law. Each side plays its own tone as its voice
and records what it hears, so the checks are on audio:

- the talk path both ways (each side hears the other's tone, through u-law/a-law
  transcoding);
- the low-balance warning is in the caller's recording and not in the carrier's;
- during the ``*9`` top-up the carrier hears hold music, not the menu and not the caller;
- the carrier's leg is released by a BYE at the grant (the cut-off error is printed).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from ivr import sip
from ivr.ami import AmiClient
from ivr.asterisk import AsteriskInstance
from ivr.db.models import EntryKind
from ivr.money import vouchers
from ivr.prompts import PromptStore
from ivr.testing.access import AccessLine, Caller, account_state, cdrs, open_reservations
from ivr.testing.sipua import SipUA, make_tone_wav, match_score, read_pcm16, tone_level

pytestmark = pytest.mark.sip

CARRIER_HOST = "127.0.0.3"  # not 127.0.0.1 (the test trunk's) nor 127.0.0.2 (phones')
CALLER_TONE, CARRIER_TONE = 440, 1020  # Hz: each side's "voice"
# Quiet voices, so a prompt whispered over the carrier's tone still matches its file.
VOLUME = 0.02
HOLD_CHORD = (262, 330, 392)  # the instance's hold music (make_hold_music)
HEARD, NOT_HEARD = 0.8, 0.5  # prompt match scores (test_sip_access.py measured the gap)
TONE = 0.5  # share of a stretch's energy at a tone for it to count as heard
RATE = 8000
CALLED = "12125550100"  # a US number (0.60 a minute, per second) the carrier answers


def pcm_between(pcm: bytes, start: float, end: float) -> bytes:
    """The stretch of 8 kHz 16-bit audio from ``start`` to ``end`` seconds."""
    return pcm[max(0, int(start * RATE)) * 2: max(0, int(end * RATE)) * 2]


def prompt_audio(store: PromptStore, prompt_id: str, lang: str = "en") -> bytes:
    version = store.current(prompt_id, lang)
    assert version is not None, prompt_id
    base = store.version_base(prompt_id, lang, version.version)
    return read_pcm16(base.with_name(base.name + ".ulaw"))


async def score(heard: bytes, store: PromptStore, prompt_id: str) -> float:
    found, _ = await asyncio.to_thread(match_score, heard, prompt_audio(store, prompt_id))
    return found


@dataclass
class Carrier:
    ua: SipUA

    async def wait_answered(self, timeout: float = 60) -> float:
        event = await self.ua.wait_event("CALL_ESTABLISHED", timeout)
        return float(event["at"])

    async def wait_released(self, timeout: float = 90) -> tuple[float, str]:
        event = await self.ua.wait_event("CALL_CLOSED", timeout)
        return float(event["at"]), str(event.get("param", ""))


@pytest.fixture
async def carrier(
    access_line: AccessLine, asterisk: AsteriskInstance, test_settings, tmp_path: Path,
) -> AsyncIterator[Carrier]:
    """The carrier: a UA that answers every call on a-law only, playing its tone; and the
    trunk to it, added as `ivr sip trunks add carrier --host ... --outbound` does (objects
    written, res_pjsip reloaded), so paid calls leave on it."""
    first = test_settings.rtp_end + 600
    # baresip answers only requests for its own user: the number the tests dial.
    ua = SipUA(tmp_path / "carrier", user=CALLED, codecs="PCMA", listen_host=CARRIER_HOST,
               auto_answer=True, rtp_ports=(first, first + 99),
               source_wav=make_tone_wav(tmp_path / "carrier.wav", freq=CARRIER_TONE,
                                        volume=VOLUME))
    await ua.start()
    try:
        with access_line.db.transaction() as s:
            sip.add_trunk(s, "carrier", CARRIER_HOST, port=ua.sip_port,
                          key=access_line.app.secret_key, outbound=True)
        with access_line.db.reading() as s:
            sip.write_objects(s, asterisk.host(asterisk.etc_dir), key=access_line.app.secret_key)
        asterisk.cli("module reload res_pjsip.so")
        yield Carrier(ua)
    finally:
        await ua.stop()


@pytest.fixture
async def caller_ua(tmp_path: Path, test_settings) -> AsyncIterator[SipUA]:
    first = test_settings.rtp_end + 700
    ua = SipUA(tmp_path / "caller", user="15550004444", codecs="PCMU",
               rtp_ports=(first, first + 99),
               source_wav=make_tone_wav(tmp_path / "caller.wav", freq=CALLER_TONE,
                                        volume=VOLUME))
    await ua.start()
    yield ua
    await ua.stop()


async def native_format(ami: AmiClient, channel: str) -> str:
    reply = await ami.action("Getvar", Channel=channel, Variable="CHANNEL(audionativeformat)")
    return str(reply.get("Value", ""))


class HoldMusic:
    """MusicOnHoldStart/Stop of the carrier's channel, with their times."""

    def __init__(self, ami: AmiClient) -> None:
        self.events: list[tuple[float, dict[str, str]]] = []
        self._off = [ami.on_event(n, self._seen) for n in ("MusicOnHoldStart",
                                                            "MusicOnHoldStop")]

    def _seen(self, event: object) -> None:
        self.events.append((time.monotonic(), dict(event)))  # type: ignore[call-overload]

    def close(self) -> None:
        for off in self._off:
            off()

    def times(self, prefix: str) -> list[tuple[str, float]]:
        return [(e["Event"], t) for t, e in self.events if e.get("Channel", "").startswith(prefix)]


async def call_through(line: AccessLine, caller_ua: SipUA, carrier: Carrier, sip_calls,
                       sip_port: int, balance: str) -> tuple[Caller, object, float]:
    """A card logs in over SIP and dials a US number, which the carrier answers."""
    card = line.card(balance)
    await caller_ua.dial(f"sip:100@127.0.0.1:{sip_port}")
    await caller_ua.wait_established()
    call = await sip_calls.next_call(caller_ua)
    caller = Caller(call)
    await caller.log_in(card)
    await caller.dial(CALLED[1:])
    answered = await carrier.wait_answered()
    return caller, card, answered


@pytest.mark.parametrize(
    "access_line", [{"low_balance_warning": 12, "final_warning": 0}], indirect=True)
async def test_a_paid_call_to_a_sip_carrier_talks_both_ways_warns_only_the_caller_and_is_cut(
    access_line: AccessLine, caller_ua: SipUA, carrier: Carrier, sip_calls, sip_port: int,
    ami: AmiClient, instance_prompts: PromptStore,
):
    caller, card, answered = await call_through(access_line, caller_ua, carrier, sip_calls,
                                                sip_port, "0.20")  # 20 s at 0.60/min
    # The caller's leg is u-law, the carrier's a-law: Asterisk transcodes between them.
    legs = [c for c in sip_calls.calls if c.channel.startswith("PJSIP/carrier-")]
    assert len(legs) == 1, [c.channel for c in sip_calls.calls]
    assert await native_format(ami, caller.call.channel) == "(ulaw)"
    assert await native_format(ami, legs[0].channel) == "(alaw)"
    released, reason = await carrier.wait_released(timeout=40)
    await caller.wait_prompt("call-cost")
    await caller_ua.hangup()
    await caller_ua.wait_closed()
    await caller.call.wait_ended()
    await access_line.server.wait_idle()
    await caller_ua.stop()  # the recordings' WAV headers are written at exit
    await carrier.ua.stop()

    # Released by Asterisk (a BYE) at the 20-second grant.
    cut_error = (released - answered) - 20
    print(f"carrier leg released {cut_error * 1000:+.0f} ms from its 20 s grant ({reason})")
    assert abs(cut_error) <= 1.0, cut_error
    assert "time-up" in caller.heard
    # Charged exactly the 20 seconds.
    (cdr,) = cdrs(access_line)
    assert (cdr.billable_seconds, cdr.cost) == (20, Decimal("0.20"))
    balance, reserved, entries = account_state(access_line, card.account)
    assert [e.kind for e in entries] == [EntryKind.TOPUP, EntryKind.CALL]
    assert balance == 0 and reserved == 0 and not open_reservations(access_line)

    # Audio. Times in the caller's recording count from the caller's answer.
    heard = read_pcm16(caller_ua.recording)
    far = read_pcm16(carrier.ua.recording)
    bridged = answered - float(next(e["at"] for e in caller_ua.events
                                    if e.get("type") == "CALL_ESTABLISHED"))
    # Talk path, both ways, before the warning (whispered 8 s after the answer).
    caller_hears = tone_level(pcm_between(heard, bridged + 1, bridged + 6), CARRIER_TONE)
    carrier_hears = tone_level(pcm_between(far, 1, 6), CALLER_TONE)
    print(f"talk path: caller hears the carrier's tone {caller_hears:.2f}, "
          f"the carrier hears the caller's {carrier_hears:.2f}")
    assert caller_hears > TONE and carrier_hears > TONE
    # The warning ("you have 12 seconds left on this call") in the caller's ear only.
    warned = pcm_between(heard, bridged + 6, bridged + 20)
    ours = await score(warned, instance_prompts, "left-on-call")
    theirs = await score(far, instance_prompts, "left-on-call")
    welcome = await score(pcm_between(heard, 0, 12), instance_prompts, "welcome")
    print(f"scores: welcome {welcome:.3f}; warning to the caller {ours:.3f}, "
          f"to the carrier {theirs:.3f}")
    assert welcome > HEARD and ours > HEARD, (welcome, ours)
    assert theirs < NOT_HEARD, theirs


TOPUP = {"low_balance_warning": 0, "final_warning": 0, "topup_amounts": "0.40,1.00"}


@pytest.mark.parametrize("access_line", [TOPUP], indirect=True)
async def test_a_voucher_top_up_mid_call_holds_the_carrier_on_music_and_moves_the_bye(
    access_line: AccessLine, caller_ua: SipUA, carrier: Carrier, sip_calls, sip_port: int,
    ami: AmiClient, instance_prompts: PromptStore, tmp_path: Path,
):
    (voucher,) = vouchers.generate(access_line.db, 1, Decimal("0.20"), "USD",
                                   tmp_path / "vouchers.csv", key=access_line.app.secret_key)
    music = HoldMusic(ami)
    try:
        caller, card, answered = await call_through(access_line, caller_ua, carrier,
                                                    sip_calls, sip_port, "0.10")  # 10 s
        await asyncio.sleep(2.5)  # a stretch of conversation before the menu
        await caller_ua.send_dtmf("*9")
        await caller.answer("topup-menu", "2")
        await caller.answer("enter-voucher", voucher.code + "#")
        await caller.wait_prompt("topup-done")
        await caller.wait_prompt("returning-to-call")
        released, _ = await carrier.wait_released(timeout=60)
        await caller.wait_prompt("call-cost")
        await caller_ua.hangup()
        await caller_ua.wait_closed()
        await caller.call.wait_ended()
        await access_line.server.wait_idle()
    finally:
        music.close()
    await caller_ua.stop()
    await carrier.ua.stop()

    held = music.times("PJSIP/carrier-")
    assert [kind for kind, _ in held] == ["MusicOnHoldStart", "MusicOnHoldStop"], held
    (_, start), (_, stop) = held
    start, stop = start - answered, stop - answered
    # The menu outlasted the first grant (10 s) without cutting the call, and the
    # voucher's 0.20 made the grant 30 s from the answer: the BYE came then.
    cut_error = (released - answered) - 30
    print(f"hold {start:.1f}-{stop:.1f} s; BYE {cut_error * 1000:+.0f} ms from the new grant")
    assert 10 < stop < 28, stop
    assert abs(cut_error) <= 1.0, cut_error
    (cdr,) = cdrs(access_line)
    assert (cdr.billable_seconds, cdr.cost) == (30, Decimal("0.30"))
    balance, reserved, entries = account_state(access_line, card.account)
    assert [(e.kind, e.amount) for e in entries] == [
        (EntryKind.TOPUP, Decimal("0.10")), (EntryKind.VOUCHER, Decimal("0.20")),
        (EntryKind.CALL, Decimal("-0.30"))]
    assert balance == 0 and reserved == 0 and not open_reservations(access_line)

    # What the carrier heard while the caller was in the menu: the hold music (its
    # chord), not the menu's prompts and not the caller's voice.
    far = read_pcm16(carrier.ua.recording)
    on_hold = pcm_between(far, start + 0.5, stop - 0.5)
    assert len(on_hold) > 2 * RATE * 3, "less than 3 s on hold"
    chord = sum(tone_level(on_hold, f) for f in HOLD_CHORD)
    caller_voice = tone_level(on_hold, CALLER_TONE)
    # The menu's own prompts are cut short by the caller's keys; "returning to your
    # call" plays whole, so it is the one matched.
    menu_to_carrier = await score(far, instance_prompts, "returning-to-call")
    heard = read_pcm16(caller_ua.recording)
    menu_to_caller = await score(heard, instance_prompts, "returning-to-call")
    print(f"on hold the carrier heard the chord {chord:.2f}, the caller {caller_voice:.2f}; "
          f"'returning-to-call' scores {menu_to_caller:.3f} to the caller, "
          f"{menu_to_carrier:.3f} to the carrier")
    assert chord > TONE, chord
    assert caller_voice < 0.05, caller_voice
    assert menu_to_caller > HEARD and menu_to_carrier < NOT_HEARD
    # Before and after the hold, the talk path was there. (A recording's clock and the
    # events' differ by a few hundred ms: the windows keep clear of the edges.)
    assert tone_level(pcm_between(far, 0.3, start - 1.0), CALLER_TONE) > TONE
    assert tone_level(pcm_between(far, stop + 0.5, stop + 4), CALLER_TONE) > TONE
