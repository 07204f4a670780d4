"""The call's limit and the low-balance warnings, in a real Asterisk.

Asterisk itself ends the call when the grant runs out; the caller alone hears the
warnings. To prove "alone", both legs are recorded with MixMonitor from the moment the
called party answers: the caller's handset recording carries the whispered speech, the
called party's stays silent.
"""

from __future__ import annotations

import array
import asyncio
import time
import wave
from decimal import Decimal
from pathlib import Path

import pytest

from ivr.ami import AmiClient
from ivr.asterisk import AsteriskInstance
from ivr.testing.access import AccessLine, Caller, account_state, cdrs
from ivr.testing.phone import Phone

pytestmark = pytest.mark.asterisk

WARN, FINAL = 16, 4  # seconds before the cut


def rms(path: Path, start: float = 0.0) -> float:
    """Root mean square of a 16-bit mono WAV from ``start`` seconds on."""
    with wave.open(str(path)) as w:
        assert w.getsampwidth() == 2
        w.setpos(min(w.getnframes(), int(start * w.getframerate())))
        samples = array.array("h", w.readframes(w.getnframes()))
    if not samples:
        return 0.0
    return (sum(s * s for s in samples) / len(samples)) ** 0.5


@pytest.mark.parametrize(
    "access_line", [{"low_balance_warning": WARN, "final_warning": FINAL}], indirect=True
)
async def test_call_is_cut_at_its_limit_and_only_the_caller_is_warned(
    access_line: AccessLine, phone: Phone, ami: AmiClient, asterisk: AsteriskInstance
):
    # 1.20 a minute to the UK, per second: 0.40 buys exactly 20 seconds.
    card = access_line.card("0.40")
    events: list[tuple[float, dict[str, str]]] = []

    def seen(event: object) -> None:
        events.append((time.monotonic(), dict(event)))  # type: ignore[call-overload]

    unsubscribe = [ami.on_event(name, seen) for name in ("DialEnd", "Hangup", "ChanSpyStart")]
    recordings = Path(asterisk.host(f"{asterisk.base}/tmp"))
    recordings.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
    tag = f"limit-{time.time_ns()}"
    try:
        call = await phone.call("ivr-access", callerid="15550003333")
        caller = Caller(call)
        await caller.log_in(card)
        await caller.dial("011442079460000")
        answered = await call.wait_for(
            lambda c: next((e for e in events if e[1].get("Event") == "DialEnd"
                            and e[1].get("Uniqueid") == c.id), None), 60, "the answer")
        answered_at, dial_end = answered  # type: ignore[misc]
        assert dial_end["DialStatus"] == "ANSWER"
        callee = dial_end["DestChannel"]
        # What each party hears: the audio the handset half reads (r), and the audio
        # the bridge sends to the called channel (t).
        for leg, channel, option in (("caller", call.handset_channel, "r"),
                                     ("callee", callee, "t")):
            base = f"{asterisk.base}/tmp/{tag}-{leg}"
            await ami.action("MixMonitor", Channel=channel, File=f"{base}-both.wav",
                             Options=f"{option}({base}.wav)")
        hangup = await call.wait_for(
            lambda c: next((e for e in events if e[1].get("Event") == "Hangup"
                            and e[1].get("Channel") == callee), None), 30, "the cut")
        ended_at, _ = hangup  # type: ignore[misc]
        await caller.wait_prompt("call-cost")
        await call.hangup()
        await call.wait_ended()
        await access_line.server.wait_idle()
    finally:
        for off in unsubscribe:
            off()

    # Cut by Asterisk within 1 s of the 20-second grant.
    assert abs((ended_at - answered_at) - 20) <= 1.0, ended_at - answered_at
    assert "time-up" in caller.heard
    # Both warnings were whispered into the caller's channel, at their times.
    spies = [(t - answered_at, e) for t, e in events if e.get("Event") == "ChanSpyStart"]
    assert [e["SpyeeChannel"] for _, e in spies] == [call.channel, call.channel]
    assert abs(spies[0][0] - (20 - WARN)) <= 1.0 and abs(spies[1][0] - (20 - FINAL)) <= 1.0
    # The caller heard speech; the called party heard nothing.
    await asyncio.sleep(0.5)  # MixMonitor closes its files as the channels go
    caller_rms = rms(recordings / f"{tag}-caller.wav")
    callee_rms = rms(recordings / f"{tag}-callee.wav")
    assert caller_rms > 300, caller_rms
    assert callee_rms < 30, callee_rms
    # ... over the whole call: the callee's recording has the call's length of silence.
    with wave.open(str(recordings / f"{tag}-callee.wav")) as w:
        assert w.getnframes() >= 10 * w.getframerate()
    # And the call was charged exactly its 20 seconds.
    balance, reserved, _ = account_state(access_line, card.account)
    assert balance == Decimal("0.00") and reserved == 0
    (cdr,) = cdrs(access_line)
    assert cdr.billable_seconds == 20 and cdr.cost == Decimal("0.40")
