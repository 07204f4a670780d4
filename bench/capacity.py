"""Whole-system capacity through a real Asterisk: paid calls at a stepped rate of new
calls per second, the access line (`ivr serve`) and the classic process-per-call AGI
(bench/classic_agi.py) side by side on the same Asterisk.

    python bench/capacity.py [--rates 1,2,3,4,5,6,8,10,...,100] [--duration 60] [--hold 2]
                             [--sides ours,classic] [--database-url postgresql+psycopg://...]
                             [--agi-max-connections 4000] [--keep]

The bench brings up its own Asterisk instance (``bench-<pid>-cap``, the project's sandbox
build, the test trunk) and `ivr serve` in its own process (SQLite in a temporary
directory, or a fresh PostgreSQL database on the server ``--database-url`` names; AMI
connected; English only; no web console). Each call is ``Local/s@ivr-bench-handset/n``
originated through AMI into the line (``ivr-access``, or ``ivr-bench-classic`` whose
``AGI()`` runs the classic script): the ``;1`` half runs the line, the ``;2`` half is the
handset. The bench follows the line's AGI commands (AMI ``AGIExecStart``/``AGIExecEnd``,
filtered by event name in Asterisk). When the line's GET DATA asks for the card number,
the PIN or the destination, one AMI ``Redirect`` sends the handset to the extension made
of those digits in ``ivr-bench-handset``, where Asterisk itself types them and ``#``
(``SendDTMF``, dialplan/ivr-test.conf). The destination is ``9996SS....``: the test
trunk's callee answers and hangs up after ``--hold`` seconds. When the line asks
"another call?" (after the call was charged and the cost said) the bench hangs up the
handset: the call is complete. A call fails when its line hangs up before that, when the
originate fails, or when it is not over within 120 s.

Each card is used by one call at a time (a pool, reused once a card's call is over); the
server's cards are issued under its PIN key ring, the classic's in its own SQLite database
(inside the Asterisk sandbox root, where the classic scripts run) under the same ring.

Per step (``--duration`` s at a steady rate, then the step's calls drained): calls
attempted, completed, failed; calls in flight (peak); latencies from Asterisk's event
timestamps (manager.conf: timestampevents):
  - digit->Dial (srv): from the end of the destination's GET DATA (AGIExecEnd: the ``#``
    was read) to the start of ``EXEC Dial`` (AGIExecStart), less the time Asterisk spent
    running the AGI commands in between (the prompts "you have N minutes for this call,
    connecting", identical on both sides): the time the call waited for its AGI server
    or script (the AGI round trips, the rating and the reservation in the database). This
    is the figure held to the 100 ms target.
  - digit->Dial (raw): the same interval, prompts included.
  - start->answer: from the line channel's creation (Newchannel) to the callee's answer
    (DialEnd, DialStatus ANSWER): the whole log-in, typing and prompts, seconds.
CPU per call and as % of one CPU over the step: Asterisk (its own threads), the server
(`ivr serve`; for the classic side the scripts, Asterisk's reaped children, from
/proc/<asterisk>/stat cutime+cstime), the database (PostgreSQL: the backends serving the
bench's database; SQLite runs inside the server or the scripts), this driver; and the
whole machine's busy time (others' work included). The server's CPU per call is also
split between its event loop's thread and its other threads (database workers, trace
writer, lease heartbeat). A side's ladder stops after its first
step with a failed call or a p99 digit->Dial (srv) over 100 ms.

At the end the money is checked in both databases: every completed call has one CDR
charged its answered seconds x 0.01 USD (the test plan's 0.60/min per second; the seconds
Asterisk recorded, within 1 s of the bench's own DialEnd-to-Dial's-end measure) and one
matching ledger entry, every CDR costs exactly its seconds x 0.01, no reservation is left
open, nothing is left reserved, and every account's ledger sums to its balance.

The driver (this process) runs at nice -5 once Asterisk and the server are up: callers
type from outside the box, and their keys should not queue behind the CPU the system
under test is short of. Its own lateness is reported (event-loop lag, late launches).

Asterisk runs chrooted in the sandbox root: the classic scripts need this Python and the
project inside it. The bench re-runs itself in a private mount namespace (``unshare``, as
root) and bind-mounts both, read-only, at the same paths; they vanish with the namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import math
import os
import platform
import re
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
sys.path.insert(0, str(HERE))

import sipcalls  # noqa: E402  (bench/: Asterisk, the server, /proc readings)

if TYPE_CHECKING:
    from ivr.config import Settings

HANDSET = "ivr-bench-handset"
LINES = {"ours": "ivr-access", "classic": "ivr-bench-classic"}
TARGET_P99_MS = 100.0
BALANCE = Decimal("20.00")
PER_SECOND = Decimal("0.01")  # the test plan's 0.60/min to prefix 1, per-second billing
CALL_TIMEOUT = 120.0  # originate -> line hung up
ORIGINATE_TIMEOUT_MS = 30_000
WARMUP_CALLS = 4
IDLE_SAMPLE_S = 5.0
DRIVER_NICE = -5  # this driver's priority once Asterisk and the server run
NS_MARK = "CAPACITY_BENCH_NAMESPACE"
FAIL_PROMPTS = {"invalid-login", "too-many-attempts", "invalid-card", "wrong-pin",
                "unknown-destination", "not-enough-balance", "invalid-number", "no-input",
                "card-locked", "card-expired", "card-empty", "call-failed", "no-answer",
                "busy", "congestion", "service-unavailable"}
VERSION_PART = re.compile(r"v\d+$")


# --------------------------------------------------------------------------- AMI


class Ami:
    """A minimal AMI connection: actions written without waiting (their error replies
    counted), events handed to a callback as header dicts. The project's client
    (panoramisk) parses every message into objects; at a few thousand events a second this
    one keeps the driver's own CPU low."""

    def __init__(self, host: str, port: int, user: str, secret: str) -> None:
        self.host, self.port, self.user, self.secret = host, port, user, secret
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.on_event: Callable[[dict[str, str]], None] = lambda event: None
        self.waiting: dict[str, asyncio.Future[dict[str, str]]] = {}
        self.errors: collections.Counter[str] = collections.Counter()
        self.ids = itertools.count(1)
        self.task: asyncio.Task[None] | None = None

    async def connect(self, events: bool) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        await self.reader.readline()  # the banner
        self.task = asyncio.get_running_loop().create_task(self._read())
        reply = await self.request("Login", Username=self.user, Secret=self.secret,
                                   Events="on" if events else "off")
        if reply.get("Response") != "Success":
            raise RuntimeError(f"AMI login refused: {reply}")

    def send(self, action: str, action_id: str | None = None, **headers: str | int) -> str:
        assert self.writer is not None
        action_id = action_id or f"b{next(self.ids)}"
        lines = [f"Action: {action}", f"ActionID: {action_id}"]
        for key, value in headers.items():
            for item in value if isinstance(value, list) else [value]:
                lines.append(f"{key}: {item}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        return action_id

    async def request(self, action: str, timeout: float = 10, **headers: str | int
                      ) -> dict[str, str]:
        action_id = f"r{next(self.ids)}"
        future: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
        self.waiting[action_id] = future
        self.send(action, action_id, **headers)
        return await asyncio.wait_for(future, timeout)

    async def _read(self) -> None:
        assert self.reader is not None
        while True:
            try:
                block = await self.reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            message: dict[str, str] = {}
            for line in block.decode("utf-8", "replace").split("\r\n"):
                key, sep, value = line.partition(": ")
                if sep and key not in message:
                    message[key] = value
            if "Event" in message:
                self.on_event(message)
                continue
            future = self.waiting.pop(message.get("ActionID", ""), None)
            if future is not None and not future.done():
                future.set_result(message)
            elif message.get("Response") == "Error":
                self.errors[message.get("Message", "?")] += 1

    async def close(self) -> None:
        if self.writer is not None:
            with contextlib.suppress(Exception):
                self.send("Logoff")
                await self.writer.drain()
            self.writer.close()
        if self.task is not None:
            self.task.cancel()


# --------------------------------------------------------------------------- calls


@dataclass
class Card:
    number: str
    pin: str


@dataclass
class Call:
    side: str
    line_id: str
    handset_id: str
    card: Card
    destination: str
    step: Step
    sent: float  # time.time() at originate
    handset_channel: str = ""
    start_ts: float | None = None  # Newchannel of the line
    digit_ts: float | None = None  # AGIExecEnd of the destination's GET DATA
    dial_ts: float | None = None  # AGIExecStart of EXEC Dial
    answer_ts: float | None = None  # DialEnd ANSWER
    dialled_ts: float | None = None  # AGIExecEnd of EXEC Dial (the call is over)
    waited_s: float = 0.0  # between digit and Dial: time not spent in AGI commands
    worst_wait: tuple[float, str] = (0.0, "")  # its longest wait, and the command after
    last_end: float = 0.0
    window: bool = False
    asked: list[str] = field(default_factory=list)
    finished: bool = False  # reached "another call?" after an answered call
    failure: str = ""
    over: bool = False

    def fail(self, reason: str) -> None:
        if not self.failure:
            self.failure = reason


@dataclass
class Step:
    side: str
    rate: float
    calls: list[Call] = field(default_factory=list)
    live: int = 0
    peak: int = 0
    wall_s: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    launch_late_ms: float = 0.0
    first_end: asyncio.Event = field(default_factory=asyncio.Event)
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    launching: bool = True
    load: str = ""
    lag_ms: float = 0.0
    ami_errors: dict[str, int] = field(default_factory=dict)
    steady: dict[str, float] = field(default_factory=dict)

    @property
    def completed(self) -> list[Call]:
        return [c for c in self.calls if c.finished and not c.failure]

    @property
    def failed(self) -> list[Call]:
        return [c for c in self.calls if not (c.finished and not c.failure)]

    def ms(self, what: str) -> list[float]:
        out = []
        for c in self.completed:
            if what == "srv":
                out.append(c.waited_s * 1000)
            elif what == "raw" and c.digit_ts is not None and c.dial_ts is not None:
                out.append((c.dial_ts - c.digit_ts) * 1000)
            elif what == "answer" and c.start_ts is not None and c.answer_ts is not None:
                out.append((c.answer_ts - c.start_ts) * 1000)
        return out

    def p(self, what: str, q: float) -> float:
        return sipcalls.nearest_rank(self.ms(what), q)

    @property
    def within(self) -> bool:
        return bool(self.calls) and not self.failed and self.p("srv", 0.99) <= TARGET_P99_MS


def prompt_of(command: str) -> str:
    """The prompt id of a ``GET DATA``/``STREAM FILE`` command: ``.../en/<id>/v<n>``
    as the id, a core sound as its name."""
    from ivr.testing.phone import split_agi_command

    args = split_agi_command(command).args
    if not args:
        return ""
    parts = args[0].rstrip("/").split("/")
    if len(parts) >= 2 and VERSION_PART.match(parts[-1]):
        return parts[-2]
    return parts[-1]


class Driver:
    """Places the calls and follows them from the AMI events."""

    def __init__(self, events: Ami, actions: Ami, classic_agi: str) -> None:
        self.events, self.actions = events, actions
        self.classic_agi = classic_agi
        self.calls: dict[str, Call] = {}
        self.by_action: dict[str, Call] = {}
        self.serial = itertools.count(1)
        self.free: dict[str, collections.deque[Card]] = {}
        self.all_cards: dict[str, list[Card]] = {}
        self.shared = 0  # calls that had to share a card (the pool was empty)
        self.hold = 2
        events.on_event = self.on_event

    def add_cards(self, side: str, cards: list[Card]) -> None:
        self.all_cards[side] = cards
        self.free[side] = collections.deque(cards)

    def originate(self, side: str, step: Step) -> Call:
        n = next(self.serial)
        free = self.free[side]
        if free:
            card = free.popleft()
        else:
            self.shared += 1
            card = self.all_cards[side][n % len(self.all_cards[side])]
        tag = f"cap{side[0]}{n:07d}"
        destination = f"9996{self.hold:02d}{n % 10000:04d}"
        call = Call(side, tag, f"{tag}h", card, destination, step, time.time())
        self.calls[call.line_id] = call
        self.calls[call.handset_id] = call
        step.calls.append(call)
        step.live += 1
        step.peak = max(step.peak, step.live)
        headers: dict[str, Any] = {
            "Channel": f"Local/s@{HANDSET}/n", "Context": LINES[side], "Exten": "s",
            "Priority": 1, "CallerID": f'"Bench" <1555{n % 10_000_000:07d}>',
            "Async": "true", "ChannelId": call.line_id, "OtherChannelId": call.handset_id,
            "Timeout": ORIGINATE_TIMEOUT_MS,
        }
        if side == "classic":
            headers["Variable"] = f"IVR_BENCH_CLASSIC={self.classic_agi}"
        action_id = self.actions.send("Originate", **headers)
        self.by_action[action_id] = call
        return call

    def type_keys(self, call: Call, digits: str) -> None:
        self.actions.send("Redirect", Channel=call.handset_channel or call.handset_id,
                          Context=HANDSET, Exten=digits, Priority=1)

    def hang_up(self, call: Call) -> None:
        self.actions.send("Hangup", Channel=call.handset_channel or call.handset_id)

    def on_event(self, event: dict[str, str]) -> None:
        name = event.get("Event", "")
        if name == "OriginateResponse":
            call = self.by_action.pop(event.get("ActionID", ""), None)
            if call is not None and event.get("Response") != "Success":
                call.fail(f"originate failed ({event.get('Reason', '?')})")
                self.end(call)
            return
        uniqueid = event.get("Uniqueid", "")
        call = self.calls.get(uniqueid)
        if call is None:
            return
        ts = float(event.get("Timestamp") or time.time())
        if uniqueid != call.line_id:
            if name == "Newchannel":
                call.handset_channel = event.get("Channel", "")
            return
        if name == "AGIExecStart":
            command = event.get("Command", "")
            if call.window:
                call.waited_s += ts - call.last_end
                if ts - call.last_end > call.worst_wait[0]:
                    verb = command.split(" /")[0].split(' "')[0]
                    what = prompt_of(command) if verb in ("STREAM FILE", "GET DATA") else ""
                    call.worst_wait = (ts - call.last_end, f"{verb} {what}".strip())
            if command.startswith("GET DATA"):
                prompt = prompt_of(command)
                call.asked.append(prompt)
                if prompt == "enter-card-number":
                    self.type_keys(call, call.card.number)
                elif prompt == "enter-pin":
                    self.type_keys(call, call.card.pin)
                elif prompt == "enter-destination":
                    if call.digit_ts is not None:
                        call.fail("asked for the destination again")
                        self.hang_up(call)
                    else:
                        self.type_keys(call, call.destination)
                elif prompt == "another-call":
                    if call.answer_ts is None:
                        call.fail("not answered")
                    call.finished = True
                    self.hang_up(call)
                else:
                    call.fail(f"asked {prompt}")
                    self.hang_up(call)
            elif command.startswith("EXEC") and command[4:].lstrip(' "').startswith("Dial"):
                call.dial_ts = ts
                call.window = False
            elif command.startswith("STREAM FILE"):
                prompt = prompt_of(command)
                if prompt in FAIL_PROMPTS:
                    call.fail(f"heard {prompt}")
        elif name == "AGIExecEnd":
            call.last_end = ts
            if call.dial_ts is not None and call.dialled_ts is None:
                call.dialled_ts = ts
            if (command := event.get("Command", "")).startswith("GET DATA") and \
                    call.digit_ts is None and prompt_of(command) == "enter-destination":
                call.digit_ts = ts
                call.window = True
        elif name == "DialEnd":
            if event.get("DialStatus") == "ANSWER":
                call.answer_ts = ts
            else:
                call.fail(f"dial {event.get('DialStatus', '?')}")
        elif name == "Newchannel":
            call.start_ts = ts
        elif name == "Hangup":
            if not call.finished:
                last = call.asked[-1] if call.asked else "nothing"
                call.fail(f"line hung up ({event.get('Cause-txt', '?')}) after asking {last}")
            self.end(call)

    def end(self, call: Call) -> None:
        if call.over:
            return
        call.over = True
        self.calls.pop(call.line_id, None)
        self.calls.pop(call.handset_id, None)
        self.free[call.side].append(call.card)
        step = call.step
        step.live -= 1
        step.first_end.set()
        if not step.launching and step.live == 0:
            step.drained.set()

    def expire(self, now: float) -> None:
        for call in list(self.calls.values()):
            if not call.over and now - call.sent > CALL_TIMEOUT:
                call.fail(f"not over in {CALL_TIMEOUT:.0f} s (asked {call.asked[-1:]})")
                self.hang_up(call)
                self.end(call)


# --------------------------------------------------------------------------- CPU


class Cpu:
    """CPU seconds of Asterisk, the server (or the classic scripts), the database, this
    driver and the machine."""

    def __init__(self, asterisk_pid: int, server_pid: int, database: str | None) -> None:
        self.asterisk_pid, self.server_pid, self.database = asterisk_pid, server_pid, database

    def backends(self) -> dict[int, float]:
        """The PostgreSQL backends serving the bench's database (process title
        ``postgres: <user> <database> ...``)."""
        if not self.database:
            return {}
        found = {}
        marker = f" {self.database} ".encode()
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    title = f.read(200)
            except OSError:
                continue
            if title.startswith(b"postgres: ") and marker in title:
                found[int(entry.name)] = sipcalls.proc_cpu_s(int(entry.name))
        return found

    def sample(self) -> dict[str, Any]:
        children = math.nan
        try:
            with open(f"/proc/{self.asterisk_pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children = (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
        return {"asterisk": sipcalls.proc_cpu_s(self.asterisk_pid),
                "server": sipcalls.proc_cpu_s(self.server_pid),
                "server_loop": thread_cpu_s(self.server_pid, self.server_pid),
                "scripts": children,
                "db": self.backends(), "driver": sipcalls.self_cpu_s(),
                "machine": sipcalls.machine_busy_s(), "wall": time.perf_counter()}

    @staticmethod
    def since(before: dict[str, Any], now: dict[str, Any]) -> dict[str, float]:
        out = {k: now[k] - before[k] for k in now if k != "db"}
        out["db"] = sum(v - before["db"].get(pid, 0.0) for pid, v in now["db"].items()
                        if not math.isnan(v))
        return out


def thread_cpu_s(pid: int, tid: int) -> float:
    """CPU seconds of one thread of a process (the server's event loop: its main thread,
    whose thread id is the process id)."""
    return sipcalls.stat_cpu_s(f"/proc/{pid}/task/{tid}/stat")


# --------------------------------------------------------------------------- the run


class Bench(sipcalls.Bench):
    """Asterisk (with the test phone's AMI user), `ivr serve`, the databases."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.tmp.rmdir()  # sipcalls' own prefix: this run's directory is named for it
        self.tmp = Path(tempfile.mkdtemp(prefix="ivr-capacity-"))
        self.server_log = self.tmp / "server.log"
        self.postgres: Any = None
        self.classic_db: Path | None = None
        self.classic_agi = ""
        self.pin_key = Path()
        self.store_inner = ""
        self.classic_log_offset = 0

    def classic_log_lines(self) -> list[str]:
        """What the classic scripts wrote on stderr since the last call (tracebacks)."""
        if self.classic_db is None:
            return []
        try:
            text = self.classic_db.with_name("classic-agi.log").read_text(errors="replace")
        except OSError:
            return []
        new, self.classic_log_offset = text[self.classic_log_offset:], len(text)
        # pyst2 writes its whole exchange there (ARGS, ENV, COMMAND, RESULT...), and an
        # AGIAppError on GET DATA's -1 when the bench hangs up at "another call?" (caught):
        # only tracebacks are shown.
        return [line for line in new.splitlines()
                if line.startswith(("Traceback", "  File")) or re.match(r"\w+(\.\w+)*Error", line)]

    def settings(self) -> Settings:
        settings = super().settings().replace(
            asterisk_instance=f"bench-{os.getpid()}-cap",
            agi_max_connections=self.args.agi_max_connections,
        )
        if self.args.database_url:
            from callsetup import Postgres  # type: ignore[import-not-found]

            self.postgres = Postgres(self.args.database_url).__enter__()
            settings = settings.replace(database_url=self.postgres.url)
        return settings

    def start_asterisk(self, settings: Settings) -> None:
        from ivr.asterisk import AsteriskInstance, instance_for
        from ivr.prompts import PromptStore, load_catalogue
        from ivr.prompts.build import build

        instance = instance_for(settings)
        instance.test_trunk = True
        instance.harness_secret = secrets.token_hex(12)
        self.instance = instance
        instance.start(timeout=90)
        store = PromptStore.for_instance(instance)
        main = PromptStore.for_instance(AsteriskInstance(
            settings.replace(asterisk_instance="main"), instance.install))
        if main.host_dir.is_dir() and not store.host_dir.exists():
            shutil.copytree(main.host_dir, store.host_dir, symlinks=True)
        build(load_catalogue(), store, progress=False)
        self.store_inner = store.inner_dir

    def prepare(self, settings: Settings, cards: int, sides: list[str]) -> dict[str, list[Card]]:
        """The server's database (schema, the test plan, cards under the server's PIN key
        ring) and the classic's SQLite database in the sandbox, with its own cards."""
        from ivr.secrets import PIN_KEY_FILE, load_pin_keys

        assert self.instance is not None
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.pin_key = settings.data_dir / PIN_KEY_FILE
        keys = load_pin_keys("", self.pin_key)
        out = {}
        if "ours" in sides:
            out["ours"] = issue(settings.database_url, cards, keys, self.tmp)
        if "classic" in sides:
            base = self.instance.base
            inner_db, inner_key = f"{base}/classic.sqlite3", f"{base}/pin.key"
            self.classic_db = self.instance.host(inner_db)
            shutil.copy(self.pin_key, self.instance.host(inner_key))
            out["classic"] = issue(f"sqlite:///{self.classic_db}", cards, keys, self.tmp)
            with sqlite3.connect(self.classic_db) as db:
                db.execute("PRAGMA journal_mode = WAL")  # as the server's SQLite engine
            wrapper = f"{base}/classic-agi.sh"
            self.instance.host(wrapper).write_text(
                "#!/bin/sh\n"
                f"exec {sys.executable} {HERE / 'classic_agi.py'} --store {self.store_inner}"
                f" --settle {inner_db} {inner_key} 2>>{base}/classic-agi.log\n")
            self.instance.host(wrapper).chmod(0o755)
            self.classic_agi = wrapper
        return out

    def stop(self) -> None:
        if self.args.keep and self.classic_db is not None:
            for path in (self.classic_db, self.classic_db.with_name("classic-agi.log")):
                with contextlib.suppress(OSError):
                    shutil.copy(path, self.tmp / path.name)
        super().stop()
        if self.postgres is not None:
            self.postgres.__exit__(None, None, None)


def issue(url: str, count: int, keys: Any, tmp: Path) -> list[Card]:
    from ivr.db import Database
    from ivr.db.migrate import upgrade
    from ivr.money.accounts import issue_cards
    from ivr.testing.access import PLAN, create_test_plan

    db = Database(url)
    try:
        upgrade(db.engine)
        create_test_plan(db)
        issued = issue_cards(db, PLAN, count, BALANCE, tmp / f"cards-{secrets.token_hex(4)}.csv",
                             pin_keys=keys)
    finally:
        db.dispose()
    return [Card(c.number, c.pin) for c in issued]


def mount_for_classic(root: Path) -> None:
    """This Python and the project, read-only, at the same paths inside the sandbox root
    (this process runs in its own mount namespace: see main)."""
    for path in {Path(sys.base_prefix).resolve(), PROJECT}:
        target = root / str(path).lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "--bind", "-o", "ro", str(path), str(target)], check=True)


async def run_side(driver: Driver, bench: Bench, side: str, rates: list[float],
                   args: argparse.Namespace, report: Callable[[Step], None]) -> list[Step]:
    assert bench.instance is not None and bench.server is not None
    cpu = Cpu(bench.instance.pid() or 0, bench.server.pid,
              bench.postgres.name if bench.postgres is not None and side == "ours" else None)
    warm = Step(side, 1.0)
    await place(driver, warm, side, 1.0, WARMUP_CALLS)
    if warm.failed:
        reasons = collections.Counter(c.failure or "unfinished" for c in warm.failed)
        raise RuntimeError(f"{side}: warm-up calls failed: {dict(reasons)}; logs: "
                           f"{(bench.new_log_lines() + bench.classic_log_lines())[-5:]}")
    await sipcalls.settle(bench)
    bench.new_log_lines()
    # What Asterisk and the server spend with no call up (timers, AMI): it is in every
    # step's CPU per call, a bigger share of it at low rates.
    before = cpu.sample()
    await asyncio.sleep(IDLE_SAMPLE_S)
    idle = Cpu.since(before, cpu.sample())
    print(f"{side}: idle, no call up: Asterisk {idle['asterisk'] / idle['wall'] * 100:.1f}%, "
          f"server {idle['server'] / idle['wall'] * 100:.1f}% of one CPU; machine "
          f"{idle['machine'] / idle['wall'] * 100:.0f}% (other work)", flush=True)
    steps = []
    probe = sipcalls.LagProbe()
    probe.start()
    try:
        for rate in rates:
            step = Step(side, rate)
            count = max(1, round(rate * args.duration))
            driver.actions.errors.clear()
            probe.take()
            before = cpu.sample()
            sampler = asyncio.ensure_future(steady(cpu, step))
            await place(driver, step, side, rate, count)
            after = cpu.sample()
            step.cpu = Cpu.since(before, after)
            step.wall_s = step.cpu.pop("wall")
            step.steady = await sampler
            step.load = sipcalls.loadavg()
            step.lag_ms = probe.take()
            step.ami_errors = dict(driver.actions.errors)
            left = await sipcalls.settle(bench)
            log = bench.new_log_lines()
            if side == "classic":
                log += bench.classic_log_lines()[-3:]
            if left:
                log.append(f"(Asterisk still had {left} channel(s) 15 s after the step)")
            steps.append(step)
            report(step)
            for line in log[:3]:
                print(f"    log: {line[:200]}", flush=True)
            if not step.within:
                break
            await asyncio.sleep(2)
    finally:
        probe.stop()
    return steps


async def place(driver: Driver, step: Step, side: str, rate: float, count: int) -> None:
    """``count`` calls, one every 1/rate s, then wait until all are over."""
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    late = 0.0
    for i in range(count):
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        late = max(late, loop.time() - due)
        driver.originate(side, step)
        if i % 50 == 0:
            await driver.actions.writer.drain()  # type: ignore[union-attr]
            driver.expire(time.time())
    step.launch_late_ms = late * 1000
    step.launching = False
    if step.live == 0:
        step.drained.set()
    while not step.drained.is_set():
        driver.expire(time.time())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(step.drained.wait(), 1.0)


async def steady(cpu: Cpu, step: Step) -> dict[str, float]:
    """CPU from when the step's first call ended (calls in flight stop growing) to its
    last launch: the steady state."""
    await step.first_end.wait()
    if not step.launching:
        return {}
    before = cpu.sample()
    while step.launching:
        await asyncio.sleep(0.2)
    out = Cpu.since(before, cpu.sample())
    return out if out["wall"] >= 3 else {}


# --------------------------------------------------------------------------- money


def check_ours(url: str, completed: dict[str, float], hold: int) -> list[str]:
    from sqlalchemy import select

    from ivr.db import Database
    from ivr.db.models import Account, Cdr, EntryKind, LedgerEntry, Reservation
    from ivr.db.models import ReservationStatus as RS

    db = Database(url)
    try:
        with db.transaction() as s:
            cdrs = [(c.uniqueid, c.billable_seconds, c.cost) for c in s.scalars(select(Cdr))]
            calls = {e.ref: e.amount for e in s.scalars(
                select(LedgerEntry).where(LedgerEntry.kind == EntryKind.CALL))}
            sums: dict[int, Decimal] = collections.defaultdict(Decimal)
            for e in s.scalars(select(LedgerEntry)):
                sums[e.account_id] += e.amount
            accounts = [(a.id, a.balance, a.reserved) for a in s.scalars(select(Account))]
            open_ = len(list(s.scalars(select(Reservation.id).where(
                Reservation.status == RS.ACTIVE))))
    finally:
        db.dispose()
    return money_lines("ours", cdrs, calls, sums, accounts, open_, completed, hold)


def check_classic(path: Path, completed: dict[str, float], hold: int) -> list[str]:
    micros = Decimal(10**6)
    with contextlib.closing(sqlite3.connect(path)) as db:
        cdrs = [(u, s, Decimal(c) / micros) for u, s, c in
                db.execute("SELECT uniqueid, billable_seconds, cost FROM cdrs")]
        calls = {r: Decimal(a) / micros for r, a in db.execute(
            "SELECT ref, amount FROM ledger_entries WHERE kind = 'call'")}
        sums = {a: Decimal(t) / micros for a, t in db.execute(
            "SELECT account_id, SUM(amount) FROM ledger_entries GROUP BY account_id")}
        accounts = [(i, Decimal(b) / micros, Decimal(r) / micros) for i, b, r in
                    db.execute("SELECT id, balance, reserved FROM accounts")]
        open_ = db.execute(
            "SELECT COUNT(*) FROM reservations WHERE status = 'active'").fetchone()[0]
    return money_lines("classic", cdrs, calls, sums, accounts, open_, completed, hold)


def money_lines(side: str, cdrs: list[tuple[str, int, Decimal]], calls: dict[str, Decimal],
                sums: dict[int, Decimal], accounts: list[tuple[int, Decimal, Decimal]],
                open_: int, completed: dict[str, float], hold: int) -> list[str]:
    """``completed``: line id -> answered seconds as the bench saw them (DialEnd ANSWER
    to Dial's end). Asterisk's own record (answer to the called channel's hang-up
    handler, whole seconds, floored) is what is charged; the two may differ by the
    moments between those events, so a charge within 1 s of the bench's measure passes."""
    problems = []
    charged_seconds: collections.Counter[int] = collections.Counter()
    by_line: dict[str, list[tuple[str, int, Decimal]]] = collections.defaultdict(list)
    for cdr in cdrs:
        by_line[cdr[0].rpartition("-")[0]].append(cdr)
        uniqueid, seconds, cost = cdr
        if cost != seconds * PER_SECOND:
            problems.append(f"CDR {uniqueid}: {seconds} s charged {cost}")
        if cost and calls.get(uniqueid) != -cost:
            problems.append(f"CDR {uniqueid}: ledger entry {calls.get(uniqueid)} for {cost}")
    charged = Decimal(0)
    for line, answered in completed.items():
        mine = by_line.get(line, [])
        if len(mine) != 1 or abs(mine[0][1] - answered) > 1:
            problems.append(f"completed call {line}, answered {answered:.3f} s: CDRs {mine}")
        else:
            charged += mine[0][2]
            charged_seconds[mine[0][1]] += 1
    if len(calls) != len([c for c in cdrs if c[2]]):
        problems.append(f"{len(calls)} call ledger entries for "
                        f"{len([c for c in cdrs if c[2]])} charged CDRs")
    for account_id, balance, reserved in accounts:
        if sums.get(account_id, Decimal(0)) != balance:
            problems.append(f"account {account_id}: ledger {sums.get(account_id)} != "
                            f"balance {balance}")
        if reserved:
            problems.append(f"account {account_id}: {reserved} still reserved")
    if open_:
        problems.append(f"{open_} reservation(s) still open")
    if not problems:
        spread = ", ".join(f"{n} x {sec} s" for sec, n in sorted(charged_seconds.items()))
        return [f"money ({side}): OK: {len(completed)} completed calls, each one CDR charged "
                f"its answered seconds x {PER_SECOND} USD ({spread}; the callee hangs up "
                f"after {hold} s; {charged} USD in all) with its ledger entry; {len(cdrs)} "
                f"CDRs; no reservation open, nothing reserved; ledger sums equal balances "
                f"on all {len(accounts)} accounts"]
    return [f"money ({side}): {len(problems)} problem(s):"] + [f"    {p}" for p in problems[:10]]


# --------------------------------------------------------------------------- report


COLUMNS = (f"{'side':<8}{'rate/s':>6}{'calls':>6}{'ok':>6}{'fail':>5}{'peak':>5}"
           f"{'srv p50':>8}{'p99':>7}{'raw p50':>8}{'p99':>7}{'ans p50':>8}{'p99':>6}"
           f"{'ast':>6}{'srv':>6}{'db':>5}{'drv':>5}{'ast%':>6}{'srv%':>6}{'db%':>5}"
           f"{'mach%':>6}")


def header_lines(args: argparse.Namespace, bench: Bench, pool: int) -> list[str]:
    assert bench.instance is not None
    database = ("PostgreSQL (" + bench.postgres.name + ")" if bench.postgres is not None
                else "SQLite")
    return [
        f"capacity: {os.cpu_count()} CPUs shared by Asterisk, `ivr serve`, the classic "
        f"scripts and this driver; Python {platform.python_version()}, {platform.system()} "
        f"{platform.release()}; {bench.instance.install.version()}",
        f"each call: Local channel into the line, card + PIN + destination typed by "
        f"Asterisk (SendDTMF, 80 ms tones 50 ms apart), the callee answers for "
        f"{args.hold} s, charged, hung up at 'another call?'; {args.duration:g} s per step; "
        f"{WARMUP_CALLS} warm-up calls per side; {pool} cards per side",
        f"ours: `ivr serve`, {database}, agi_max_connections "
        f"{bench.instance.settings.agi_max_connections}; classic: bench/classic_agi.py, "
        f"one process per call, SQLite; load average at start: {sipcalls.loadavg()}",
        "ms: p50/p99 by nearest rank over completed calls. srv: digit->Dial less the AGI "
        "commands' own time (prompts), the target (<= 100 ms); raw: digit->Dial with the "
        "prompts; ans: call start -> callee answered, in s. CPU ms per call (attempted) of "
        "Asterisk (ast), server or classic scripts (srv), PostgreSQL backends (db), this "
        "driver (drv); then % of one CPU over the step; mach%: the machine (both CPUs: 200)",
        "",
        COLUMNS,
    ]


def step_line(step: Step) -> str:
    n = max(1, len(step.calls))
    cpu = step.cpu
    srv = cpu["server"] if step.side == "ours" else cpu["scripts"]
    wall = max(step.wall_s, 1e-9)
    return (f"{step.side:<8}{step.rate:>6g}{len(step.calls):>6}{len(step.completed):>6}"
            f"{len(step.failed):>5}{step.peak:>5}"
            f"{step.p('srv', 0.5):>8.1f}{step.p('srv', 0.99):>7.1f}"
            f"{step.p('raw', 0.5):>8.0f}{step.p('raw', 0.99):>7.0f}"
            f"{step.p('answer', 0.5) / 1000:>8.1f}{step.p('answer', 0.99) / 1000:>6.1f}"
            f"{cpu['asterisk'] * 1000 / n:>6.1f}{srv * 1000 / n:>6.1f}"
            f"{cpu['db'] * 1000 / n:>5.1f}{cpu['driver'] * 1000 / n:>5.1f}"
            f"{cpu['asterisk'] / wall * 100:>6.0f}{srv / wall * 100:>6.0f}"
            f"{cpu['db'] / wall * 100:>5.0f}{cpu['machine'] / wall * 100:>6.0f}")


def step_notes(step: Step) -> list[str]:
    notes = []
    if step.failed:
        reasons = collections.Counter(c.failure or "unfinished" for c in step.failed)
        notes.append("    failed: " + "; ".join(f"{n} x {why}" for why, n in
                                                 reasons.most_common(4)))
    slow = [c for c in step.completed if c.waited_s * 1000 > TARGET_P99_MS]
    if slow:
        where = collections.Counter(c.worst_wait[1] for c in slow)
        worst = max(slow, key=lambda c: c.waited_s)
        notes.append(f"    {len(slow)} call(s) over {TARGET_P99_MS:.0f} ms digit->Dial; their "
                     f"longest wait was before: " + ", ".join(
                         f"{n} x {cmd}" for cmd, n in where.most_common(3))
                     + f"; worst {worst.waited_s * 1000:.0f} ms ({worst.line_id}, "
                     f"{worst.worst_wait[0] * 1000:.0f} ms before {worst.worst_wait[1]!r})")
    if step.ami_errors:
        notes.append(f"    AMI errors: {step.ami_errors}")
    if step.launch_late_ms > 50:
        notes.append(f"    the driver started a call up to {step.launch_late_ms:.0f} ms late "
                     f"(worst event-loop lag {step.lag_ms:.0f} ms)")
    if step.side == "ours" and step.calls and not math.isnan(step.cpu["server_loop"]):
        n = len(step.calls)
        loop = step.cpu["server_loop"]
        notes.append(f"    server CPU per call: {loop * 1000 / n:.1f} ms on the event loop's "
                     f"thread, {(step.cpu['server'] - loop) * 1000 / n:.1f} ms on its other "
                     f"threads (database workers, trace writer, lease heartbeat)")
    if step.steady:
        st = step.steady
        wall = st["wall"]
        srv = st["server"] if step.side == "ours" else st["scripts"]
        share = {k: st[k] / wall * 100 for k in ("asterisk", "driver", "machine", "db")}
        own = share["asterisk"] + srv / wall * 100 + share["driver"] + share["db"]
        notes.append(f"    steady state ({wall:.0f} s): Asterisk {share['asterisk']:.0f}%, "
                     f"{'server' if step.side == 'ours' else 'scripts'} "
                     f"{srv / wall * 100:.0f}%, db {share['db']:.0f}%, driver "
                     f"{share['driver']:.0f}%, machine {share['machine']:.0f}% of one CPU "
                     f"(other work {max(0.0, share['machine'] - own):.0f}%); load {step.load}")
    return notes


def summary(results: dict[str, list[Step]]) -> list[str]:
    lines = []
    best: dict[str, Step | None] = {}
    for side, steps in results.items():
        passed = [s for s in steps if s.within]
        best[side] = max(passed, key=lambda s: s.rate) if passed else None
        stop = next((s for s in steps if not s.within), None)
        b = best[side]
        if b is None:
            text = f"{side}: no step sustained (zero failed calls, p99 digit->Dial <= 100 ms)"
        else:
            n = max(1, len(b.calls))
            srv = b.cpu["server"] if side == "ours" else b.cpu["scripts"]
            text = (f"{side}: highest sustained rate {b.rate:g} calls/s ({b.peak} calls in "
                    f"flight, p99 digit->Dial {b.p('srv', 0.99):.1f} ms); per call Asterisk "
                    f"{b.cpu['asterisk'] * 1000 / n:.1f} ms CPU, "
                    f"{'server' if side == 'ours' else 'script'} {srv * 1000 / n:.1f} ms")
        if stop is not None:
            why = []
            if stop.failed:
                why.append(f"{len(stop.failed)} failed call(s)")
            if stop.p("srv", 0.99) > TARGET_P99_MS:
                why.append(f"p99 digit->Dial {stop.p('srv', 0.99):.1f} ms")
            text += f"; stopped at {stop.rate:g}/s: {', '.join(why)}"
        elif steps:
            text += "; every rate asked for was sustained (add higher --rates)"
        lines.append(text)
        if steps:
            # What the CPU alone would allow: the rate at which Asterisk and the server (or
            # scripts) and the database, at the per-call cost of the side's last step,
            # would keep every CPU of the box busy (the driver and other work left out).
            last = steps[-1]
            n = max(1, len(last.calls))
            srv = last.cpu["server"] if side == "ours" else last.cpu["scripts"]
            per_call = (last.cpu["asterisk"] + srv + last.cpu["db"]) / n
            ceiling = (os.cpu_count() or 1) / per_call if per_call > 0 else math.inf
            lines.append(f"    CPU ceiling ({side}): {per_call * 1000:.0f} ms of CPU per call "
                         f"(Asterisk {last.cpu['asterisk'] * 1000 / n:.0f} ms, "
                         f"{'server' if side == 'ours' else 'script'} {srv * 1000 / n:.0f} "
                         f"ms, db {last.cpu['db'] * 1000 / n:.0f} ms at {last.rate:g}/s): "
                         f"{os.cpu_count()} CPUs doing nothing else would carry "
                         f"{ceiling:.1f} calls/s")
    ours, classic = best.get("ours"), best.get("classic")
    if ours is not None and classic is not None:
        lines.append(f"ratio ours/classic: {ours.rate / classic.rate:.1f}x (target >= 5x)")
        n = max(1, len(ours.calls))
        ast, srv = ours.cpu["asterisk"] * 1000 / n, ours.cpu["server"] * 1000 / n
        lines.append(f"at {ours.rate:g}/s Asterisk spends {ast:.1f} ms CPU per call, our "
                     f"server {srv:.1f} ms: {ast / max(srv, 1e-9):.1f}x (target: Asterisk "
                     f">= 4x ours when Asterisk is the limit)")
    return lines


def write_calls(path: Path, results: dict[str, list[Step]]) -> None:
    import csv

    def ms(a: float | None, b: float | None) -> str:
        return "" if a is None or b is None else f"{(b - a) * 1000:.1f}"

    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["side", "rate", "line", "sent", "digit_to_dial_srv_ms",
                      "digit_to_dial_raw_ms", "start_to_answer_ms", "failure"])
        for steps in results.values():
            for step in steps:
                for c in step.calls:
                    out.writerow([c.side, f"{step.rate:g}", c.line_id, f"{c.sent:.3f}",
                                  f"{c.waited_s * 1000:.1f}", ms(c.digit_ts, c.dial_ts),
                                  ms(c.start_ts, c.answer_ts),
                                  c.failure or ("" if c.finished else "unfinished")])


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="1,2,3,4,5,6,8,10,15,20,30,40,60,80,100",
                        help="new calls per second of each step, in order (comma-separated)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per step")
    parser.add_argument("--hold", type=int, default=2,
                        help="seconds the callee stays answered (1-99)")
    parser.add_argument("--sides", default="ours,classic",
                        help="which lines to drive, in order: ours, classic")
    parser.add_argument("--database-url", default="",
                        help="PostgreSQL admin URL: ours on a fresh database there (the "
                        "classic stays on SQLite)")
    parser.add_argument("--agi-max-connections", type=int, default=4000,
                        help="the server's agi_max_connections (each live call holds one)")
    parser.add_argument("--cards", type=int, default=0,
                        help="cards per side (default: enough for the top rate's calls in "
                        "flight)")
    parser.add_argument("--calls-csv", metavar="PATH",
                        help="write every call (side, step, times, failure) to PATH")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (server log, Asterisk's log, "
                        "databases)")
    args = parser.parse_args(argv)
    args.silent_caller = False  # sipcalls.Bench reads these
    args.warmup = 0
    return args


async def drive(bench: Bench, args: argparse.Namespace, sides: list[str],
                rates: list[float], cards: dict[str, list[Card]]) -> dict[str, list[Step]]:
    from ivr.asterisk.instance import HARNESS_AMI_USER

    assert bench.instance is not None
    s = bench.instance.settings
    secret = bench.instance.harness_secret
    events = Ami(s.ami_host, s.ami_port, HARNESS_AMI_USER, secret)
    actions = Ami(s.ami_host, s.ami_port, HARNESS_AMI_USER, secret)
    await events.connect(events=True)
    await actions.connect(events=False)
    for name in ("AGIExecStart", "AGIExecEnd", "DialEnd", "Newchannel", "Hangup",
                 "OriginateResponse"):
        reply = await events.request("Filter", Operation="Add",
                                     MatchCriteria=f"name({name})", Filter="")
        if reply.get("Response") != "Success":
            raise RuntimeError(f"AMI Filter refused: {reply}")
    # The callers are outside the box in life: their typing should not wait for the CPU
    # the system under test is short of. Asterisk and the server started before this.
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, DRIVER_NICE)
    driver = Driver(events, actions, bench.classic_agi)
    driver.hold = args.hold
    for side, issued in cards.items():
        driver.add_cards(side, issued)
    results: dict[str, list[Step]] = {}

    def report(step: Step) -> None:
        print(step_line(step), flush=True)
        for note in step_notes(step):
            print(note, flush=True)

    try:
        for side in sides:
            results[side] = await run_side(driver, bench, side, rates, args, report)
    finally:
        await events.close()
        await actions.close()
    if driver.shared:
        print(f"({driver.shared} call(s) shared a card: the pool was empty)")
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sides = [x.strip() for x in args.sides.split(",") if x.strip()]
    if not sides or any(x not in LINES for x in sides):
        raise SystemExit(f"--sides: ours and/or classic, not {args.sides!r}")
    if not 1 <= args.hold <= 99:
        raise SystemExit("--hold: 1 to 99 seconds")
    if "classic" in sides and os.environ.get(NS_MARK) != "1":
        # A private mount namespace for the bind mounts the classic scripts need.
        os.environ[NS_MARK] = "1"
        os.execvp("unshare", ["unshare", "--mount", "--propagation", "private",
                              sys.executable, str(Path(__file__).resolve()),
                              *(sys.argv[1:] if argv is None else argv)])
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    top = max(rates)
    total = round(sum(rates) * args.duration)
    pool = args.cards or min(total + WARMUP_CALLS, int(top * 45) + 50)
    bench = Bench(args)
    try:
        settings = bench.settings()
        bench.start_asterisk(settings)
        assert bench.instance is not None
        if "classic" in sides and bench.instance.install.root is not None:
            mount_for_classic(bench.instance.install.root)
        started = time.perf_counter()
        cards = bench.prepare(settings, pool, sides)
        print(f"(cards issued in {time.perf_counter() - started:.0f} s)", flush=True)
        bench.start_server(settings)
        for line in header_lines(args, bench, pool):
            print(line, flush=True)
        results = asyncio.run(drive(bench, args, sides, rates, cards))
        print()
        for line in summary(results):
            print(line)
        if args.calls_csv:
            write_calls(Path(args.calls_csv), results)
        completed = {side: {c.line_id: (c.dialled_ts or 0.0) - (c.answer_ts or 0.0)
                            for st in steps for c in st.completed}
                     for side, steps in results.items()}
        if "ours" in results:
            lines = check_ours(settings.database_url, completed["ours"], args.hold)
            for line in lines:
                print(line)
        if "classic" in results and bench.classic_db is not None:
            for line in check_classic(bench.classic_db, completed["classic"], args.hold):
                print(line)
    finally:
        bench.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
