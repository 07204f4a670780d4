"""A test "phone" that calls into a real Asterisk through AMI.

``Phone.call(context)`` originates ``Local/s@ivr-test-caller/n`` with the line under test
as its Context/Exten: the ``;1`` half runs the line (and its AGI), the ``;2`` half is the
caller's handset, waiting in ``ivr-test-caller``. DTMF played on ``;2`` reaches the IVR.
Every AGI command Asterisk runs for the call arrives as an ``AGIExecStart`` event, which
tells the phone what the IVR played and when it waits for input.

The phone logs in as its own AMI user (:func:`harness_ami`), not the server's: the server's
user may not read AGI events nor record, and should not.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..ami import AmiClient
from ..asterisk.instance import HARNESS_AMI_USER, AsteriskInstance

INPUT_COMMANDS = ("GET DATA", "WAIT FOR DIGIT", "GET OPTION", "RECORD FILE")
PROMPT_COMMANDS = ("STREAM FILE", "CONTROL STREAM FILE", "GET DATA", "GET OPTION")


def harness_ami(instance: AsteriskInstance) -> AmiClient:
    """An AMI client for the test harness's user of ``instance``, which renders that user
    only when given its secret (``instance.harness_secret``, set before start)."""
    if not instance.harness_secret:
        raise ValueError("this Asterisk instance has no test harness AMI user")
    s = instance.settings
    return AmiClient(s.ami_host, s.ami_port, HARNESS_AMI_USER, instance.harness_secret)


@dataclass(frozen=True)
class SeenCommand:
    """One AGI command the IVR sent, as Asterisk reported it."""

    verb: str
    args: tuple[str, ...]
    raw: str

    @property
    def prompt(self) -> str | None:
        """What the caller heard: a sound name, or ``say-digits:123`` style for SAY."""
        if self.verb in PROMPT_COMMANDS and self.args:
            return self.args[0]
        if self.verb.startswith("SAY ") and self.args:
            return f"{self.verb[4:].lower().replace(' ', '-')}:{self.args[0]}"
        return None


def split_agi_command(raw: str) -> SeenCommand:
    """Split ``STREAM FILE "hello" ""`` into verb and arguments.

    The verb is the leading run of unquoted upper-case words; arguments follow, with
    double quotes and backslash escapes handled as res_agi does.
    """
    tokens: list[tuple[str, bool]] = []
    i, n = 0, len(raw)
    while i < n:
        if raw[i] == " ":
            i += 1
            continue
        quoted = raw[i] == '"'
        if quoted:
            i += 1
        buf: list[str] = []
        while i < n:
            ch = raw[i]
            if ch == "\\" and i + 1 < n:
                buf.append(raw[i + 1])
                i += 2
                continue
            if (quoted and ch == '"') or (not quoted and ch == " "):
                i += 1
                break
            buf.append(ch)
            i += 1
        tokens.append(("".join(buf), quoted))
    verb_words: list[str] = []
    for text, quoted in tokens:
        if quoted or not text.isalpha() or not text.isupper():
            break
        verb_words.append(text)
    args = tuple(text for text, _ in tokens[len(verb_words) :])
    return SeenCommand(" ".join(verb_words), args, raw)


@dataclass
class Call:
    """One call placed by a :class:`Phone`."""

    phone: Phone
    id: str  # uniqueid of the line's half (;1)
    handset_id: str  # uniqueid of the handset half (;2)
    channel: str = ""
    handset_channel: str = ""
    commands: list[SeenCommand] = field(default_factory=list)
    # Dialplan applications the line ran, from Newexten events: ("Playback", "ss-noservice").
    applications: list[tuple[str, str]] = field(default_factory=list)
    events: list[dict[str, str]] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    hangup_cause: str = ""
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def prompts(self) -> list[str]:
        return [p for p in (c.prompt for c in self.commands) if p is not None]

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(
        self, predicate: Callable[[Call], object], timeout: float = 15, what: str = "condition"
    ) -> object:
        """Wait until ``predicate(call)`` is truthy; returns its value."""
        async def _wait() -> object:
            async with self._changed:
                while True:
                    value = predicate(self)
                    if value:
                        return value
                    await self._changed.wait()

        try:
            return await asyncio.wait_for(_wait(), timeout)
        except TimeoutError:
            seen = [c.raw for c in self.commands]
            raise AssertionError(f"timed out waiting for {what}; AGI seen: {seen}") from None

    async def wait_for_command(self, verb: str, after: int = 0, timeout: float = 15) -> SeenCommand:
        """The first command with this verb at or after index ``after``."""
        def find(call: Call) -> SeenCommand | None:
            for cmd in call.commands[after:]:
                if cmd.verb == verb:
                    return cmd
            return None

        result = await self.wait_for(find, timeout, f"AGI {verb}")
        assert isinstance(result, SeenCommand)
        return result

    async def wait_for_input(self, after: int = 0, timeout: float = 15) -> SeenCommand:
        """Wait until the IVR runs a command that waits for the caller's keys."""
        def find(call: Call) -> SeenCommand | None:
            for cmd in call.commands[after:]:
                if cmd.verb in INPUT_COMMANDS:
                    return cmd
            return None

        result = await self.wait_for(find, timeout, "the IVR to wait for input")
        assert isinstance(result, SeenCommand)
        return result

    async def send_dtmf(self, digits: str, duration_ms: int = 100, gap_ms: int = 80) -> None:
        """Type keys on the handset, one PlayDTMF per key."""
        await self.wait_for(lambda c: c.handset_channel, 10, "the handset channel")
        keypad = self.phone.keypad_for(self)
        for digit in digits:
            await keypad.action(
                "PlayDTMF", Channel=self.handset_channel, Digit=digit, Duration=duration_ms
            )
            await asyncio.sleep((duration_ms + gap_ms) / 1000)

    async def answer_input(self, digits: str, after: int = 0, timeout: float = 15) -> None:
        """Wait for the IVR to ask for input, then type ``digits``."""
        await self.wait_for_input(after, timeout)
        await self.send_dtmf(digits)

    async def hangup(self) -> None:
        """The caller hangs up (the handset half; the line's half follows)."""
        if self.ended.is_set():
            return
        target = self.handset_channel or self.channel
        with contextlib.suppress(Exception):
            await self.phone.ami.action("Hangup", Channel=target)

    async def wait_ended(self, timeout: float = 30) -> None:
        try:
            await asyncio.wait_for(self.ended.wait(), timeout)
        except TimeoutError:
            seen = [c.raw for c in self.commands]
            raise AssertionError(f"call {self.id} did not end in {timeout}s; AGI: {seen}") from None


class Phone:
    """Places calls into contexts of a running Asterisk and follows them through AMI.

    Asterisk runs PlayDTMF in the AMI session's own thread and sleeps there for the key's
    duration, so one AMI connection types at most ~10 keys a second for all calls. Extra
    ``keypads`` (more AMI connections) let many simultaneous calls type at a human pace.
    """

    def __init__(
        self,
        ami: AmiClient,
        caller_context: str = "ivr-test-caller",
        keypads: list[AmiClient] | None = None,
    ) -> None:
        self.ami = ami
        self.caller_context = caller_context
        self.keypads = keypads or [ami]
        self._next_keypad = 0
        self._keypad_of: dict[str, AmiClient] = {}
        self._calls: dict[str, Call] = {}
        self._unsubscribe = ami.on_event("*", self._on_event)

    def close(self) -> None:
        self._unsubscribe()

    def keypad_for(self, call: Call) -> AmiClient:
        keypad = self._keypad_of.get(call.id)
        if keypad is None:
            keypad = self.keypads[self._next_keypad % len(self.keypads)]
            self._next_keypad += 1
            self._keypad_of[call.id] = keypad
        return keypad

    async def call(
        self,
        context: str,
        exten: str = "s",
        *,
        callerid: str = "15550001111",
        variables: dict[str, str] | None = None,
        timeout: float = 15,
    ) -> Call:
        tag = uuid.uuid4().hex[:16]
        call = Call(self, id=f"ivrtest-{tag}", handset_id=f"ivrtest-{tag}-h")
        self._calls[call.id] = call
        self._calls[call.handset_id] = call
        headers: dict[str, Any] = {  # AMI headers: strings, numbers, a list of variables
            "Channel": f"Local/s@{self.caller_context}/n",
            "Context": context,
            "Exten": exten,
            "Priority": 1,
            "CallerID": f'"Test phone" <{callerid}>',
            "Async": "true",
            "ChannelId": call.id,
            "OtherChannelId": call.handset_id,
            "Timeout": int(timeout * 1000),
        }
        if variables:
            headers["Variable"] = [f"{k}={v}" for k, v in variables.items()]
        reply = await self.ami.action("Originate", timeout=timeout + 5, **headers)
        messages = reply if isinstance(reply, list) else [reply]
        for message in messages:
            if message.get("Event") == "OriginateResponse" and message.get("Response") != "Success":
                self._forget(call)
                raise AssertionError(f"Originate into {context} failed: {dict(message)}")
        return call

    def _forget(self, call: Call) -> None:
        self._keypad_of.pop(call.id, None)
        self._calls.pop(call.id, None)
        self._calls.pop(call.handset_id, None)

    def _on_event(self, event: Mapping[str, str]) -> None:
        get = event.get
        uniqueid = get("Uniqueid", "")
        call = self._calls.get(uniqueid)
        if call is None:
            return
        name = get("Event", "")
        is_line = uniqueid == call.id
        if name == "Newchannel":
            if is_line:
                call.channel = get("Channel", "")
            else:
                call.handset_channel = get("Channel", "")
        elif name == "Newexten" and is_line:
            call.applications.append((get("Application", ""), get("AppData", "")))
        elif name == "AGIExecStart" and is_line:
            call.commands.append(split_agi_command(get("Command", "")))
        elif name == "Hangup" and is_line:
            call.hangup_cause = get("Cause-txt", "") or get("Cause", "")
            call.ended.set()
            self._forget(call)
        call.events.append({"Event": name, "Uniqueid": uniqueid})
        asyncio.ensure_future(call._notify())
