"""The FastAGI server and call session against a scripted fake Asterisk (fast, no Asterisk)."""

import asyncio
import logging

import pytest

from ivr.agi import AgiCommandFailed, AgiHangup, AgiServer, AgiSession
from ivr.flows.hello import hello
from ivr.testing.fake_asterisk import FakeAsterisk, default_rule, header_block


@pytest.fixture
async def make_server():
    servers: list[AgiServer] = []

    async def make(routes, **kwargs) -> AgiServer:
        server = AgiServer(routes, "127.0.0.1", 0, **kwargs)
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.shutdown(grace=1)



async def test_hello_route_with_fake_asterisk(make_server):
    def rule(command: str) -> str:
        if command.startswith("GET DATA"):
            return "200 result=42*7"
        return default_rule(command)

    server = await make_server({"hello": hello})
    commands = await FakeAsterisk("127.0.0.1", server.port, rule).run_call("hello")
    assert commands == [
        "ANSWER",
        'STREAM FILE "hello-world" ""',
        'GET DATA "vm-enter-num-to-call" "5000" "16"',
        'STREAM FILE "you-entered" ""',
        'SAY DIGITS "427" ""',  # '*' filtered out
        'STREAM FILE "goodbye" ""',
        "HANGUP",
    ]
    await server.wait_idle()
    assert server.stats.completed == 1


async def test_hello_without_digits_says_goodbye(make_server):
    server = await make_server({"hello": hello})
    commands = await FakeAsterisk("127.0.0.1", server.port).run_call("hello")
    assert 'STREAM FILE "you-entered" ""' not in commands
    assert commands[-2:] == ['STREAM FILE "goodbye" ""', "HANGUP"]


async def test_hangup_mid_prompt_ends_session_cleanly(make_server):
    """Asterisk answers -1 to the interrupted prompt, then sends HANGUP; later commands
    get 511. The route sees AgiHangup, the session ends, no task is left."""
    seen: list[BaseException] = []

    async def route(call: AgiSession) -> None:
        try:
            await hello(call)
        except AgiHangup as exc:
            seen.append(exc)
            raise

    def rule(command: str) -> list[str] | str:
        if command.startswith("STREAM FILE"):
            return ["200 result=-1 endpos=1200", "HANGUP"]
        return default_rule(command)

    server = await make_server({"hello": route})
    before = len(asyncio.all_tasks())
    commands = await FakeAsterisk("127.0.0.1", server.port, rule).run_call("hello")
    await server.wait_idle()
    # CHANNEL STATUS only when the HANGUP line arrived in a later read than the -1.
    assert commands[:2] == ["ANSWER", 'STREAM FILE "hello-world" ""']
    assert commands[2:] in ([], ["CHANNEL STATUS"])
    assert len(seen) == 1
    assert server.stats.hung_up == 1 and server.stats.failed == 0
    assert not server.sessions
    assert len(asyncio.all_tasks()) <= before


async def test_minus_one_on_live_channel_is_a_failure_not_a_hangup(make_server):
    """A missing sound file also gives result=-1; CHANNEL STATUS shows the line is up."""
    errors: list[BaseException] = []

    async def route(call: AgiSession) -> None:
        try:
            await call.stream_file("no-such-file")
        except AgiCommandFailed as exc:
            errors.append(exc)
        await call.hangup()

    def rule(command: str) -> str:
        if command.startswith("STREAM FILE"):
            return "200 result=-1 endpos=0"
        return default_rule(command)

    server = await make_server({"r": route})
    commands = await FakeAsterisk("127.0.0.1", server.port, rule).run_call("r")
    assert commands == ['STREAM FILE "no-such-file" ""', "CHANNEL STATUS", "HANGUP"]
    assert len(errors) == 1


async def test_511_after_hangup_raises(make_server):
    outcome: list[str] = []

    async def route(call: AgiSession) -> None:
        await call.answer()
        try:
            await call.stream_file("x")
        except AgiHangup:
            outcome.append("hangup")
            raise

    server = await make_server({"r": route})
    await FakeAsterisk("127.0.0.1", server.port).run_call("r", hangup_after=1)
    await server.wait_idle()
    assert outcome == ["hangup"]


async def test_multiline_520_reply_does_not_poison_next_reply(make_server):
    from ivr.agi import AgiUsageError

    results: list[object] = []

    async def route(call: AgiSession) -> None:
        try:
            await call.command("STREAM FILE", "only-one-arg")
        except AgiUsageError as exc:
            results.append(exc.usage)
        results.append(await call.get_variable("CHANNEL(language)"))

    def rule(command: str) -> list[str] | str:
        if command.startswith("STREAM FILE"):
            return [
                "520-Invalid command syntax.  Proper usage follows:",
                " Usage: STREAM FILE <filename> <escape digits>",
                "520 End of proper usage.",
            ]
        if command.startswith("GET VARIABLE"):
            return "200 result=1 (en)"
        return default_rule(command)

    server = await make_server({"r": route})
    await FakeAsterisk("127.0.0.1", server.port, rule).run_call("r")
    await server.wait_idle()
    assert results == [" Usage: STREAM FILE <filename> <escape digits>", "en"]


async def raw_connection(port: int, data: bytes, *, close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    if close:
        writer.write_eof()
    reply = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return reply


async def test_malformed_header_refused_without_harming_other_calls(make_server, caplog):
    server = await make_server({"hello": hello}, header_timeout=1)
    caplog.set_level(logging.WARNING, "ivr.agi.server")
    good = asyncio.create_task(FakeAsterisk("127.0.0.1", server.port).run_call("hello"))
    bad = await asyncio.gather(
        raw_connection(server.port, b"GET / HTTP/1.0\r\n\r\n"),
        raw_connection(server.port, b"agi_network: yes\nagi_network_scr"),  # closed mid-header
        raw_connection(server.port, b"agi_network: yes\n", close=False),  # never finishes
    )
    assert bad == [b"", b"", b""]  # each refused: the server just closes
    commands = await good
    assert commands[-1] == "HANGUP"
    await server.wait_idle()
    assert server.stats.refused == 3
    assert server.stats.completed == 1
    assert any("closed inside the header block" in r for r in server.stats.refusals)
    assert any("no complete header block" in r for r in server.stats.refusals)


async def test_unknown_route_tells_dialplan(make_server):
    server = await make_server({"hello": hello})
    commands = await FakeAsterisk("127.0.0.1", server.port).run_call("nope")
    assert commands == ['SET VARIABLE "IVR_ERROR" "NOROUTE"']
    assert server.stats.refused == 1


async def test_route_exception_is_contained(make_server):
    async def broken(call: AgiSession) -> None:
        await call.answer()
        raise RuntimeError("bug")

    server = await make_server({"broken": broken, "hello": hello})
    failed = await FakeAsterisk("127.0.0.1", server.port).run_call("broken")
    # The dialplan is told, so the caller hears "service unavailable", not silence.
    assert failed == ["ANSWER", 'SET VARIABLE "IVR_ERROR" "FAILED"']
    commands = await FakeAsterisk("127.0.0.1", server.port).run_call("hello")
    await server.wait_idle()
    assert server.stats.failed == 1 and server.stats.completed == 1
    assert commands[-1] == "HANGUP"


async def test_shutdown_lets_calls_finish_then_cancels(make_server):
    release = asyncio.Event()
    finished: list[str] = []

    async def slow(call: AgiSession) -> None:
        await call.answer()
        await release.wait()
        finished.append(call.env.uniqueid)
        await call.hangup()

    async def stuck(call: AgiSession) -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            finished.append("stuck-cleanup")

    server = await make_server({"slow": slow, "stuck": stuck})
    fake = FakeAsterisk("127.0.0.1", server.port)
    slow_call = asyncio.create_task(fake.run_call("slow", uniqueid="u1"))
    stuck_call = asyncio.create_task(fake.run_call("stuck", uniqueid="u2"))
    while server.active_calls < 2:
        await asyncio.sleep(0.01)
    shutdown = asyncio.create_task(server.shutdown(grace=0.5))
    await asyncio.sleep(0.05)
    # No new calls once shutting down.
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", server.port)
    release.set()
    await shutdown
    assert "u1" in finished and "stuck-cleanup" in finished
    assert server.stats.completed == 1 and server.stats.cancelled == 1
    assert server.active_calls == 0
    await asyncio.gather(slow_call, stuck_call)


async def test_secret_input_is_not_logged(make_server, caplog):
    async def pin(call: AgiSession) -> None:
        call.state["pin"] = await call.get_data("enter-pin", secret=True)
        with call.secret():
            await call.get_data("enter-card")
        await call.hangup()

    def rule(command: str) -> str:
        if command.startswith("GET DATA"):
            return "200 result=918273"
        return default_rule(command)

    caplog.set_level(logging.DEBUG, "ivr.agi")
    server = await make_server({"pin": pin})
    await FakeAsterisk("127.0.0.1", server.port, rule).run_call("pin")
    await server.wait_idle()
    assert "918273" not in caplog.text
    assert "GET DATA <redacted>" in caplog.text


def test_header_block_helper_is_well_formed():
    from ivr.agi.protocol import HeaderParser

    env = HeaderParser().feed(header_block("hello", uniqueid="9.9"))
    assert env is not None and env.route == "hello" and env.uniqueid == "9.9"
