"""Twenty SIP callers at once: each logs in with its own card, calls the test carrier,
talks for a known time with all twenty calls bridged together, hears the cost and hangs
up; every card is charged exactly its seconds and every caller heard audio."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ivr.ami import AmiClient
from ivr.config import Settings
from ivr.db.models import EntryKind
from ivr.testing.access import (
    AccessLine,
    Caller,
    CardInHand,
    account_state,
    cdrs,
    open_reservations,
)
from ivr.testing.sipua import SipUA, make_tone_wav, read_pcm16, rms

pytestmark = pytest.mark.sip

CALLERS = 20
# The test carrier answers 19996SS... and hangs up after SS seconds: long enough for the
# last caller's call to be answered before the first one's ends (all callers type their
# number together: the answers come within half a second of each other).
TALK = 5
BALANCE = Decimal("5.00")


def caller_id(i: int) -> str:
    return f"1555000{i:04d}"


@dataclass
class LoadWatch:
    """The access line's SIP calls (as ``sip_calls`` follows them) told apart by caller
    ID, each UA's From user; the called legs that are up (DialEnd ANSWER, not hung up
    yet); and what Asterisk measured of each answered call, from the Newexten events of
    the called channel's answer Gosub and hang-up handler (dialplan/ivr-access.conf):
    when billing started (IVR_ANSWERED_AT, Asterisk's clock) and the milliseconds the
    call is billed for (the AstDB record ``ANSWER,<ms>``)."""

    sip_calls: Any  # conftest's SipCalls
    callerid: dict[str, str] = field(default_factory=dict)  # caller uniqueid -> number
    up: set[str] = field(default_factory=set)  # called channels answered, not hung up
    most_up: int = 0
    called: dict[str, str] = field(default_factory=dict)  # called channel -> caller
    billed_from: dict[str, float] = field(default_factory=dict)  # caller -> epoch seconds
    billed_ms: dict[str, int] = field(default_factory=dict)  # caller -> ms
    _new: asyncio.Event = field(default_factory=asyncio.Event)

    def on_event(self, event: Mapping[str, str]) -> None:
        name = event.get("Event", "")
        uniqueid = event.get("Uniqueid", "")
        if name in ("Newchannel", "NewCallerid") and event.get("Channel", "").startswith(
                "PJSIP/"):
            self.callerid[uniqueid] = event.get("CallerIDNum", "")
            self._new.set()
        elif name == "DialBegin" and uniqueid in self.callerid:
            self.called[event.get("DestChannel", "")] = uniqueid
        elif (name == "DialEnd" and event.get("DialStatus") == "ANSWER"
              and uniqueid in self.callerid):
            self.up.add(event.get("DestChannel", ""))
            self.most_up = max(self.most_up, len(self.up))
        elif name == "Hangup":
            self.up.discard(event.get("Channel", ""))
        elif name == "Newexten" and event.get("Priority") == "1":
            caller = self.called.get(event.get("Channel", ""))
            context, data = event.get("Context", ""), event.get("AppData", "")
            if caller is not None and context == "ivr-access-answered":
                self.billed_from[caller] = float(data.partition("=")[2])
            elif caller is not None and context == "ivr-access-ended":
                self.billed_ms[caller] = int(data.rpartition(",")[2])

    async def call_from(self, ua: SipUA, timeout: float = 20) -> Any:
        """The call whose caller ID is ``ua``'s From user, given to ``ua`` to type its
        keys (``sip_calls.next_call`` would hand out the first one not yet claimed)."""
        async def wait() -> Any:
            while True:
                for call in self.sip_calls.calls:
                    if call.ua is None and self.callerid.get(call.id) == ua.user:
                        call.ua = ua
                        return call
                self._new.clear()
                await self._new.wait()

        return await asyncio.wait_for(wait(), timeout)


@pytest.fixture
async def watch(ami: AmiClient, sip_calls: Any) -> AsyncIterator[LoadWatch]:
    """Subscribed after ``sip_calls``: a call is in its list before its caller ID is
    seen here."""
    calls = LoadWatch(sip_calls)
    unsubscribe = ami.on_event("*", calls.on_event)
    yield calls
    unsubscribe()


@dataclass
class Leg:
    """One caller of the twenty: its UA, card and (once matched) its AGI-followed call."""

    ua: SipUA
    card: CardInHand
    call: Any = None  # conftest's SipCall
    caller: Caller | None = None
    closed: str = ""


async def test_twenty_sip_calls_at_once_complete_and_settle(
    access_line: AccessLine, watch: LoadWatch, sip_port: int,
    test_settings: Settings, tmp_path: Path,
):
    started = time.monotonic()
    # baresip ends the call when its microphone file ends: 120 s outlasts the test.
    mic = await asyncio.to_thread(make_tone_wav, tmp_path / "mic.wav", 120)
    # RTP ports of its own for each UA, above the instance's range.
    legs = []
    for i in range(CALLERS):
        first = test_settings.rtp_end + 300 + 10 * i
        ua = SipUA(tmp_path / f"ua{i:02d}", source_wav=mic, user=caller_id(i),
                   rtp_ports=(first, first + 9))
        legs.append(Leg(ua, access_line.card(str(BALANCE))))
    typed = f"9996{TALK:02d}1234"  # the access line makes it 1999 6SS 1234 (US)
    number = "1" + typed
    # Everyone types the number together, once all are at its prompt.
    at_prompt: list[float] = []
    at_prompt_users: set[str] = set()
    ended: list[float] = []
    all_at_prompt = asyncio.Event()

    async def place(leg: Leg) -> None:
        await leg.ua.dial(f"sip:100@127.0.0.1:{sip_port}")
        await leg.ua.wait_established(timeout=30)
        leg.call = await watch.call_from(leg.ua)
        leg.caller = caller = Caller(leg.call)
        await caller.log_in(leg.card)
        await caller.wait_prompt("enter-destination")
        at_prompt.append(time.monotonic())
        at_prompt_users.add(leg.ua.user)
        if len(at_prompt) == CALLERS:
            all_at_prompt.set()
        try:
            await asyncio.wait_for(all_at_prompt.wait(), 45)
        except TimeoutError:
            behind = {other.ua.user: other.caller.heard[-3:] if other.caller else None
                      for other in legs if other.ua.user not in at_prompt_users}
            raise AssertionError(f"{len(at_prompt)} of {CALLERS} callers at the number's "
                                 f"prompt after 45 s; the others heard: {behind}") from None
        await leg.call.send_dtmf(typed + "#")
        await caller.wait_prompt("call-cost", timeout=TALK + 30)
        await leg.ua.hangup()
        leg.closed = await leg.ua.wait_closed()
        await leg.call.wait_ended()
        ended.append(time.monotonic())

    try:
        await asyncio.gather(*(leg.ua.start() for leg in legs))
        ready = time.monotonic()
        tasks = [asyncio.ensure_future(place(leg)) for leg in legs]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
    finally:
        stopping = time.monotonic()
        await asyncio.gather(*(leg.ua.stop() for leg in legs))  # closes the recordings
    await access_line.server.wait_idle()
    done = time.monotonic()

    # Asterisk's measure of each answered call: billed from when, for how long.
    spans = [(watch.billed_from[c], watch.billed_from[c] + watch.billed_ms[c] / 1000)
             for c in watch.billed_ms if c in watch.billed_from]
    billed = sorted(watch.billed_ms.values()) or [0]
    spread = max(s for s, _ in spans) - min(s for s, _ in spans) if spans else -1.0
    print(f"\n{CALLERS} calls, seconds from the start: UAs up {ready - started:.1f}, all at "
          f"the number's prompt {max(at_prompt) - started:.1f} (spread "
          f"{max(at_prompt) - min(at_prompt):.2f}), all ended {max(ended) - started:.1f}, "
          f"UAs stopped {done - started:.1f} ({done - stopping:.1f}); most called legs up "
          f"at once: {watch.most_up}; answers spread over {spread:.3f}s; billed "
          f"{billed[0]}..{billed[-1]} ms")

    # Every call ran its route to the end: no AGI session failed or was refused.
    stats = access_line.server.stats
    assert stats.accepted == CALLERS, stats
    assert stats.failed == 0 and stats.refused == 0 and stats.cancelled == 0, stats
    assert stats.completed + stats.hung_up == CALLERS, stats
    assert len(watch.sip_calls.calls) == CALLERS
    # All twenty called legs were up together at one moment: as AMI showed them (answered,
    # not hung up), and by Asterisk's clock (the last answer came before the first end).
    assert watch.most_up == CALLERS, watch.most_up
    assert not watch.up  # and every one has hung up since
    assert len(spans) == CALLERS
    assert max(s for s, _ in spans) < min(e for _, e in spans), spans

    # Each card charged exactly the seconds Asterisk measured from the called channel's
    # answer Gosub to its hang-up handler, to the nearest second (ivr.live.calls.
    # CallOutcome). The carrier talks TALK seconds by its own clock; the measure starts a
    # moment after its answer and ends a moment after its hang-up: TALK s and a few ms, or
    # on a loaded machine (the answer handled later than the hang-up) TALK - 1 s and 99x
    # ms, both billed TALK s. Nothing left held.
    by_card = {cdr.card_id: cdr for cdr in cdrs(access_line)}
    assert len(by_card) == CALLERS
    for leg in legs:
        assert leg.caller is not None and leg.closed
        said = leg.caller.heard
        assert said[:3] == ["welcome", "enter-card-number", "enter-pin"], said
        assert "connecting" in said and "call-cost" in said, said
        ms = watch.billed_ms[leg.call.id]
        assert abs(ms - TALK * 1000) < 1000, ms
        seconds = (ms + 500) // 1000
        assert seconds == TALK, ms
        cost = Decimal(seconds) / 100  # a cent a second
        cdr = by_card[leg.card.card_id]
        assert (cdr.destination, cdr.billable_seconds, cdr.cost) == (number, seconds, cost)
        assert cdr.caller == leg.ua.user
        balance, reserved, entries = account_state(access_line, leg.card.account)
        assert [e.kind for e in entries] == [EntryKind.TOPUP, EntryKind.CALL]
        assert entries[1].amount == -cost
        assert balance == BALANCE - cost and reserved == 0
    assert not open_reservations(access_line)

    # Every caller heard audio (the prompts), not silence.
    for leg in legs:
        heard = read_pcm16(leg.ua.recording)
        level = rms(heard)
        assert level > 300, f"{leg.ua.user}: the recording is silent (rms {level:.0f})"
