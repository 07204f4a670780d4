"""Digit entries (GET DATA) against a scripted fake Asterisk: the "#" a caller types by
habit after an entry that ended at its length ends that entry, not the next one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ivr.agi import AgiServer, AgiSession
from ivr.agi import session as session_module
from ivr.testing.fake_asterisk import FakeAsterisk, default_rule


async def entries(replies: list[str], asks: list[int]) -> tuple[list[str | None], list[str]]:
    """Ask one entry per max_digits in ``asks``; GET DATA gets ``replies`` in order."""
    got: list[str | None] = []
    queue = iter(replies)

    async def route(call: AgiSession) -> None:
        for i, max_digits in enumerate(asks):
            got.append(await call.get_data(f"prompt-{i}", 10_000, max_digits))

    def rule(command: str) -> str:
        return next(queue) if command.startswith("GET DATA") else default_rule(command)

    server = AgiServer({"entry": route}, "127.0.0.1", 0)
    await server.start()
    try:
        commands = await FakeAsterisk("127.0.0.1", server.port, rule).run_call("entry")
        await server.wait_idle()
    finally:
        await server.shutdown(grace=1)
    return got, [c for c in commands if c.startswith("GET DATA")]


async def test_a_hash_right_after_a_full_entry_is_its_end_and_the_next_is_asked_again():
    got, asked = await entries(["200 result=1239", "200 result=", "200 result=918"], [4, 4])
    assert got == ["1239", "918"]
    assert asked == ['GET DATA "prompt-0" "10000" "4"', 'GET DATA "prompt-1" "10000" "4"',
                     'GET DATA "prompt-1" "10000" "4"']


async def test_a_hash_after_an_entry_ended_by_hash_is_an_empty_answer():
    got, asked = await entries(["200 result=123", "200 result="], [4, 4])
    assert got == ["123", ""]
    assert len(asked) == 2


async def test_only_one_hash_is_taken_for_the_entry_before():
    got, asked = await entries(["200 result=1", "200 result=", "200 result="], [1, 4])
    assert got == ["1", ""]
    assert len(asked) == 3


async def test_a_timeout_after_a_full_entry_is_not_asked_again():
    got, asked = await entries(["200 result=1239", "200 result= (timeout)"], [4, 4])
    assert got == ["1239", None]
    assert len(asked) == 2


@pytest.fixture
def slow_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each reading of the clock is LATE_END_KEY later than the one before."""
    ticks = iter(range(0, 1000))
    monkeypatch.setattr(session_module, "monotonic",
                        lambda: next(ticks) * session_module.LATE_END_KEY)
    yield


async def test_a_hash_long_after_a_full_entry_is_an_empty_answer(slow_clock: None):
    got, asked = await entries(["200 result=1239", "200 result="], [4, 4])
    assert got == ["1239", ""]
    assert len(asked) == 2
