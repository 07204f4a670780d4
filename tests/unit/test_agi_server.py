"""The FastAGI server and call session against a scripted fake Asterisk (fast, no Asterisk)."""

import asyncio
import logging

import pytest

from ivr.agi import (
    AgiCommandFailed,
    AgiHangup,
    AgiProtocolError,
    AgiServer,
    AgiSession,
    AgiTimeout,
    protocol,
)
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


async def test_shutdown_hands_a_caller_in_a_menu_back_at_once(make_server, caplog):
    """A route waiting on its caller in a menu (session.interruptible) is ended by shutdown
    at once, well before the grace: its cleanup runs, the connection closes (Asterisk goes
    on with the dialplan), nothing is logged as an error, and one line says what happened.
    A route that is not in a menu is cancelled after its grace, also without a traceback."""
    cleanup: list[str] = []

    async def menu(call: AgiSession) -> None:
        call.interruptible = True
        try:
            await call.get_data("topup-menu", 60_000, 1)  # never answered
        finally:
            call.interruptible = False
            cleanup.append("limit restored")

    async def busy(call: AgiSession) -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            cleanup.append("busy ended")

    def rule(command: str) -> list[str] | str:
        return [] if command.startswith("GET DATA") else default_rule(command)

    server = await make_server({"menu": menu, "busy": busy})
    fake = FakeAsterisk("127.0.0.1", server.port, rule)
    menu_call = asyncio.create_task(fake.run_call("menu", uniqueid="m1"))
    while not any(s.waiting for s in server.sessions):
        await asyncio.sleep(0.01)
    caplog.set_level(logging.INFO)
    await asyncio.wait_for(server.shutdown(grace=60), 10)  # far less than the grace
    assert cleanup == ["limit restored"]
    assert await asyncio.wait_for(menu_call, 5) == ['GET DATA "topup-menu" "60000" "1"']
    assert server.stats.handed_back == 1 and server.stats.cancelled == 0
    assert server.active_calls == 0
    assert "shutdown: 1 call(s) handed back to the dialplan, 0 cancelled" in caplog.text

    server = await make_server({"busy": busy})
    busy_call = asyncio.create_task(
        FakeAsterisk("127.0.0.1", server.port).run_call("busy", uniqueid="b1"))
    while server.active_calls < 1:
        await asyncio.sleep(0.01)
    await server.shutdown(grace=0.2)
    await asyncio.wait_for(busy_call, 5)
    await asyncio.sleep(0)  # the connection task's done callbacks
    assert cleanup == ["limit restored", "busy ended"]
    assert server.stats.cancelled == 1
    assert "shutdown: 0 call(s) handed back to the dialplan, 1 cancelled" in caplog.text
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    assert "Traceback" not in caplog.text and "CancelledError" not in caplog.text


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


# ------------------------------------------------------------------ hostile peers


async def open_held(port: int, data: bytes = b"agi_network: yes\n"):
    """A connection that sent part of a header block and stays open."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    return reader, writer


async def closed_by_server(reader: asyncio.StreamReader, timeout: float = 5) -> bool:
    """Whether the server closes the connection (EOF or reset) within ``timeout``."""
    try:
        await asyncio.wait_for(reader.read(), timeout)
    except ConnectionError:
        pass
    return True


async def wait_until(predicate, timeout: float = 5) -> None:
    async def poll() -> None:
        while not predicate():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


async def test_connections_beyond_the_limit_are_closed_at_once(make_server, caplog):
    server = await make_server({"hello": hello}, max_connections=2, header_timeout=30)
    caplog.set_level(logging.WARNING, "ivr.agi.server")
    held = [await open_held(server.port) for _ in range(2)]
    await wait_until(lambda: server.connections == 2)
    extra = [await open_held(server.port) for _ in range(5)]
    for reader, _ in extra:  # well before the 30 s header timeout
        assert await closed_by_server(reader, timeout=5)
    assert server.stats.refused_busy == 5 and server.stats.refused == 5
    assert server.stats.accepted == 2 and server.connections == 2
    # One log line for the burst, not one per connection.
    assert len([r for r in caplog.records if "refused" in r.getMessage()]) == 1
    for _, writer in held + extra:
        writer.close()
    await wait_until(lambda: server.connections == 0)
    commands = await FakeAsterisk("127.0.0.1", server.port).run_call("hello")
    assert commands[-1] == "HANGUP"  # room again once they closed


async def test_refusal_burst_is_summarised(make_server, caplog):
    server = await make_server({"hello": hello}, max_connections=1)
    server.refusal_log_window = 0.2
    caplog.set_level(logging.WARNING, "ivr.agi.server")
    _, holder = await open_held(server.port)
    await wait_until(lambda: server.connections == 1)
    for _ in range(4):
        reader, writer = await open_held(server.port)
        assert await closed_by_server(reader)
        writer.close()

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]

    await wait_until(lambda: len(lines()) == 2)
    assert "3 more AGI connection(s)" in lines()[1] and "over the limit" in lines()[1]
    holder.close()


async def test_peer_outside_allowed_hosts_is_closed_without_reading(make_server):
    server = await make_server({"hello": hello}, allowed_hosts="10.9.9.0/24, 192.0.2.1")
    fake = FakeAsterisk("127.0.0.1", server.port)
    assert await fake.run_call("hello") == []  # closed before any command
    assert server.stats.refused_peer == 1 and server.stats.refused == 1
    assert server.stats.accepted == 0 and server.connections == 0
    assert "not an allowed host" in server.stats.refusals[0]
    allowed = await make_server({"hello": hello}, allowed_hosts="127.0.0.1")
    assert (await FakeAsterisk("127.0.0.1", allowed.port).run_call("hello"))[-1] == "HANGUP"


def test_allowed_hosts_parsing():
    from ivr.agi.server import _peer_allowed, parse_networks
    from ivr.config import ConfigError, load_settings

    loopback = parse_networks(load_settings(environ={}).agi_allowed_hosts)
    assert _peer_allowed(("127.0.0.1", 4573), loopback)
    assert _peer_allowed(("::1", 4573, 0, 0), loopback)
    assert _peer_allowed(("::ffff:127.0.0.2", 4573, 0, 0), loopback)  # dual-stack socket
    assert not _peer_allowed(("192.0.2.1", 4573), loopback)
    assert not _peer_allowed(None, loopback)
    with pytest.raises(ValueError, match="'10.0.0.300'"):
        parse_networks("10.0.0.1, 10.0.0.300")
    with pytest.raises(ConfigError, match="agi_allowed_hosts"):
        load_settings(environ={"IVR_AGI_ALLOWED_HOSTS": "asterisk.local"})
    with pytest.raises(ConfigError, match="agi_max_connections"):
        load_settings(environ={"IVR_AGI_MAX_CONNECTIONS": "0"})


async def test_oversized_header_is_refused_before_the_timeout(make_server):
    server = await make_server({"hello": hello}, header_timeout=30)
    line = b"agi_x%03d: " + b"a" * 7000 + b"\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        for i in range(195):
            writer.write(line % i)
            await writer.drain()
    except ConnectionError:
        pass
    assert await closed_by_server(reader)
    writer.close()
    assert server.stats.refused == 1
    assert "header block too large" in server.stats.refusals[0]


async def answer_with(port: int, first: bytes, more: bytes, limit: int) -> int:
    """Call the ``r`` route; answer its first command with ``first``, then ``more`` again
    and again until the server closes or ``limit`` bytes went. Returns the bytes sent."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(header_block("r"))
    await reader.readline()
    writer.write(first)
    closed = asyncio.create_task(closed_by_server(reader, timeout=30))
    sent = 0
    try:
        while sent < limit and not closed.done():
            writer.write(more)
            await writer.drain()
            sent += len(more)
            await asyncio.sleep(0)  # let the EOF be seen
    except ConnectionError:
        pass
    await closed
    writer.close()
    return sent


@pytest.mark.parametrize(
    "more",
    [
        pytest.param(b" Usage: X <a> <b>\n" * 512, id="endless 520 usage"),
        pytest.param(b"x" * 8192, id="line without newline"),
    ],
)
async def test_endless_520_reply_ends_the_session(make_server, caplog, more):
    ended: list[BaseException] = []

    async def route(call: AgiSession) -> None:
        try:
            await call.command("STREAM FILE", "only-one-arg")
        except Exception as exc:
            ended.append(exc)
            raise
        await call.hangup()

    server = await make_server({"r": route})
    caplog.set_level(logging.WARNING, "ivr.agi")
    first = b"520-Invalid command syntax.  Proper usage follows:\n"
    sent = await answer_with(server.port, first, more, limit=4 << 20)
    await server.wait_idle()
    assert sent < 1 << 20  # the server hung up long before 4 MB
    assert len(ended) == 1 and isinstance(ended[0], AgiProtocolError)
    assert server.stats.failed == 1
    assert not any(r.exc_info for r in caplog.records)  # one line, no traceback


async def test_silent_peer_ends_the_session_after_the_command_allowance(make_server,
                                                                        monkeypatch):
    """Asterisk answers SET VARIABLE in milliseconds: a peer that says nothing is cut after
    QUICK_REPLY, not after command_timeout (3600 s)."""
    monkeypatch.setattr(protocol, "QUICK_REPLY", 0.2)
    outcome: list[BaseException] = []

    async def route(call: AgiSession) -> None:
        try:
            await call.set_variable("X", "1")
        except AgiHangup as exc:
            outcome.append(exc)
            with pytest.raises(AgiHangup, match="session ended"):  # even a dead_ok command
                await call.get_variable("DIALSTATUS", dead_ok=True)
            raise

    server = await make_server({"r": route})
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(header_block("r"))
    assert await reader.readline() == b'SET VARIABLE "X" "1"\n'
    assert await closed_by_server(reader, timeout=5)  # the server closed it
    writer.close()
    await server.wait_idle()
    assert len(outcome) == 1 and isinstance(outcome[0], AgiTimeout)
    assert server.stats.timed_out == 1 and server.stats.hung_up == 1


async def test_memory_is_released_after_a_flood(make_server, monkeypatch):
    from ivr.agi import server as server_module

    monkeypatch.setattr(server_module, "TRIM_PEAK", 4)
    monkeypatch.setattr(server_module, "TRIM_DELAY", 0)
    server = await make_server({"hello": hello})
    held = [await open_held(server.port) for _ in range(4)]
    await wait_until(lambda: server.connections == 4)
    assert server.stats.memory_trims == 0
    for _, writer in held:
        writer.close()
    await wait_until(lambda: server.stats.memory_trims == 1)
    assert server.connections == 0
