"""Real calls into a real Asterisk through the FastAGI server (the `hello` proof route)."""

from __future__ import annotations

import asyncio

import pytest

from ivr.agi import AgiServer
from ivr.testing.phone import Phone

pytestmark = pytest.mark.asterisk

EXPECTED = ["hello-world", "vm-enter-num-to-call", "you-entered", "digits:{}", "goodbye"]


async def test_digits_come_back_and_prompts_play_in_order(agi_server: AgiServer, phone: Phone):
    call = await phone.call("ivr-hello", callerid="15551230001")
    await call.answer_input("4071#")
    await call.wait_ended()
    assert call.prompts == [p.format("4071") for p in EXPECTED]
    assert call.commands[0].verb == "ANSWER" and call.commands[-1].verb == "HANGUP"
    await agi_server.wait_idle()
    assert agi_server.stats.completed == 1
    assert agi_server.stats.failed == 0


async def test_hangup_in_the_middle_of_a_prompt(agi_server: AgiServer, phone: Phone):
    tasks_before = len(asyncio.all_tasks())
    call = await phone.call("ivr-hello")
    await call.wait_for_command("STREAM FILE")  # hello-world is playing
    await asyncio.sleep(0.3)
    await call.hangup()
    await call.wait_ended()
    await agi_server.wait_idle()
    assert agi_server.stats.hung_up == 1
    assert agi_server.stats.failed == 0 and agi_server.stats.completed == 0
    assert not agi_server.sessions
    # The prompt was cut: nothing after the greeting ran.
    assert call.prompts == ["hello-world"]
    await asyncio.sleep(0.1)
    assert len(asyncio.all_tasks()) <= tasks_before


async def _raw(port: int, data: bytes, close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    if close:
        writer.write_eof()
    try:
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_bad_agi_connections_are_refused_while_a_real_call_goes_on(
    agi_server: AgiServer, phone: Phone
):
    call = await phone.call("ivr-hello")
    await call.wait_for_input()
    replies = await asyncio.gather(
        _raw(agi_server.port, b"this is not agi\n\n"),
        _raw(agi_server.port, b"agi_network: yes\nagi_network_script: hel"),  # EOF mid-header
        _raw(agi_server.port, b"agi_network: yes\n", close=False),  # header never ends
    )
    assert replies == [b"", b"", b""]
    await call.send_dtmf("55#")
    await call.wait_ended()
    assert call.prompts == [p.format("55") for p in EXPECTED]
    await agi_server.wait_idle()
    assert agi_server.stats.refused == 3
    assert agi_server.stats.completed == 1


async def test_fifty_simultaneous_calls(agi_server: AgiServer, phone: Phone):
    async def one(i: int) -> list[str]:
        call = await phone.call("ivr-hello", callerid=f"1555000{i:04d}", timeout=30)
        await call.answer_input(f"{i}#", timeout=30)
        await call.wait_ended(timeout=60)
        return call.prompts

    results = await asyncio.gather(*(one(i) for i in range(50)))
    for i, prompts in enumerate(results):
        assert prompts == [p.format(i) for p in EXPECTED], i
    await agi_server.wait_idle()
    assert agi_server.stats.completed == 50
    assert agi_server.stats.failed == 0 and agi_server.stats.hung_up == 0


async def test_line_without_a_route_plays_service_unavailable(agi_server: AgiServer, phone: Phone):
    # The access route is not registered in this server; the dialplan must tell the caller.
    agi_server.routes.pop("access", None)
    call = await phone.call("ivr-access")
    await call.wait_ended()
    assert ("Playback", "ss-noservice") in call.applications
    assert agi_server.stats.refused == 1


async def test_line_with_the_server_down_plays_service_unavailable(asterisk, phone: Phone):
    # No FastAGI server at all (no agi_server fixture): AGISTATUS is FAILURE.
    call = await phone.call("ivr-access")
    await call.wait_ended()
    assert ("Playback", "ss-noservice") in call.applications
