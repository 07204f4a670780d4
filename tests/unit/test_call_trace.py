"""The call trace recorder (ivr.live.trace): steps are buffered without I/O and written
in batches; the AGI watcher turns commands into prompts, keys and Dial, masking what is
typed or said inside ``secret``; and a scripted call's whole story (a card-and-PIN call
answered for 42 s) is recorded with its PIN masked."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from ivr.agi.protocol import Reply
from ivr.live.trace import MASK, AgiWatcher, CallTrace, read_trace
from ivr.testing.scripted import Line, Outcome, ScriptedCaller


class FakeDb:
    """Records the batches a recorder writes; ``fail`` makes the next writes fail."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, float, str, dict[str, Any]]]] = []
        self.fail = 0

    def write(self, batch: list[Any]) -> None:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("database away")
        self.batches.append(list(batch))


def recorder(interval: float = 0.05) -> tuple[CallTrace, FakeDb]:
    db = FakeDb()
    return CallTrace(db, interval=interval, write=db.write), db  # type: ignore[arg-type]


def steps(db: FakeDb) -> list[tuple[str, str, dict[str, Any]]]:
    return [(call_id, kind, detail) for batch in db.batches for call_id, _, kind, detail in batch]


async def wait_for(check: Any, timeout: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "not within the deadline"
        await asyncio.sleep(0.01)


async def test_steps_are_buffered_then_written_in_one_batch() -> None:
    trace, db = recorder(interval=0.2)
    for n in range(5):
        trace.event("1.1", "prompt", prompt=f"p{n}")
    trace.event("", "prompt", prompt="nameless")  # no call: nothing recorded
    # Nothing written by event() itself: the write comes interval seconds later.
    await asyncio.sleep(0)
    assert db.batches == [] and trace.pending == 5
    await wait_for(lambda: db.batches)
    assert len(db.batches) == 1
    assert [d["prompt"] for _, _, d in steps(db)] == ["p0", "p1", "p2", "p3", "p4"]
    assert trace.pending == 0
    # A later step starts a new batch; close() writes what is left at once.
    trace.event("1.1", "hangup", by="caller")
    await trace.close()
    assert len(db.batches) == 2 and steps(db)[-1][1] == "hangup"
    trace.event("1.1", "late")  # after close: buffered, never scheduled
    await asyncio.sleep(0.1)
    assert len(db.batches) == 2


async def test_a_failed_write_keeps_the_steps_for_the_next_one() -> None:
    trace, db = recorder()
    db.fail = 1
    trace.event("2.1", "grant", seconds=60)
    # The write fails in the writer's thread; its steps come back to the buffer.
    await wait_for(lambda: db.fail == 0 and trace.pending == 1)
    assert db.batches == []
    trace.event("2.1", "end", cost="0.10")
    await wait_for(lambda: db.batches)
    assert [kind for _, kind, _ in steps(db)] == ["grant", "end"]
    await trace.close()


async def test_without_a_loop_steps_wait_for_flush() -> None:
    trace, db = recorder()

    def record() -> None:  # as a worker thread or a command would
        trace.event("3.1", "grant", seconds=10)

    await asyncio.to_thread(record)
    await asyncio.sleep(0.15)
    assert db.batches == []
    await trace.flush()
    assert [kind for _, kind, _ in steps(db)] == ["grant"]


def reply(result: str, data: str | None = None) -> Reply:
    return Reply(200, result, data)


def test_the_watcher_masks_secret_keys_and_digits_said() -> None:
    trace, db = recorder()
    w = AgiWatcher(trace, "4.1")
    pin = "/var/lib/asterisk/sounds/ivr/en/enter-pin/v2"
    w.sent("GET DATA", (pin, 10000, 12), True)
    w.replied("GET DATA", (pin, 10000, 12), reply("4321"), True)
    w.sent("GET DATA", ("/x/en/enter-destination/v1", 10000, 20), False)
    w.replied("GET DATA", ("/x/en/enter-destination/v1", 10000, 20), reply("12125550100"),
              False)
    w.sent("SAY DIGITS", ("5566", ""), True)
    w.sent("SAY NUMBER", ("42", ""), False)
    w.sent("STREAM FILE", ("digits/7", ""), True)
    w.sent("STREAM FILE", ("/x/en/menu/v1", "12"), False)
    w.replied("STREAM FILE", ("/x/en/menu/v1", "12"), reply(str(ord("2"))), False)
    w.replied("WAIT FOR DIGIT", (3000,), reply(str(ord("9"))), True)
    w.sent("GET DATA", ("/x/en/enter-cvv/v1", 10000, 4), True)
    w.replied("GET DATA", ("/x/en/enter-cvv/v1", 10000, 4), reply("", "timeout"), True)
    w.sent("EXEC", ("Dial", "PJSIP/12125550100@trunk,30,U(ivr-access-answered^60^4.1-1)"),
           False)
    w.sent("EXEC", ("Playback", "beep&silence/1"), False)
    w.sent("SET VARIABLE", ("IVR_SETTLED", "0"), False)  # not a step
    w.hung_up()
    w.sent("HANGUP", (), False)  # the caller hung up first: one hang-up step
    got = [(kind, detail) for _, _, kind, detail in trace._buffer]
    assert got == [
        ("prompt", {"prompt": "enter-pin", "lang": "en", "version": 2}),
        ("keys", {"keys": MASK * 4, "count": 4, "masked": True}),
        ("prompt", {"prompt": "enter-destination", "lang": "en", "version": 1}),
        ("keys", {"keys": "12125550100", "count": 11}),
        ("say", {"said": MASK * 4, "masked": True}),
        ("say", {"said": "42"}),
        ("prompt", {"prompt": MASK, "masked": True}),
        ("prompt", {"prompt": "menu", "lang": "en", "version": 1}),
        ("keys", {"keys": "2", "count": 1}),
        ("keys", {"keys": MASK, "count": 1, "masked": True}),
        ("prompt", {"prompt": "enter-cvv", "lang": "en", "version": 1}),
        ("keys", {"keys": "", "timeout": True}),
        ("dial", {"target": "PJSIP/12125550100@trunk", "timeout": 30}),
        ("prompt", {"prompt": "beep"}),
        ("prompt", {"prompt": "silence/1"}),
        ("hangup", {"by": "caller"}),
    ]
    assert all(call_id == "4.1" for call_id, *_ in trace._buffer)
    text = json.dumps([d for *_, d in trace._buffer])
    assert "4321" not in text and "5566" not in text and "digits/7" not in text


def test_a_watcher_that_fails_never_reaches_the_call(caplog: pytest.LogCaptureFixture) -> None:
    from ivr.agi.protocol import AgiEnvironment
    from ivr.agi.session import AgiSession

    class Broken:
        def sent(self, *args: object) -> None:
            raise RuntimeError("boom")

        replied = sent

        def hung_up(self) -> None:
            raise RuntimeError("boom")

    session = AgiSession.__new__(AgiSession)
    session.env = AgiEnvironment({"uniqueid": "5.1"})
    session.watcher = Broken()
    session._watch(session.watcher.sent, "ANSWER", (), False)  # logged, not raised
    assert "call trace failed" in caplog.text


async def test_a_scripted_call_has_its_whole_story_with_the_pin_masked(line: Line) -> None:
    card = line.card("5.00")
    caller = ScriptedCaller({"enter-card-number": [card.number], "enter-pin": [card.pin],
                             "enter-destination": ["12125550100"]},
                            dials=[Outcome.answered(42)])
    await line.call(caller, uniqueid="1700000123.7")
    await line.app.trace.flush()

    events = await asyncio.to_thread(read_trace, line.db, "1700000123.7")
    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and events[0].detail["route"] == "access"
    prompts = [e.detail["prompt"] for e in events if e.kind == "prompt"]
    assert prompts[:3] == ["welcome", "enter-card-number", "enter-pin"]
    keys = [e.detail for e in events if e.kind == "keys"]
    assert keys[0] == {"keys": MASK * len(card.number), "count": len(card.number),
                       "masked": True}
    assert keys[1] == {"keys": MASK * len(card.pin), "count": len(card.pin), "masked": True}
    assert keys[2] == {"keys": "12125550100", "count": 11}
    (grant,) = [e for e in events if e.kind == "grant"]
    assert grant.detail["call"] == "1700000123.7-1" and grant.detail["currency"] == "USD"
    # A hold of reservation_hold (300 s, 3.00 at 0.60 a minute); 5.00 buys 500 s.
    assert (grant.detail["seconds"], grant.detail["amount"], grant.detail["affordable"]) == (
        300, "3.00", 500)
    (dial,) = [e for e in events if e.kind == "dial"]
    (end,) = [e for e in events if e.kind == "end"]
    assert kinds.index("grant") < kinds.index("dial") < kinds.index("end")
    # 42 s at 0.60 a minute; the currency comes from the grant (no controller here).
    assert end.detail["status"] == "ANSWER" and end.detail["seconds"] == 42
    assert end.detail["cost"] == "0.42" and end.detail["currency"] == "USD"
    assert "cost 0.42 USD" in end.text
    # The story reads the same by the CDR's call key; no PIN or card digits anywhere.
    by_key = await asyncio.to_thread(read_trace, line.db, "1700000123.7-1")
    assert [e.as_json() for e in by_key] == [e.as_json() for e in events]
    stored = json.dumps([e.detail for e in events])
    assert card.pin not in stored and card.number not in stored
    assert [e.at for e in events] == sorted(e.at for e in events)
