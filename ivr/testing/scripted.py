"""A scripted caller for the fake Asterisk (:mod:`ivr.testing.fake_asterisk`): what the
caller types at each prompt, and how each dialled call ends.

The call flows name prompts by id and play them from the store as
``<store>/<lang>/<id>/v<n>``, so a script can answer by prompt id and read back what
the caller heard in order, without knowing how many commands a prompt or a spoken
amount takes. The dialplan side of a dialled call (ivr-access.conf) is scripted too:
``EXEC Dial`` returns at once (its ``B()`` option names the call key), ``GET VARIABLE
DIALSTATUS`` gives the scripted status, and the call's AstDB record (``DATABASE GET
ivr-calls <key>``) is ``ANSWER,<ms>`` for an answered call, as the called channel's
hang-up handler writes it.

Used by the unit tests of the flows (tests/unit/test_flows_*.py): fast and
deterministic, but no proof that Asterisk behaves so; the real-Asterisk tests are.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .fake_asterisk import FakeAsterisk, default_rule

if TYPE_CHECKING:
    from ..agi import AgiServer
    from ..app import App
    from ..db import Database
    from .access import CardInHand

CALLER_ID = "15550001111"  # the fake Asterisk's default agi_callerid

DEAD = "511 Command Not Permitted on a dead channel"
_VERSION = re.compile(r"v\d+")
_PREPARE = re.compile(r"B\(ivr-access-prepare\^s\^1\(([^^()]*)")


@dataclass(frozen=True)
class Outcome:
    """How one dialled call ends: its DIALSTATUS and, when answered, its length as the
    hang-up handler records it (None: no record yet, as when the handler is late)."""

    status: str = "ANSWER"
    answered_ms: int | None = None

    @classmethod
    def answered(cls, seconds: int) -> Outcome:
        return cls("ANSWER", seconds * 1000)

    @property
    def record(self) -> str | None:
        """The AstDB record the flow reads right after Dial: ``ANSWER,<ms>``, written by
        the called channel's hang-up handler, for an answered call; none for another
        (the caller's hang-up handler writes ``<DIALSTATUS>,0`` only when the caller's
        channel ends, after the route)."""
        if self.status != "ANSWER" or self.answered_ms is None:
            return None
        return f"ANSWER,{self.answered_ms}"


def quoted_args(command: str) -> list[str]:
    """The double-quoted arguments of an AGI command line, in order."""
    return re.findall(r'"((?:[^"\\]|\\.)*)"', command)


def prompt_of(command: str) -> str | None:
    """What a command plays, by name: a store prompt as its id, a core sound as its
    path, ``number:N`` / ``digits:D`` for SAY NUMBER / SAY DIGITS; None for the rest."""
    args = quoted_args(command)
    if command.startswith(("STREAM FILE", "GET DATA", "CONTROL STREAM FILE")) and args:
        parts = args[0].split("/")
        if len(parts) >= 3 and _VERSION.fullmatch(parts[-1]):
            return parts[-2]
        return args[0]
    if command.startswith("SAY NUMBER") and args:
        return f"number:{args[0]}"
    if command.startswith("SAY DIGITS") and args:
        return f"digits:{args[0]}"
    return None


def is_store_prompt(command: str) -> bool:
    """A prompt played from the prompt store (not a core sound, not a number)."""
    args = quoted_args(command)
    if not command.startswith(("STREAM FILE", "GET DATA")) or not args:
        return False
    parts = args[0].split("/")
    return len(parts) >= 3 and bool(_VERSION.fullmatch(parts[-1]))


@dataclass
class ScriptedCaller:
    """One caller's script, and what the call did.

    ``keys`` maps a prompt id to what the caller types each time it is played, in turn:
    for GET DATA the digits (a string; "" is an empty entry ended by ``#``) or None (no
    key before the timeout); for a STREAM FILE that takes escape digits, the one key
    pressed during it (None: listened to the end). A prompt with nothing left to answer
    times out / plays to its end. ``dials`` are the outcomes of the calls dialled, in
    order (nothing left: NOANSWER). ``hangup_at`` hangs up while that prompt plays
    (its ``n``-th playing, ``hangup_at_playing``): the command gets result=-1 and the
    HANGUP line, and every later command 511, as on a dead channel.

    The rule answers one call at a time; use a new caller per call, or :meth:`reset`.
    """

    keys: Mapping[str, Iterable[str | None]] = field(default_factory=dict)
    dials: Iterable[Outcome] = ()
    hangup_at: str | None = None
    hangup_at_playing: int = 1
    commands: list[str] = field(default_factory=list)
    dialled: list[str] = field(default_factory=list)  # the Dial targets, in order

    def __post_init__(self) -> None:
        self._queues = {prompt: list(answers) for prompt, answers in self.keys.items()}
        self._dials = list(self.dials)
        self._current: Outcome | None = None
        self._records: dict[str, str] = {}  # AstDB family ivr-calls, by call key
        self._plays: dict[str, int] = {}
        self._call_key: str | None = None  # IVR_CALL_KEY of the call being dialled
        self.dead = False

    def reset(self) -> None:
        """Forget what the last call did (the script is used up as it was)."""
        self.commands.clear()
        self.dialled.clear()
        self._records.clear()
        self._plays.clear()
        self._current = None
        self._call_key = None
        self.dead = False

    # ------------------------------------------------------------------ what was heard

    @property
    def heard(self) -> list[str]:
        """Everything played, in order: prompt ids, core sounds, ``number:N``."""
        return [p for p in map(prompt_of, self.commands) if p is not None]

    @property
    def prompts(self) -> list[str]:
        """The store prompts played or asked, in order, by id."""
        return [p for c in self.commands if is_store_prompt(c)
                for p in [prompt_of(c)] if p is not None]

    @property
    def astdb(self) -> dict[str, str]:
        """The call records left in AstDB (family ivr-calls) by call key: a flow that
        settled a call deletes its record."""
        return dict(self._records)

    def left(self) -> dict[str, list[str | None]]:
        """Answers the call never asked for (a script longer than the call)."""
        return {prompt: answers for prompt, answers in self._queues.items() if answers}

    # ------------------------------------------------------------------ the rule

    def rule(self, command: str) -> str | list[str]:
        """The fake Asterisk's reply to one command (FakeAsterisk's ``rule``)."""
        self.commands.append(command)
        if self.dead:
            return DEAD
        prompt = prompt_of(command)
        if prompt is not None:
            self._plays[prompt] = self._plays.get(prompt, 0) + 1
            if prompt == self.hangup_at and self._plays[prompt] == self.hangup_at_playing:
                self.dead = True
                return ["200 result=-1 endpos=0", "HANGUP"]
        args = quoted_args(command)
        if command.startswith("GET DATA"):
            answer = self._next(prompt)
            return "200 result= (timeout)" if answer is None else f"200 result={answer}"
        if command.startswith("STREAM FILE"):
            escape = args[1] if len(args) > 1 else ""
            if escape and self._queues.get(prompt or ""):
                key = self._next(prompt)
                if key:
                    return f"200 result={ord(key[0])} endpos=4000"
            return "200 result=0 endpos=8000"
        if command.startswith("EXEC") and args and args[0] == "Dial":
            options = args[1] if len(args) > 1 else ""
            self.dialled.append(options.split(",")[0])
            # Dial's B(ivr-access-prepare^s^1(<key>^...)) sets IVR_CALL_KEY before it dials.
            prepared = _PREPARE.search(options)
            if prepared is not None:
                self._call_key = prepared.group(1)
            self._current = self._dials.pop(0) if self._dials else Outcome("NOANSWER")
            # The called channel's hang-up handler records an answered call during Dial.
            record = self._current.record
            if record is not None and self._call_key is not None:
                self._records[self._call_key] = record
            return "200 result=0"
        if command.startswith("GET VARIABLE") and args and args[0] == "DIALSTATUS":
            if self._current is None:
                return "200 result=0"
            return f"200 result=1 ({self._current.status})"
        if command.startswith("SET VARIABLE") and args and args[0] == "IVR_CALL_KEY":
            # The dialplan keys the call's AstDB record by IVR_CALL_KEY.
            self._call_key = args[1] if len(args) > 1 else ""
            return "200 result=1"
        if command.startswith("DATABASE GET"):
            key = args[1] if len(args) > 1 else ""
            record = self._records.get(key)
            return "200 result=0" if record is None else f"200 result=1 ({record})"
        if command.startswith("DATABASE DEL"):
            found = self._records.pop(args[1] if len(args) > 1 else "", None)
            return "200 result=1" if found is not None else "200 result=0"
        return default_rule(command)

    def _next(self, prompt: str | None) -> str | None:
        answers = self._queues.get(prompt or "")
        return answers.pop(0) if answers else None

    # ------------------------------------------------------------------ running a call

    async def call(self, host: str, port: int, script: str = "access", *,
                   hangup_after: int | None = None, **env: str) -> list[str]:
        """Run one call against a FastAGI server; returns the commands it sent."""
        fake = FakeAsterisk(host, port, self.rule)
        return await fake.run_call(script, hangup_after=hangup_after, **env)


@dataclass
class Line:
    """An application built for a test and the FastAGI server that serves its routes;
    calls to it come from scripted callers."""

    app: App
    server: AgiServer

    @property
    def db(self) -> Database:
        return self.app.db

    def card(self, balance: str, *, callerid: str | None = None) -> CardInHand:
        """A new card on its own account with ``balance`` (the test rating plan)."""
        from .access import new_card

        return new_card(self.app.db, Decimal(balance), callerid=callerid)

    async def call(self, caller: ScriptedCaller, *, hangup_after: int | None = None,
                   route: str = "access", **env: str) -> list[str]:
        """Run one call to the end; no route may fail (that is a bug, not a hang-up)."""
        commands = await caller.call("127.0.0.1", self.server.port, route,
                                     hangup_after=hangup_after, **env)
        await self.server.wait_idle()
        assert self.server.stats.failed == 0, self.server.stats.refusals
        return commands


# Makes a Line: ``await make_line(name, **settings changes)`` (tests/unit/conftest.py).
LineFactory = Callable[..., Coroutine[Any, Any, Line]]
