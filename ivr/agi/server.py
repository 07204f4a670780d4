"""The FastAGI server: accepts connections, reads the header block, runs one route per call.

Like wazo-agid: a handler per script name (``agi://host:4573/<route>``), one task per call.
Shutdown stops accepting and hands the callers waiting in a menu (a route that set
``session.interruptible``) back to the dialplan at once: their route is cancelled, runs its
``finally`` and the connection closes, so Asterisk goes on with the dialplan (the bridge, for
the top-up menu). Other calls get ``grace`` seconds to finish, then are cancelled.

Only Asterisk should connect: a peer outside ``allowed_hosts`` is closed before anything is
read from it, and so is any connection beyond ``max_connections``. Refusals are logged
once per burst (a line for the first, then a count every ``refusal_log_window`` seconds),
so a flood cannot flood the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import gc
import ipaddress
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import cast

from .protocol import (
    AgiEnvironment,
    AgiError,
    AgiHangup,
    AgiProtocolError,
    AgiTimeout,
    HeaderParser,
)
from .session import READ_CHUNK, AgiSession

log = logging.getLogger("ivr.agi.server")

Handler = Callable[[AgiSession], Awaitable[None]]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_ALLOWED_HOSTS = "127.0.0.0/8,::1"
DEFAULT_MAX_CONNECTIONS = 200
# A connection's stream buffer stops reading from the socket past twice this (asyncio's
# default is 64 KiB); AGI lines are at most MAX_LINE and are read READ_CHUNK at a time.
READER_LIMIT = 16 * 1024
RECV_SIZE = 16 * 1024
REFUSAL_LOG_WINDOW = 10.0
# After a flood, the buffers freed are scattered through the C heap between live objects,
# and glibc keeps them (RSS stayed at the flood's peak). When the open connections fall to
# a quarter of a peak of at least TRIM_PEAK, malloc_trim() hands the free pages back.
TRIM_PEAK = 50
TRIM_DELAY = 1.0
# During shutdown, how often the sessions are checked for one waiting in a menu.
HAND_BACK_POLL = 0.1


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def parse_networks(spec: str | Iterable[str]) -> tuple[Network, ...]:
    """``"127.0.0.0/8, ::1, 10.0.0.5"`` -> networks; ValueError names a bad entry."""
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    networks = []
    for part in (p.strip() for p in parts):
        if part:
            try:
                networks.append(ipaddress.ip_network(part, strict=False))
            except ValueError:
                raise ValueError(f"not an IP address or network: {part!r}") from None
    if not networks:
        raise ValueError("no address allowed (give at least one, e.g. 127.0.0.1)")
    return tuple(networks)


def _peer_allowed(peer: object, networks: tuple[Network, ...]) -> bool:
    if not isinstance(peer, tuple) or not peer:
        return False
    try:
        address = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # an IPv4 peer of a dual-stack socket
    return any(address in network for network in networks)


@dataclass
class ServerStats:
    """Counters a test or an operator can read."""

    accepted: int = 0
    completed: int = 0  # the route returned
    hung_up: int = 0  # the caller hung up during the route
    failed: int = 0  # the route raised something else
    refused: int = 0  # every refusal: the three below, bad or missing header, unknown route
    refused_busy: int = 0  # closed at once: max_connections already open
    refused_peer: int = 0  # closed at once: the peer is not in allowed_hosts
    timed_out: int = 0  # Asterisk did not answer a command in time (counted in hung_up)
    cancelled: int = 0  # ended by shutdown after its grace
    handed_back: int = 0  # ended by shutdown while waiting in a menu (session.interruptible)
    refusals: list[str] = field(default_factory=list)  # the last 100 reasons
    peak_connections: int = 0
    memory_trims: int = 0  # malloc_trim() after a flood


class _Gate(asyncio.StreamReaderProtocol):
    """asyncio.start_server's protocol, with the door checked before anything is read."""

    def __init__(self, server: AgiServer) -> None:
        super().__init__(asyncio.StreamReader(limit=READER_LIMIT), server._on_connect)
        self._server = server
        self._admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._server._admit(transport):
            # A stream server's transport is an asyncio.Transport, which has abort().
            cast(asyncio.Transport, transport).abort()
            return
        self._admitted = True
        if isinstance(getattr(transport, "max_size", None), int):
            # The selector transport's recv() size (256 KiB; an undeclared attribute, hence
            # the ignore): per connection, what one read can add to the buffer before
            # reading pauses. AGI needs little.
            transport.max_size = RECV_SIZE  # type: ignore[attr-defined]
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._admitted:
            self._server._closed()
            super().connection_lost(exc)


class _RefusalLog:
    """A warning for the first refusal of a burst, then a count per window while it lasts."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._counts: Counter[str] = Counter()
        self._timer: asyncio.TimerHandle | None = None

    def refused(self, kind: str, reason: str) -> None:
        if self._timer is None:
            log.warning("refused AGI connection: %s", reason)
            self._timer = asyncio.get_running_loop().call_later(self.window, self.flush)
        else:
            self._counts[kind] += 1

    def flush(self, *, final: bool = False) -> None:
        self._timer = None
        if self._counts:
            kinds = ", ".join(f"{n} {kind}" for kind, n in self._counts.most_common())
            log.warning("refused %d more AGI connection(s) in the last %gs: %s",
                        self._counts.total(), self.window, kinds)
            self._counts.clear()
            if not final:  # the burst goes on until a window passes without refusals
                self._timer = asyncio.get_running_loop().call_later(self.window, self.flush)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.flush(final=True)


class AgiServer:
    def __init__(
        self,
        routes: Mapping[str, Handler],
        host: str = "127.0.0.1",
        port: int = 4573,
        *,
        header_timeout: float = 5.0,
        command_timeout: float = 3600.0,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        allowed_hosts: str | Iterable[str] = DEFAULT_ALLOWED_HOSTS,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.routes = dict(routes)
        self.host = host
        self.port = port
        self.header_timeout = header_timeout
        self.command_timeout = command_timeout
        self.max_connections = max_connections
        self.allowed_networks = parse_networks(allowed_hosts)
        self.stats = ServerStats()
        self.sessions: set[AgiSession] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._session_tasks: dict[AgiSession, asyncio.Task[None]] = {}
        self._handing_back: set[AgiSession] = set()
        self._connections = 0  # admitted and not yet closed
        self._peak = 0  # most connections open at once since memory was last trimmed
        self._trim: asyncio.TimerHandle | None = None
        self._server: asyncio.Server | None = None
        self._refusal_log = _RefusalLog(REFUSAL_LOG_WINDOW)

    @property
    def connections(self) -> int:
        """Connections open now (calls, and peers still sending their header)."""
        return self._connections

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
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Gate(self), self.host, self.port)
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]  # port 0 picks a free one (tests)
        log.info("FastAGI listening on %s:%s (up to %d connections, from %s), routes: %s",
                 self.host, self.port, self.max_connections,
                 ", ".join(map(str, self.allowed_networks)), ", ".join(sorted(self.routes)))

    def _admit(self, transport: asyncio.BaseTransport) -> bool:
        """Whether a new connection may stay; counts it if so, refuses it if not."""
        peer = transport.get_extra_info("peername")
        if not _peer_allowed(peer, self.allowed_networks):
            self.stats.refused_peer += 1
            self._refuse(f"{peer}: not an allowed host (agi_allowed_hosts)", "not allowed")
            return False
        if self._connections >= self.max_connections:
            self.stats.refused_busy += 1
            self._refuse(f"{peer}: {self._connections} connections already open "
                         f"(agi_max_connections)", "over the limit")
            return False
        self._connections += 1
        self._peak = max(self._peak, self._connections)
        self.stats.peak_connections = max(self.stats.peak_connections, self._connections)
        return True

    def _closed(self) -> None:
        self._connections -= 1
        if (self._peak >= TRIM_PEAK and self._connections <= self._peak // 4
                and self._trim is None and _malloc_trim() is not None):
            self._trim = asyncio.get_running_loop().call_later(TRIM_DELAY, self._release_memory)

    def _release_memory(self) -> None:
        self._trim = None
        peak, self._peak = self._peak, self._connections
        started = time.perf_counter()
        gc.collect()  # the closed connections' reference cycles (tasks, exceptions) first
        trim = _malloc_trim()
        if trim is not None:
            trim(0)
        self.stats.memory_trims += 1
        log.info("memory released after a peak of %d connections (%.0f ms)",
                 peak, (time.perf_counter() - started) * 1000)

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
        except asyncio.CancelledError:
            # Ended by shutdown (counted and logged in _handle). Not re-raised: asyncio's
            # StreamReaderProtocol (3.11) logs a traceback for a cancelled connection task.
            pass
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
            session = AgiSession(
                reader, writer, env, command_timeout=self.command_timeout, leftover=leftover
            )
        except (AgiProtocolError, TimeoutError, ConnectionError) as exc:
            reason = str(exc) or type(exc).__name__
            if isinstance(exc, TimeoutError):
                reason = f"no complete header block within {self.header_timeout}s"
            self._refuse(f"{peer}: {reason}", "bad header")
            return
        handler = self.routes.get(env.route)
        if handler is None:
            self._refuse(f"{peer}: unknown route {env.route!r} ({env.network_script!r})",
                         "unknown route")
            # Tell the dialplan why, so it can play "service unavailable".
            with contextlib.suppress(AgiError, TimeoutError):
                await asyncio.wait_for(session.set_variable("IVR_ERROR", "NOROUTE"), 5)
            return
        self.sessions.add(session)
        task = asyncio.current_task()
        if task is not None:
            self._session_tasks[session] = task
        log.info("[%s] %s call from %r on %s", env.uniqueid, env.route, env.callerid, env.channel)
        try:
            await handler(session)
        except AgiTimeout as exc:
            self.stats.hung_up += 1
            self.stats.timed_out += 1
            log.warning("[%s] session ended: %s", env.uniqueid, exc)
        except AgiHangup as exc:
            self.stats.hung_up += 1
            log.info("[%s] caller hung up: %s", env.uniqueid, exc)
        except asyncio.CancelledError:
            if session in self._handing_back:
                self.stats.handed_back += 1
                log.info("[%s] %s: handed back to the dialplan by shutdown", env.uniqueid,
                         env.route)
            else:
                self.stats.cancelled += 1
                log.warning("[%s] call cancelled by shutdown", env.uniqueid)
            raise
        except Exception as exc:
            self.stats.failed += 1
            if session.broken is not None:  # the peer's fault (not AGI): one line is enough
                log.warning("[%s] session ended: %s", env.uniqueid, exc)
            else:
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
            self._session_tasks.pop(session, None)
            self._handing_back.discard(session)

    def _refuse(self, reason: str, kind: str) -> None:
        self.stats.refused += 1
        self.stats.refusals.append(reason)
        del self.stats.refusals[:-100]
        self._refusal_log.refused(kind, reason)

    @property
    def refusal_log_window(self) -> float:
        return self._refusal_log.window

    @refusal_log_window.setter
    def refusal_log_window(self, seconds: float) -> None:
        self._refusal_log.window = seconds

    def _hand_back(self) -> None:
        """Cancel the routes waiting on their caller in a menu (see the module doc)."""
        for session, task in list(self._session_tasks.items()):
            if session.interruptible and session.waiting and session not in self._handing_back:
                self._handing_back.add(session)
                task.cancel()

    async def shutdown(self, grace: float = 30.0) -> None:
        """Stop accepting; hand callers waiting in a menu back to the dialplan at once; let
        other calls finish for ``grace`` seconds, then end them. Logs one line of what it
        did."""
        if self._server is not None:
            self._server.close()
            # Not wait_closed(): since 3.12 it waits for every connection to end.
        before = (self.stats.handed_back, self.stats.cancelled)
        running = set(self._tasks)
        finished = 0
        if running:
            log.info("waiting up to %ss for %d running call(s)", grace, len(running))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + grace
            pending = running
            while pending and loop.time() < deadline:
                self._hand_back()
                _, pending = await asyncio.wait(
                    pending, timeout=min(HAND_BACK_POLL, max(0.0, deadline - loop.time())))
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
            finished = sum(1 for task in running if task.done())
        if self._trim is not None:
            self._trim.cancel()
        self._refusal_log.close()
        handed_back = self.stats.handed_back - before[0]
        cancelled = self.stats.cancelled - before[1]
        log.info("shutdown: %d call(s) handed back to the dialplan, %d cancelled, %d finished",
                 handed_back, cancelled, max(0, finished - handed_back - cancelled))
        log.info("FastAGI server stopped")
