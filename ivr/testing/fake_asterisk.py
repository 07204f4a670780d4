"""A scripted stand-in for Asterisk's side of a FastAGI connection, for fast unit tests.

It connects to an :class:`~ivr.agi.AgiServer`, sends a header block, then answers each
command with the reply a rule gives. Real call flows are proven against a real Asterisk
(tests marked ``asterisk``); this only exercises the protocol and server logic.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

Rule = Callable[[str], str | list[str]]


def default_rule(command: str) -> str:
    """Replies a live channel would give to common commands."""
    verb = command.split(' "', 1)[0]
    if verb == "GET DATA":
        return "200 result= (timeout)"
    if verb in ("STREAM FILE", "CONTROL STREAM FILE"):
        return "200 result=0 endpos=8000"
    if verb == "CHANNEL STATUS":
        return "200 result=6"
    if verb == "HANGUP":
        return "200 result=1"
    return "200 result=0"


def header_block(script: str = "hello", **values: str) -> bytes:
    env = {
        "network": "yes",
        "network_script": script,
        "request": f"agi://127.0.0.1/{script}",
        "channel": "Local/s@test-00000001;1",
        "language": "en",
        "uniqueid": "1700000000.1",
        "callerid": "15550001111",
        "context": "ivr-test",
        "extension": "s",
        "priority": "1",
    }
    env.update(values)
    return "".join(f"agi_{k}: {v}\n" for k, v in env.items()).encode() + b"\n"


@dataclass
class FakeAsterisk:
    host: str
    port: int
    rule: Rule = default_rule
    received: list[str] = field(default_factory=list)

    async def run_call(self, script: str = "hello", *, hangup_after: int | None = None,
                       **env: str) -> list[str]:
        """Run one call; with ``hangup_after=N`` the caller hangs up after N commands
        (the HANGUP line is sent and later commands get 511, as Asterisk does)."""
        reader, writer = await asyncio.open_connection(self.host, self.port)
        writer.write(header_block(script, **env))
        await writer.drain()
        commands: list[str] = []
        dead = False
        try:
            while True:
                line = await reader.readline()
                if not line:
                    break
                command = line.decode().rstrip("\n")
                commands.append(command)
                self.received.append(command)
                if dead:
                    replies: str | list[str] = "511 Command Not Permitted on a dead channel"
                else:
                    replies = self.rule(command)
                for reply in [replies] if isinstance(replies, str) else replies:
                    writer.write(reply.encode() + b"\n")
                if hangup_after is not None and len(commands) >= hangup_after and not dead:
                    dead = True
                    writer.write(b"HANGUP\n")
                await writer.drain()
        finally:
            writer.close()
        return commands
