"""The prompt matcher the SIP tests hear prompts with (ivr.testing.sipua.match_score): a
prompt heard whole scores high even with a frame lost or doubled on the way, and audio
without it scores low."""

from __future__ import annotations

import array
import math
import random

import pytest

from ivr.testing.sipua import match_score

RATE = 8000


def speech_like(seconds: float, seed: int) -> bytes:
    """Noise in syllable-long bursts over a wandering pitch: as unlike a tone as speech."""
    rnd = random.Random(seed)
    out = array.array("h")
    pitch = 120.0
    for i in range(int(seconds * RATE)):
        if i % 1600 == 0:
            pitch = rnd.uniform(90, 220)
        envelope = abs(math.sin(math.pi * i / 1600))
        voiced = math.sin(2 * math.pi * pitch * i / RATE) + 0.5 * math.sin(
            4 * math.pi * pitch * i / RATE)
        out.append(int(6000 * envelope * (0.6 * voiced + 0.4 * rnd.uniform(-1, 1))))
    return out.tobytes()


def tone(freq: float, seconds: float, level: int = 600) -> bytes:
    return array.array("h", (int(level * math.sin(2 * math.pi * freq * i / RATE))
                             for i in range(int(seconds * RATE)))).tobytes()


def mix(a: bytes, b: bytes) -> bytes:
    x, y = array.array("h", a), array.array("h", b)
    summed = (max(-32768, min(32767, p + q)) for p, q in zip(x, y, strict=True))
    return array.array("h", summed).tobytes()


def placed(prompt: bytes, at: float, seconds: float = 3.0) -> bytes:
    """``prompt`` starting ``at`` seconds into ``seconds`` of a quiet far-end tone."""
    lead = b"\0" * (int(at * RATE) * 2)
    body = (lead + prompt + b"\0" * (int(seconds * RATE) * 2))[: int(seconds * RATE) * 2]
    return mix(body, tone(1020, seconds))


PROMPT = speech_like(1.2, seed=1)
MIDDLE = len(PROMPT) // 4 * 2  # a byte offset on a sample, near the middle


def test_a_prompt_heard_as_played_scores_near_one_where_it_starts() -> None:
    score, at = match_score(placed(PROMPT, 0.5), PROMPT)
    assert score > 0.98 and at == pytest.approx(0.5, abs=0.001)


@pytest.mark.parametrize("damaged", [
    PROMPT[:MIDDLE] + PROMPT[MIDDLE + 160 * 2:],  # 20 ms lost
    PROMPT[:MIDDLE] + b"\0" * (320 * 2) + PROMPT[MIDDLE:],  # 40 ms of silence slipped in
    PROMPT[:MIDDLE] + PROMPT[MIDDLE - 160 * 2: MIDDLE] + PROMPT[MIDDLE:],  # 20 ms twice
], ids=["frame-lost", "gap", "frame-doubled"])
def test_a_prompt_out_of_step_after_a_lost_frame_still_scores_as_heard(damaged: bytes) -> None:
    heard = placed(damaged, 0.5)
    score, _ = match_score(heard, PROMPT)
    whole_only, _ = match_score(heard, PROMPT, piece=10.0)  # one piece: the old measure
    assert score > 0.85, (score, whole_only)
    assert whole_only < score


@pytest.mark.parametrize("heard", [
    tone(1020, 3.0),  # the far end's voice alone
    mix(mix(tone(262, 3.0, 3000), tone(330, 3.0, 3000)), tone(392, 3.0, 3000)),  # hold music
    placed(speech_like(1.2, seed=2), 0.5),  # another prompt
], ids=["tone", "music", "other-speech"])
def test_audio_without_the_prompt_scores_low(heard: bytes) -> None:
    score, _ = match_score(heard, PROMPT)
    assert score < 0.5, score


def test_heard_audio_shorter_than_the_prompt_scores_zero() -> None:
    assert match_score(PROMPT[:100], PROMPT) == (0.0, 0.0)
