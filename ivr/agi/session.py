"""One FastAGI call: sends commands, waits for replies, exposes typed helpers.

A session owns its stream and its per-call state (``session.state``), like an aiosmtpd
session. Flows call the helpers below; nothing else writes to the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from time import monotonic
from typing import Any, Protocol

from .protocol import (
    AgiCommandFailed,
    AgiEnvironment,
    AgiHangup,
    AgiProtocolError,
    AgiTimeout,
    HangupNotice,
    Reply,
    ReplyParser,
    format_command,
    raise_for_reply,
    reply_allowance,
)

log = logging.getLogger("ivr.agi")

READ_CHUNK = 4096
# A "#" this soon (seconds) after an entry that ended at its length (the expiry's fourth
# digit) ends that entry, typed by habit: it is not an empty answer to the next prompt.
LATE_END_KEY = 2.0


class Watcher(Protocol):
    """Told of each command and reply of a call (its trace, ivr.live.trace). ``secret``:
    sent inside :meth:`AgiSession.secret` or with ``secret=True`` (mask what is typed)."""

    def sent(self, name: str, args: tuple[object, ...], secret: bool) -> None: ...

    def replied(self, name: str, args: tuple[object, ...], reply: Reply,
                secret: bool) -> None: ...

    def hung_up(self) -> None: ...


class AgiSession:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        env: AgiEnvironment,
        *,
        command_timeout: float = 3600.0,
        leftover: bytes = b"",
    ) -> None:
        self.env = env
        self.state: dict[str, Any] = {}
        self.hung_up = False
        self._reader = reader
        self._writer = writer
        self._parser = ReplyParser()
        self._pending: list[Reply] = []
        self._command_timeout = command_timeout
        self.broken: str | None = None  # why the session can no longer be used
        # Set by a route while it only waits on the caller (a menu): a server shutting
        # down ends such a route at once, when it is in a command (AgiServer.shutdown).
        self.interruptible = False
        self._secret_depth = 0
        self._filled_at: float | None = None  # when the last entry ended at its length
        self._lock = asyncio.Lock()
        self.watcher: Watcher | None = None  # attached by the application (App._bound)
        if leftover:
            self._absorb(self._parser.feed(leftover))

    # ---------------------------------------------------------------- logging control

    @contextlib.contextmanager
    def secret(self) -> Iterator[None]:
        """Inside this block, neither commands nor replies are logged (PIN, card number)."""
        self._secret_depth += 1
        try:
            yield
        finally:
            self._secret_depth -= 1

    @property
    def _log_prefix(self) -> str:
        return f"[{self.env.uniqueid or '?'}]"

    # ---------------------------------------------------------------- the one primitive

    async def command(
        self, name: str, *args: object, secret: bool = False, dead_ok: bool = False
    ) -> Reply:
        """Send one command and return its 200 reply, raising on error codes.

        After the caller hung up, only ``dead_ok`` commands are sent: Asterisk keeps
        answering GET/SET VARIABLE on a dead channel until the AGI ends (how a call's
        outcome is read after the caller hung up during Dial).

        Asterisk gets the time the command's arguments ask for plus a margin
        (:func:`~ivr.agi.protocol.reply_allowance`), at most ``command_timeout``; after
        that, or after bytes that are not AGI, the session ends (:class:`AgiTimeout`,
        :class:`AgiProtocolError`) and every later command raises :class:`AgiHangup`."""
        if self.broken is not None:
            raise AgiHangup(f"{name}: session ended ({self.broken})")
        if self.hung_up and name != "HANGUP" and not dead_ok:
            raise AgiHangup(f"{name}: channel already hung up")
        data = format_command(name, *args)
        quiet = secret or self._secret_depth > 0
        allowance = reply_allowance(name, args)
        timeout = (self._command_timeout if allowance is None
                   else min(allowance, self._command_timeout))
        debug = log.isEnabledFor(logging.DEBUG)
        async with self._lock:
            if debug:
                if quiet:
                    log.debug("%s -> %s <redacted>", self._log_prefix, name)
                else:
                    log.debug("%s -> %s", self._log_prefix, data.decode().rstrip())
            if self.watcher is not None:
                self._watch(self.watcher.sent, name, args, quiet)
            try:
                self._writer.write(data)
                await self._writer.drain()
            except (ConnectionError, RuntimeError) as exc:
                self.hung_up = True
                raise AgiHangup(f"{name}: connection lost ({exc})") from None
            try:
                # A deadline on this task, not wait_for's task per command.
                async with asyncio.timeout(timeout):
                    reply = await self._next_reply(name)
            except TimeoutError:
                self._break(f"no reply to {name} within {timeout:g}s")
                raise AgiTimeout(f"{name}: Asterisk did not reply within {timeout:g}s") from None
            except AgiProtocolError as exc:
                self._break(str(exc))
                raise
            except asyncio.CancelledError:  # its reply is still to come: out of step
                self._break(f"ended while waiting for the reply to {name}")
                raise
        if debug and not quiet:
            log.debug("%s <- %s", self._log_prefix, reply.raw)
        if self.watcher is not None:
            self._watch(self.watcher.replied, name, args, reply, quiet)
        return raise_for_reply(name, reply)

    def _watch(self, report: Callable[..., None], *args: Any) -> None:
        """Tell the watcher; its failure never reaches the call."""
        try:
            report(*args)
        except Exception:
            log.exception("%s call trace failed", self._log_prefix)

    @property
    def waiting(self) -> bool:
        """A command is out: Asterisk is playing to or reading from the caller."""
        return self._lock.locked()

    async def _next_reply(self, name: str) -> Reply:
        while True:
            while self._pending:
                reply = self._pending.pop(0)
                if reply.code != 100:  # "100 result=0 Trying..." precedes the real reply
                    return reply
            try:
                chunk = await self._reader.read(READ_CHUNK)
            except ConnectionError:
                chunk = b""
            if not chunk:
                self.hung_up = True
                raise AgiHangup(f"{name}: Asterisk closed the connection")
            self._absorb(self._parser.feed(chunk))

    def _break(self, reason: str) -> None:
        """The stream is out of step: nothing more can be sent; close the connection (and
        drop what was buffered for it)."""
        self.broken = reason
        self.hung_up = True
        self._parser = ReplyParser()
        self._pending.clear()
        self._writer.close()

    def _absorb(self, items: list[Reply | HangupNotice]) -> None:
        for item in items:
            if isinstance(item, HangupNotice):
                self.hung_up = True
                if self.watcher is not None:
                    self._watch(self.watcher.hung_up)
            else:
                self._pending.append(item)

    async def _checked(self, name: str, *args: object, secret: bool = False) -> Reply:
        """A channel command where result=-1 means hang-up or failure.

        result=-1 is ambiguous: a caller who hung up mid-prompt and a missing sound file
        give the same reply, and the HANGUP line comes after it. CHANNEL STATUS tells them
        apart: on a dead channel Asterisk answers it with 511.
        """
        reply = await self.command(name, *args, secret=secret)
        if reply.result != "-1":
            return reply
        if not self.hung_up:
            try:
                await self.command("CHANNEL STATUS")
            except AgiHangup:
                self.hung_up = True
        if self.hung_up:
            raise AgiHangup(f"{name}: caller hung up")
        raise AgiCommandFailed(name, reply)

    # ---------------------------------------------------------------- helpers

    async def answer(self) -> None:
        await self._checked("ANSWER")

    async def hangup(self) -> None:
        """Hang up our channel; a channel that is already gone is fine."""
        if self.hung_up:
            return
        with contextlib.suppress(AgiHangup):
            await self.command("HANGUP")
        self.hung_up = True

    async def stream_file(self, filename: str, escape_digits: str = "") -> tuple[str, int]:
        """Play a prompt. Returns (digit pressed or "", end position in samples)."""
        reply = await self._checked("STREAM FILE", filename, escape_digits)
        endpos = int(reply.extras.get("endpos", "0"))
        return _digit(reply), endpos

    async def get_data(
        self, filename: str, timeout_ms: int = 5000, max_digits: int = 20, *, secret: bool = False
    ) -> str | None:
        """Play a prompt and collect digits up to ``#``, max_digits or the timeout.

        Returns the digits typed ("" when none), or None when the caller typed nothing
        before the timeout. Pass ``secret=True`` for PINs and card numbers.

        An entry that ended at its length may still get its ``#`` a moment later: that
        key, cutting this prompt within LATE_END_KEY seconds, is the previous entry's
        end, and this one is asked again (once). Keys typed while a prompt plays (no
        command waiting for them) never reach the next entry: Asterisk drops them.
        """
        filled_at = self._filled_at
        typed, at = await self._read_entry(filename, timeout_ms, max_digits, secret)
        if typed == "" and filled_at is not None and at - filled_at < LATE_END_KEY:
            log.debug("%s # ended the entry before; asking again", self._log_prefix)
            typed, at = await self._read_entry(filename, timeout_ms, max_digits, secret)
        self._filled_at = at if typed is not None and len(typed) >= max_digits else None
        return typed

    async def _read_entry(
        self, filename: str, timeout_ms: int, max_digits: int, secret: bool
    ) -> tuple[str | None, float]:
        reply = await self._checked("GET DATA", filename, timeout_ms, max_digits, secret=secret)
        typed = None if reply.timed_out and reply.result == "" else reply.result
        return typed, monotonic()

    async def wait_for_digit(self, timeout_ms: int = 5000) -> str:
        reply = await self._checked("WAIT FOR DIGIT", timeout_ms)
        return _digit(reply)

    async def say_digits(self, digits: str, escape_digits: str = "") -> str:
        if not digits.isdigit():
            raise ValueError("SAY DIGITS takes digits only")
        return _digit(await self._checked("SAY DIGITS", digits, escape_digits))

    async def say_number(self, number: int, escape_digits: str = "") -> str:
        return _digit(await self._checked("SAY NUMBER", number, escape_digits))

    async def set_variable(self, name: str, value: object, *, dead_ok: bool = False) -> None:
        await self.command("SET VARIABLE", name, value, dead_ok=dead_ok)

    async def get_variable(self, name: str, *, dead_ok: bool = False) -> str | None:
        """A channel variable or function value; None when it is not set."""
        reply = await self.command("GET VARIABLE", name, dead_ok=dead_ok)
        return reply.data if reply.result == "1" else None

    async def database_get(self, family: str, key: str) -> str | None:
        """An AstDB value (None when absent); works after the caller hung up."""
        reply = await self.command("DATABASE GET", family, key, dead_ok=True)
        return reply.data if reply.result == "1" else None

    async def database_del(self, family: str, key: str) -> None:
        await self.command("DATABASE DEL", family, key, dead_ok=True)

    async def exec(self, application: str, *options: str) -> int:
        """Run a dialplan application; returns its result (-2 when it does not exist)."""
        reply = await self.command("EXEC", application, ",".join(options))
        result = reply.result_int
        if result == -2:
            raise AgiCommandFailed(f"EXEC {application}", reply)
        return result

    async def verbose(self, message: str, level: int = 1) -> None:
        await self.command("VERBOSE", message, level)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
            await asyncio.wait_for(self._writer.wait_closed(), 2)


def _digit(reply: Reply) -> str:
    """STREAM FILE / WAIT FOR DIGIT put the pressed key's ASCII code in result."""
    try:
        code = int(reply.result)
    except ValueError:
        raise AgiProtocolError(f"non-numeric result: {reply.raw!r}") from None
    return chr(code) if code > 0 else ""
