"""The FastAGI server: accepts connections, reads the header block, runs one route per call.

Like wazo-agid: a handler per script name (``agi://host:4573/<route>``), one task per call.
Shutdown stops accepting, gives running calls ``grace`` seconds, then cancels them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from .protocol import AgiEnvironment, AgiError, AgiHangup, AgiProtocolError, HeaderParser
from .session import READ_CHUNK, AgiSession

log = logging.getLogger("ivr.agi.server")

Handler = Callable[[AgiSession], Awaitable[None]]


@dataclass
class ServerStats:
    """Counters a test or an operator can read."""

    accepted: int = 0
    completed: int = 0  # the route returned
    hung_up: int = 0  # the caller hung up during the route
    failed: int = 0  # the route raised something else
    refused: int = 0  # bad or missing header block, unknown route
    cancelled: int = 0  # ended by shutdown
    refusals: list[str] = field(default_factory=list)


class AgiServer:
    def __init__(
        self,
        routes: Mapping[str, Handler],
        host: str = "127.0.0.1",
        port: int = 4573,
        *,
        header_timeout: float = 5.0,
        command_timeout: float = 3600.0,
    ) -> None:
        self.routes = dict(routes)
        self.host = host
        self.port = port
        self.header_timeout = header_timeout
        self.command_timeout = command_timeout
        self.stats = ServerStats()
        self.sessions: set[AgiSession] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    @property
    def active_calls(self) -> int:
        return len(self._tasks)

    async def wait_idle(self, timeout: float = 10) -> None:
        """Wait until no call is running (tests, and shutdown reporting)."""
        async def idle() -> None:
            while self._tasks:
                await asyncio.wait(set(self._tasks), timeout=0.5)

        await asyncio.wait_for(idle(), timeout)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._on_connect, self.host, self.port)
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]  # port 0 picks a free one (tests)
        log.info("FastAGI listening on %s:%s, routes: %s", self.host, self.port,
                 ", ".join(sorted(self.routes)))

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    async def _on_connect(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self.stats.accepted += 1
        try:
            await self._handle(reader, writer)
        finally:
            with contextlib.suppress(Exception):
                writer.close()
                await asyncio.wait_for(writer.wait_closed(), 2)

    async def _read_header(self, reader: asyncio.StreamReader) -> tuple[AgiEnvironment, bytes]:
        parser = HeaderParser()
        while True:
            chunk = await reader.read(READ_CHUNK)
            if not chunk:
                parser.eof()
            env = parser.feed(chunk)
            if env is not None:
                return env, parser.leftover

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        try:
            env, leftover = await asyncio.wait_for(self._read_header(reader), self.header_timeout)
        except (AgiProtocolError, TimeoutError, ConnectionError) as exc:
            reason = str(exc) or type(exc).__name__
            if isinstance(exc, TimeoutError):
                reason = f"no complete header block within {self.header_timeout}s"
            self._refuse(f"{peer}: {reason}")
            return
        handler = self.routes.get(env.route)
        session = AgiSession(
            reader, writer, env, command_timeout=self.command_timeout, leftover=leftover
        )
        if handler is None:
            self._refuse(f"{peer}: unknown route {env.route!r} ({env.network_script!r})")
            # Tell the dialplan why, so it can play "service unavailable".
            with contextlib.suppress(AgiError, TimeoutError):
                await asyncio.wait_for(session.set_variable("IVR_ERROR", "NOROUTE"), 5)
            return
        self.sessions.add(session)
        log.info("[%s] %s call from %r on %s", env.uniqueid, env.route, env.callerid, env.channel)
        try:
            await handler(session)
        except AgiHangup as exc:
            self.stats.hung_up += 1
            log.info("[%s] caller hung up: %s", env.uniqueid, exc)
        except asyncio.CancelledError:
            self.stats.cancelled += 1
            log.warning("[%s] call cancelled by shutdown", env.uniqueid)
            raise
        except Exception:
            self.stats.failed += 1
            log.exception("[%s] route %s failed", env.uniqueid, env.route)
            # Tell the dialplan (a dead database, a bug), so the caller hears "service
            # unavailable" rather than silence.
            if not session.hung_up:
                with contextlib.suppress(AgiError, TimeoutError, OSError):
                    await asyncio.wait_for(session.set_variable("IVR_ERROR", "FAILED"), 5)
        else:
            self.stats.completed += 1
        finally:
            self.sessions.discard(session)

    def _refuse(self, reason: str) -> None:
        self.stats.refused += 1
        self.stats.refusals.append(reason)
        del self.stats.refusals[:-100]
        log.warning("refused AGI connection: %s", reason)

    async def shutdown(self, grace: float = 30.0) -> None:
        """Stop accepting; let running calls finish for ``grace`` seconds, then end them."""
        if self._server is not None:
            self._server.close()
            # Not wait_closed(): since 3.12 it waits for every connection to end.
        running = set(self._tasks)
        if running:
            log.info("waiting up to %ss for %d running call(s)", grace, len(running))
            _, pending = await asyncio.wait(running, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        log.info("FastAGI server stopped")
