"""The AGI wire protocol with no I/O: bytes in, events and commands out.

In the style of h11: :class:`HeaderParser` and :class:`ReplyParser` are fed whatever the
socket produced and hand back complete items; :func:`format_command` turns a command into
the bytes to send. Nothing here touches a socket or a clock, so every edge case can be
tested byte by byte.

Why not panoramisk's FastAGI: in 1.4 it does not check for EOF while reading the header
block (a peer that closes mid-header makes it spin or hang), reads a multi-line 520 reply
as one line (the rest then poisons the next reply), and returns a dict on failures instead
of raising. See docs/design.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

# Limits that keep a misbehaving peer from eating memory: every buffer is bounded.
MAX_LINE = 8192  # bytes in one line, header or reply (without its newline)
MAX_HEADER_LINES = 200
MAX_HEADER_BYTES = 32 * 1024  # the whole header block; Asterisk's is about 1 kB plus args
MAX_USAGE = 64 * 1024  # the text of one multi-line 520 reply; Asterisk's is a few lines

_HEADER_KEY = re.compile(r"^agi_[a-z0-9_]+$")


class AgiError(Exception):
    """Base of every AGI failure."""


class AgiProtocolError(AgiError):
    """The peer sent bytes that are not AGI."""


class AgiHangup(AgiError):
    """The channel hung up (HANGUP line, 511, or result=-1 on a dead channel)."""


class AgiInvalidCommand(AgiError):
    """510: Asterisk does not know the command."""


class AgiUsageError(AgiError):
    """520: the command's arguments were wrong; ``usage`` holds Asterisk's help text."""

    def __init__(self, message: str, usage: str = "") -> None:
        super().__init__(message)
        self.usage = usage


class AgiTimeout(AgiHangup):
    """Asterisk did not answer a command in time. The session cannot be used any more (a
    late reply would be taken for the next command's), so it ends like a hang-up."""


class AgiCommandFailed(AgiError):
    """200 result=-1 on a live channel (e.g. a sound file that does not exist)."""

    def __init__(self, command: str, reply: Reply) -> None:
        super().__init__(f"{command} failed: {reply.raw}")
        self.reply = reply


# ---------------------------------------------------------------------------------------
# Lines


class LineBuffer:
    """Splits a byte stream into lines, in bounded memory and linear time.

    Each byte is scanned for a newline once (the scan resumes where the last one stopped),
    and a line longer than :data:`MAX_LINE` is refused as soon as the buffer passes the
    limit, whether or not its newline has arrived.
    """

    def __init__(self, what: str) -> None:
        self._what = what
        self._buffer = bytearray()
        self._scanned = 0  # bytes of _buffer known to hold no newline

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_line(self) -> bytes | None:
        """The next complete line without its line break, or None until more bytes come."""
        newline = self._buffer.find(b"\n", self._scanned)
        if newline < 0:
            self._scanned = len(self._buffer)
            if self._scanned > MAX_LINE:
                raise AgiProtocolError(f"{self._what} line too long (over {MAX_LINE} bytes)")
            return None
        if newline > MAX_LINE:
            raise AgiProtocolError(f"{self._what} line too long ({newline} bytes)")
        line = bytes(self._buffer[:newline])
        del self._buffer[: newline + 1]
        self._scanned = 0
        return line.rstrip(b"\r")

    @property
    def pending(self) -> bytes:
        return bytes(self._buffer)


# ---------------------------------------------------------------------------------------
# Header block


@dataclass(frozen=True)
class AgiEnvironment(Mapping[str, str]):
    """The ``agi_*`` variables Asterisk sends first, keys without the ``agi_`` prefix.

    The field is ``variables``, not ``values``: a field of that name would hide
    ``Mapping.values()``, and ``env.values()`` would try to call the dict.
    """

    variables: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()

    def __getitem__(self, key: str) -> str:
        return self.variables[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.variables)

    def __len__(self) -> int:
        return len(self.variables)

    @property
    def network_script(self) -> str:
        return self.variables.get("network_script", "")

    @property
    def route(self) -> str:
        """The route name: ``agi://host:port/topup?x=1`` gives ``topup``."""
        script = self.network_script.split("?", 1)[0].strip("/")
        return script.split("/", 1)[0]

    @property
    def query(self) -> dict[str, str]:
        """Parameters after ``?`` in the script path (``a=1&b=2``)."""
        _, _, query = self.network_script.partition("?")
        pairs = (part.partition("=") for part in query.split("&") if part)
        return {key: value for key, _, value in pairs}

    @property
    def uniqueid(self) -> str:
        return self.variables.get("uniqueid", "")

    @property
    def channel(self) -> str:
        return self.variables.get("channel", "")

    @property
    def callerid(self) -> str:
        value = self.variables.get("callerid", "")
        return "" if value == "unknown" else value


class HeaderParser:
    """Collects ``agi_key: value`` lines up to the blank line that ends the block."""

    def __init__(self) -> None:
        self._lines_in = LineBuffer("header")
        self._values: dict[str, str] = {}
        self._args: list[tuple[int, str]] = []
        self._lines = 0
        self._size = 0  # bytes of the block taken so far
        self.environment: AgiEnvironment | None = None

    def feed(self, data: bytes) -> AgiEnvironment | None:
        """Feed bytes; returns the environment once the block is complete.

        Bytes after the blank line are kept in :attr:`leftover` (a well-behaved Asterisk
        sends none before our first command).
        """
        if self.environment is not None:
            raise AgiProtocolError("header block already complete")
        self._lines_in.feed(data)
        while True:
            raw = self._lines_in.next_line()
            if raw is None:
                return None
            self._size += len(raw) + 1
            if self._size > MAX_HEADER_BYTES:
                raise AgiProtocolError(f"header block too large (over {MAX_HEADER_BYTES} bytes)")
            line = raw.decode("utf-8", "replace")
            if line == "":
                if not self._values:
                    raise AgiProtocolError("empty header block")
                self._args.sort()
                self.environment = AgiEnvironment(self._values, tuple(a for _, a in self._args))
                return self.environment
            self._take_line(line)

    @property
    def leftover(self) -> bytes:
        return self._lines_in.pending

    def eof(self) -> None:
        """The peer closed the connection: complete block or error, never a hang."""
        if self.environment is None:
            raise AgiProtocolError(
                f"connection closed inside the header block after {self._lines} lines"
            )

    def _take_line(self, line: str) -> None:
        self._lines += 1
        if self._lines > MAX_HEADER_LINES:
            raise AgiProtocolError("too many header lines")
        key, sep, value = line.partition(":")
        if not sep or not _HEADER_KEY.match(key):
            raise AgiProtocolError(f"malformed header line {self._lines}: {line[:80]!r}")
        value = value[1:] if value.startswith(" ") else value
        name = key[len("agi_") :]
        if name.startswith("arg_") and name[4:].isdigit():
            self._args.append((int(name[4:]), value))
        self._values[name] = value


# ---------------------------------------------------------------------------------------
# Commands


def quote_argument(arg: object) -> str:
    """Quote one argument the way res_agi's parser splits them.

    Asterisk splits on spaces outside double quotes and honours backslash escapes, so an
    argument is wrapped in quotes with ``\\`` and ``"`` escaped. Line breaks would end the
    command early and let the rest be read as a second command: they are refused.
    """
    text = str(arg)
    if "\n" in text or "\r" in text or "\0" in text:
        raise ValueError("AGI arguments cannot contain line breaks or NUL")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_command(name: str, *args: object) -> bytes:
    """``format_command("STREAM FILE", "hello", "")`` -> ``b'STREAM FILE "hello" ""\\n'``."""
    if not re.fullmatch(r"[A-Z][A-Z ]*[A-Z]", name):
        raise ValueError(f"not an AGI command name: {name!r}")
    parts = [name, *(quote_argument(a) for a in args)]
    return (" ".join(parts) + "\n").encode("utf-8")


# How long Asterisk may take to answer a command: the waits its arguments ask for, plus
# these. A session whose peer says nothing so ends in seconds or minutes. Only EXEC and
# GOSUB (an application: Dial lasts the whole call) and waits without a limit (WAIT FOR
# DIGIT -1) are left to the hard cap, the server's command_timeout.
QUICK_REPLY = 30.0  # a command that waits for nobody (SET VARIABLE, ANSWER, ...)
PLAYBACK = 300.0  # playing a prompt or saying a number; prompts are under two minutes
DIGIT_WAIT = 10.0  # GET DATA's wait for each key: its timeout, at least the channel's
_PLAYBACK_COMMANDS = ("STREAM FILE", "CONTROL STREAM FILE", "SAY ")
_UNBOUNDED_COMMANDS = ("EXEC", "GOSUB")


def _seconds(args: Sequence[object], index: int) -> float | None:
    """Argument ``index`` as milliseconds, in seconds; None when absent, bad or negative
    (Asterisk's "no limit")."""
    try:
        value = int(str(args[index]))
    except (IndexError, ValueError):
        return None
    return value / 1000 if value >= 0 else None


def reply_allowance(name: str, args: Sequence[object] = ()) -> float | None:
    """Seconds Asterisk may take to answer ``name args``; None: no bound of its own."""
    if name in _UNBOUNDED_COMMANDS:
        return None
    if name == "WAIT FOR DIGIT":
        wait = _seconds(args, 0)
        return None if wait is None else wait + QUICK_REPLY
    if name == "RECORD FILE":  # file format escape_digits timeout ...
        wait = _seconds(args, 3)
        return None if wait is None else wait + QUICK_REPLY
    if name in ("GET DATA", "GET OPTION"):  # file [timeout] [max_digits] / file escape [timeout]
        timeout = _seconds(args, 1 if name == "GET DATA" else 2) or 0.0
        try:
            keys = int(str(args[2])) if name == "GET DATA" else 1
        except (IndexError, ValueError):
            return None  # GET DATA without max_digits reads up to 1024 keys
        return PLAYBACK + (max(keys, 1) + 1) * max(timeout, DIGIT_WAIT)
    if name == "SPEECH RECOGNIZE":  # prompt timeout ...
        return PLAYBACK + (_seconds(args, 1) or DIGIT_WAIT)
    if name.startswith(_PLAYBACK_COMMANDS):
        return PLAYBACK
    return QUICK_REPLY


# ---------------------------------------------------------------------------------------
# Replies

_RESULT = re.compile(r"^200 result=(?P<result>\S*)(?P<rest>.*)$")
_TRAILER = re.compile(r"^(?:\s+[A-Za-z_]+=\S*)*\s*$")
_PAIR = re.compile(r"([A-Za-z_]+)=(\S*)")


@dataclass(frozen=True)
class Reply:
    """One complete reply to one command."""

    code: int
    result: str = ""
    data: str | None = None  # the text in parentheses: "timeout", "dtmf", a variable...
    extras: Mapping[str, str] = field(default_factory=dict)  # endpos=..., etc.
    raw: str = ""
    usage: str = ""  # 520 help text

    @property
    def result_int(self) -> int:
        try:
            return int(self.result)
        except ValueError:
            raise AgiProtocolError(f"result is not a number: {self.raw!r}") from None

    @property
    def timed_out(self) -> bool:
        return self.data == "timeout"


@dataclass(frozen=True)
class HangupNotice:
    """The inline ``HANGUP`` line Asterisk sends when the channel hangs up."""


def parse_result_line(line: str) -> Reply:
    """Parse ``200 result=1 (some data) endpos=1234``.

    The data may contain spaces and parentheses (a variable's value), so it runs to the
    last ``)`` after which only ``key=value`` pairs follow.
    """
    match = _RESULT.match(line)
    if match is None:
        raise AgiProtocolError(f"malformed 200 reply: {line!r}")
    result, rest = match["result"], match["rest"]
    data: str | None = None
    stripped = rest.lstrip()
    if stripped.startswith("("):
        close = len(stripped)
        while True:
            close = stripped.rfind(")", 0, close)
            if close < 0:
                raise AgiProtocolError(f"unbalanced parentheses in reply: {line!r}")
            if _TRAILER.match(stripped[close + 1 :]):
                break
        data = stripped[1:close]
        rest = stripped[close + 1 :]
    elif rest and not _TRAILER.match(rest):
        raise AgiProtocolError(f"unexpected text in reply: {line!r}")
    extras = dict(_PAIR.findall(rest))
    return Reply(200, result, data, extras, line)


class ReplyParser:
    """Turns the byte stream after the header block into :class:`Reply` and
    :class:`HangupNotice` items."""

    def __init__(self) -> None:
        self._lines_in = LineBuffer("reply")
        self._usage: list[str] | None = None  # inside a multi-line 520
        self._usage_size = 0
        self._usage_first = ""

    def feed(self, data: bytes) -> list[Reply | HangupNotice]:
        self._lines_in.feed(data)
        items: list[Reply | HangupNotice] = []
        while True:
            raw = self._lines_in.next_line()
            if raw is None:
                return items
            item = self._take_line(raw.decode("utf-8", "replace"))
            if item is not None:
                items.append(item)

    def _take_line(self, line: str) -> Reply | HangupNotice | None:
        if self._usage is not None:
            if line.startswith("520 "):
                usage = "\n".join(self._usage)
                self._usage = None
                return Reply(520, raw=self._usage_first, usage=usage)
            self._usage_size += len(line) + 1
            if self._usage_size > MAX_USAGE:
                raise AgiProtocolError(f"520 usage text too long (over {MAX_USAGE} bytes)")
            self._usage.append(line)
            return None
        if line == "HANGUP":
            return HangupNotice()
        if line == "":
            return None  # stray blank line; Asterisk sends none, tolerate it
        if line.startswith("200 "):
            return parse_result_line(line)
        if line.startswith("520-"):
            self._usage = []
            self._usage_size = 0
            self._usage_first = line
            return None
        code_text = line[:3]
        if len(line) >= 3 and code_text.isdigit() and (len(line) == 3 or line[3] == " "):
            return Reply(int(code_text), raw=line)
        raise AgiProtocolError(f"unexpected line from Asterisk: {line[:80]!r}")


def raise_for_reply(command: str, reply: Reply) -> Reply:
    """Map error codes to exceptions; 200 replies pass through."""
    if reply.code == 200:
        return reply
    if reply.code == 511:
        raise AgiHangup(f"{command}: channel is dead ({reply.raw})")
    if reply.code == 510:
        raise AgiInvalidCommand(f"{command}: {reply.raw}")
    if reply.code == 520:
        raise AgiUsageError(f"{command}: invalid syntax", reply.usage)
    raise AgiProtocolError(f"{command}: unexpected reply {reply.raw!r}")
