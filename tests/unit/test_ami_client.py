"""The AMI client against a small scripted AMI server: login, errors, reconnect."""

from __future__ import annotations

import asyncio

import pytest

from ivr.ami import AmiActionError, AmiClient, AmiConnectionError, AmiNotConnected


class FakeAmi:
    """Speaks enough AMI: banner, Login, Ping, PlayDTMF (Asterisk's reply text), Command."""

    def __init__(self, secret: str = "s3cret") -> None:
        self.secret = secret
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.actions: list[dict[str, str]] = []

    async def start(self, port: int = 0) -> None:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()
        self.writers.clear()

    def drop_connections(self) -> None:
        for writer in self.writers:
            writer.close()
        self.writers.clear()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        writer.write(b"Asterisk Call Manager/11.0.0\r\n")
        try:
            while True:
                block = await reader.readuntil(b"\r\n\r\n")
                headers: dict[str, str] = {}
                for line in block.decode().strip().split("\r\n"):
                    key, _, value = line.partition(": ")
                    headers[key.lower()] = value
                self.actions.append(headers)
                writer.write(self._reply(headers).encode())
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    def _reply(self, h: dict[str, str]) -> str:
        action, aid = h.get("action", "").lower(), h.get("actionid", "")
        if action == "login":
            if h.get("secret") == self.secret:
                return (f"Response: Success\r\nActionID: {aid}\r\nMessage: Authentication accepted"
                        "\r\n\r\nEvent: FullyBooted\r\nStatus: Fully Booted\r\n\r\n")
            return f"Response: Error\r\nActionID: {aid}\r\nMessage: Authentication failed\r\n\r\n"
        if action == "playdtmf":
            return (f"Response: Success\r\nActionID: {aid}\r\n"
                    "Message: DTMF successfully queued\r\n\r\n")
        if action == "ping":
            return f"Response: Success\r\nActionID: {aid}\r\nPing: Pong\r\n\r\n"
        return f"Response: Error\r\nActionID: {aid}\r\nMessage: Invalid/unknown command\r\n\r\n"


@pytest.fixture
async def fake_ami():
    server = FakeAmi()
    await server.start()
    yield server
    await server.stop()


async def test_login_and_actions(fake_ami: FakeAmi):
    client = AmiClient("127.0.0.1", fake_ami.port, "ivr", "s3cret")
    await client.connect(timeout=5)
    assert client.connected
    reply = await client.action("Ping")
    assert reply.get("Ping") == "Pong"
    with pytest.raises(AmiActionError, match="Invalid/unknown command"):
        await client.action("NoSuchAction")
    await client.close()


async def test_playdtmf_reply_keeps_the_connection(fake_ami: FakeAmi):
    """panoramisk 1.4 raised KeyError('async') on this reply and dropped the connection."""
    client = AmiClient("127.0.0.1", fake_ami.port, "ivr", "s3cret")
    await client.connect(timeout=5)
    reply = await client.action("PlayDTMF", Channel="Local/x;2", Digit="5")
    assert reply.get("Message") == "DTMF successfully queued"
    assert fake_ami.actions[-1].get("async") == "false"
    assert (await client.action("Ping")).get("Ping") == "Pong"
    assert client.logins == 1  # never reconnected
    await client.close()


async def test_wrong_secret_is_a_clear_error(fake_ami: FakeAmi):
    client = AmiClient("127.0.0.1", fake_ami.port, "ivr", "wrong")
    with pytest.raises(AmiConnectionError, match="refused: Authentication failed"):
        await client.connect(timeout=5)
    assert not client.connected


async def test_nothing_listening_is_a_clear_error_within_the_deadline():
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    client = AmiClient("127.0.0.1", port, "ivr", "x")
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(AmiConnectionError, match=f"cannot reach AMI at 127.0.0.1:{port}"):
        await client.connect(timeout=1.5)
    assert loop.time() - start < 3


async def test_reconnects_after_the_connection_drops(fake_ami: FakeAmi):
    client = AmiClient("127.0.0.1", fake_ami.port, "ivr", "s3cret", reconnect_delay=1)
    await client.connect(timeout=5)
    fake_ami.drop_connections()
    await asyncio.sleep(0.1)
    assert not client.connected
    with pytest.raises(AmiNotConnected):
        await client.action("Ping")
    await client.wait_connected(timeout=5)
    assert client.logins == 2
    assert (await client.action("Ping")).get("Ping") == "Pong"
    await client.close()


async def test_no_reconnect_after_close(fake_ami: FakeAmi):
    client = AmiClient("127.0.0.1", fake_ami.port, "ivr", "s3cret", reconnect_delay=1)
    await client.connect(timeout=5)
    await client.close()
    logins = sum(1 for a in fake_ami.actions if a.get("action") == "Login")
    await asyncio.sleep(1.5)
    assert sum(1 for a in fake_ami.actions if a.get("action") == "Login") == logins
    assert not client.connected


async def test_events_reach_subscribers(fake_ami: FakeAmi):
    client = AmiClient("127.0.0.1", fake_ami.port, "ivr", "s3cret")
    seen: list[str] = []
    stop = client.on_event("Agi*", lambda e: seen.append(e.get("Command")))
    await client.connect(timeout=5)
    for writer in fake_ami.writers:
        writer.write(b"Event: AGIExecStart\r\nCommand: ANSWER\r\n\r\n"
                     b"Event: Newchannel\r\nChannel: x\r\n\r\n")
    await asyncio.sleep(0.2)
    assert seen == ["ANSWER"]
    stop()
    for writer in fake_ami.writers:
        writer.write(b"Event: AGIExecStart\r\nCommand: HANGUP\r\n\r\n")
    await asyncio.sleep(0.2)
    assert seen == ["ANSWER"]
    await client.close()
