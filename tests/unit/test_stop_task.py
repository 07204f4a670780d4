"""ivr.service.stop_task: a background loop that swallows one cancellation (as a lost
cancellation in Python 3.11 looks to it) still ends, and a stuck one is given up on."""

from __future__ import annotations

import asyncio
import logging

import pytest

from ivr.service import stop_task


async def test_a_loop_that_swallows_a_cancellation_is_cancelled_again():
    swallowed = []

    async def loop() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed.append(True)  # goes on, as after a lost cancellation

    task = asyncio.ensure_future(loop())
    await asyncio.sleep(0)
    await stop_task(task, timeout=5)
    assert task.cancelled() and swallowed == [True]


async def test_a_task_that_never_ends_is_given_up_with_a_warning(
        caplog: pytest.LogCaptureFixture):
    stubborn_now = True

    async def stubborn() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if not stubborn_now:
                    raise

    task = asyncio.ensure_future(stubborn())
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="ivr"):
        await stop_task(task, timeout=0.3)
    assert not task.done()
    assert "did not stop" in caplog.text
    stubborn_now = False  # the test's own clean-up
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
