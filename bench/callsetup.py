"""Call-setup benchmark: with N calls in flight on the access line, the time from the
caller's last destination digit to the start of Dial, and the server's resident memory per
live call, side by side with a classic process-per-call AGI baseline (bench/classic_agi.py,
pyst2) measured in the same run.

    python bench/callsetup.py [--calls 100] [--rate 50] [--db-dir DIR] [--seed 1]
                              [--database-url postgresql+psycopg://USER:PASS@HOST/postgres]

This script plays Asterisk: it connects N FastAGI calls to a real ``AgiServer`` running the
real ``access`` route in its own process (so its RSS is the server's alone), or for the
baseline starts N ``python3 bench/classic_agi.py`` processes with the AGI environment on
stdin as ``AGI()`` does. Every command gets an instant scripted reply; GET DATA types the
card number, the PIN and the destination. Each call is held at its destination prompt until
all N are there; then the digits are sent, round 1 as a Poisson stream (``--rate`` per
second), round 2 all at once. Each call's Dial is held until all N are in Dial (the server's
RSS is read then), then answered NOANSWER; the caller asks for another call after round 1.

Ours runs as `ivr serve` runs (ivr.service.serve: gc.freeze after start-up, PIN checks on
their own two threads so scrypt's 16 MiB work areas stay in two malloc arenas). ``--mmap``
also pins ``MALLOC_MMAP_THRESHOLD_`` at 1 MiB, which hands those areas back to the OS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import platform
import random
import resource
import secrets
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLASSIC = HERE / "classic_agi.py"
DESTINATION = "2125550100"  # typed as a national US number; rated on prefix 1
BALANCE = Decimal("20.00")  # 33 minutes at the test plan's 0.60/min
WARMUP_CALLS = 20
MMAP_THRESHOLD = 1 << 20  # MALLOC_MMAP_THRESHOLD_ of the pinned server run
TARGET_P99_MS = 25.0
TARGET_KB_PER_CALL = 200.0
SETUP_COMMANDS = (
    "STREAM FILE you-have, SAY NUMBER, STREAM FILE minutes, STREAM FILE for-this-call, "
    "STREAM FILE connecting"
)
CALL_TIMEOUT = 120.0  # seconds a scenario may wait for its calls at any gate


# --------------------------------------------------------------------------- /proc


def proc_status_kb(pid: int, key: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def proc_pss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise KeyError("Pss")


def proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------- the server


def serve(spec: str) -> int:
    """The FastAGI server under test, in this (child) process: the real routes, no AMI
    controller, logging at INFO to stderr as `ivr serve` does. Prints its port; SIGTERM
    stops it."""
    from ivr.config import Settings
    from ivr.prompts import PromptStore, Voice, load_catalogue
    from ivr.service import serve as cli_serve
    from ivr.testing import free_port

    cfg = json.loads(spec)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(data_dir=Path(cfg["data_dir"]), database_url=cfg["database_url"],
                        access_languages="en", web_bind="")
    voice = Voice(load_catalogue(), PromptStore(Path(cfg["store"]), cfg["store"]))

    async def run() -> None:
        # The server exactly as `ivr serve` runs it. Its AMI port is one nobody listens on:
        # no controller events here (it keeps retrying in the background, as in production
        # with AMI down), so the live calls are still registered but never whispered to.
        port = free_port()
        await cli_serve(settings.replace(agi_port=port, ami_port=free_port()),
                        on_started=lambda: print(port, flush=True), voice=voice)

    if cfg.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
        try:
            asyncio.run(run())
        finally:
            profiler.disable()
            profiler.dump_stats(cfg["profile"])
    else:
        asyncio.run(run())
    return 0


# --------------------------------------------------------------------------- Asterisk's side


def header(i: int, tag: str, *, network: bool) -> bytes:
    env = {
        "request": "agi://127.0.0.1/access" if network else str(CLASSIC),
        "channel": f"PJSIP/caller-{tag}{i:05d}",
        "language": "en",
        "type": "PJSIP",
        "uniqueid": f"{tag}.{i}",
        "callerid": f"1555{i:07d}",
        "calleridname": "bench",
        "context": "ivr-access",
        "extension": "s",
        "priority": "1",
    }
    if network:
        env = {"network": "yes", "network_script": "access", **env}
    return "".join(f"agi_{k}: {v}\n" for k, v in env.items()).encode() + b"\n"


def reply_to(command: str, card: tuple[str, str]) -> str:
    """What a live channel answers (prompts play in no time, the caller types at once)."""
    verb = command.split(' "', 1)[0].split(" ")
    name = " ".join(verb[:2])
    if name == "GET DATA":
        if "enter-card-number" in command:
            return f"200 result={card[0]}"
        if "enter-pin" in command:
            return f"200 result={card[1]}"
        return "200 result= (timeout)"
    if name in ("STREAM FILE", "CONTROL STREAM"):
        return "200 result=0 endpos=100"
    if name == "GET VARIABLE":
        return "200 result=1 (NOANSWER)" if "DIALSTATUS" in command else "200 result=0"
    if name in ("SET VARIABLE", "DATABASE DEL", "DATABASE PUT", "HANGUP"):
        return "200 result=1"
    if name == "CHANNEL STATUS":
        return "200 result=6"
    return "200 result=0"  # ANSWER, SAY NUMBER, DATABASE GET (no record), EXEC others


@dataclass
class Calls:
    """N calls seen from Asterisk: each destination prompt and each Dial of a round is held
    until the coordinator lets it go."""

    cards: Sequence[tuple[str, str]]
    rounds: int
    cond: asyncio.Condition = field(default_factory=asyncio.Condition)
    ended: int = 0
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.cards)
        self.at_prompt = [0] * self.rounds
        self.in_dial = [0] * self.rounds
        self.digits_go = [[asyncio.Event() for _ in range(n)] for _ in range(self.rounds)]
        self.dial_go = [asyncio.Event() for _ in range(self.rounds)]
        self.setup: list[list[float | None]] = [[None] * n for _ in range(self.rounds)]

    async def _count(self, counter: list[int], r: int) -> None:
        async with self.cond:
            counter[r] += 1
            self.cond.notify_all()

    async def wait_all(self, counter: list[int], r: int, what: str) -> None:
        n = len(self.cards)
        async with self.cond:
            try:
                await asyncio.wait_for(
                    self.cond.wait_for(lambda: counter[r] + self.ended >= n), CALL_TIMEOUT)
            except TimeoutError:
                raise RuntimeError(f"round {r + 1}: only {counter[r]} of {n} calls reached "
                                   f"{what}; errors: {self.errors[:3]}") from None
        if counter[r] < n:
            raise RuntimeError(f"round {r + 1}: {n - counter[r]} call(s) ended before {what}; "
                               f"errors: {self.errors[:3]}")

    async def talk(self, i: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   head: bytes) -> None:
        """Play one call: header block, then a reply to each command until the end."""
        r, sent = 0, 0.0
        try:
            writer.write(head)
            await writer.drain()
            while True:
                line = await reader.readline()
                if not line:
                    break
                command = line.decode().rstrip("\n")
                if command.startswith("GET DATA") and "enter-destination" in command:
                    await self._count(self.at_prompt, r)
                    await self.digits_go[r][i].wait()
                    sent = time.perf_counter()
                    answer = f"200 result={DESTINATION}"
                elif command.startswith("EXEC") and command.split()[1].strip('"') == "Dial":
                    self.setup[r][i] = time.perf_counter() - sent
                    await self._count(self.in_dial, r)
                    await self.dial_go[r].wait()
                    r += 1
                    answer = "200 result=0"
                elif command.startswith("GET DATA") and "another-call" in command:
                    answer = "200 result=1" if r < self.rounds else "200 result= (timeout)"
                else:
                    answer = reply_to(command, self.cards[i])
                writer.write(answer.encode() + b"\n")
                await writer.drain()
            if r < self.rounds:
                self.errors.append(f"call {i} ended in round {r + 1}")
        except Exception as exc:  # reported with the round that could not complete
            self.errors.append(f"call {i}: {type(exc).__name__}: {exc}")
        finally:
            writer.close()
            async with self.cond:
                self.ended += 1
                self.cond.notify_all()

    async def coordinate(self, rate: float, rng: random.Random,
                         on_parked: Callable[[int], None]) -> None:
        """Round 1: digits as a Poisson stream of ``rate``/s; round 2 and on: all at once."""
        n = len(self.cards)
        for r in range(self.rounds):
            await self.wait_all(self.at_prompt, r, "the destination prompt")
            order = list(range(n))
            rng.shuffle(order)
            for i in order:
                if r == 0 and rate > 0:
                    await asyncio.sleep(rng.expovariate(rate))
                self.digits_go[r][i].set()
            await self.wait_all(self.in_dial, r, "Dial")
            on_parked(r)
            self.dial_go[r].set()

    def times_ms(self, r: int) -> list[float]:
        return sorted(t * 1000 for t in self.setup[r] if t is not None)


# --------------------------------------------------------------------------- the runs


@dataclass
class Result:
    label: str
    setup_ms: list[list[float]]  # per round, sorted
    kb_per_call: float
    cpu_ms_per_call: float
    note: str
    ours: bool = True


async def run_ours(label: str, url: str, cards: list[tuple[str, str]], store: Path, tmp: Path,
                   args: argparse.Namespace, *, pin_mmap: bool,
                   profile: str | None = None) -> Result:
    """Start the server, warm it up, then N calls of two rounds each."""
    cfg = {"database_url": url, "data_dir": str(tmp), "store": str(store), "profile": profile}
    env = dict(os.environ)
    if pin_mmap:
        env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    log_path = tmp / f"server-{secrets.token_hex(2)}.log"
    log = log_path.open("ab")  # noqa: ASYNC230 - before anything is timed
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve", json.dumps(cfg),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if not line.strip():
            raise RuntimeError(f"the server did not start: {log_path.read_text()[-2000:]}")
        port = int(line)

        async def batch(chosen: Sequence[tuple[str, str]], rounds: int, tag: str,
                        on_parked: Callable[[int], None]) -> Calls:
            calls = Calls(chosen, rounds)

            async def one(i: int) -> None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                await calls.talk(i, reader, writer, header(i, tag, network=True))

            talks = [asyncio.create_task(one(i)) for i in range(len(chosen))]
            await calls.coordinate(args.rate, random.Random(args.seed), on_parked)
            await asyncio.wait_for(asyncio.gather(*talks), CALL_TIMEOUT)
            return calls

        # Warm-up, all at once: imports, the rating cache, SQLAlchemy's statement caches,
        # the database connections, every worker thread (each has run a PIN check).
        await batch(cards[:WARMUP_CALLS], 1, f"w{secrets.token_hex(2)}", lambda r: None)
        await asyncio.sleep(0.5)
        idle_kb, cpu0 = proc_status_kb(proc.pid), proc_cpu_s(proc.pid)
        parked: dict[int, int] = {}

        def on_parked(r: int) -> None:
            parked[r] = proc_status_kb(proc.pid)

        calls = await batch(cards, 2, f"c{secrets.token_hex(2)}", on_parked)
        cpu = proc_cpu_s(proc.pid) - cpu0
        await asyncio.sleep(0.5)
        after_kb = proc_status_kb(proc.pid)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 30)
        log.close()
    n = len(cards)
    note = (f"server RSS {idle_kb / 1024:.1f} MB idle after {min(n, WARMUP_CALLS)} warm-up "
            f"calls, {parked[0] / 1024:.1f} MB with {n} calls in Dial (round 1), "
            f"{parked[1] / 1024:.1f} MB (round 2), {after_kb / 1024:.1f} MB after they ended")
    return Result(label, [calls.times_ms(0), calls.times_ms(1)], (parked[0] - idle_kb) / n,
                  cpu * 1000 / n, note)


async def run_classic(db_path: Path, cards: list[tuple[str, str]], tmp: Path,
                      args: argparse.Namespace) -> Result:
    log = (tmp / "classic.log").open("ab")  # noqa: ASYNC230 - before anything is timed

    async def batch(chosen: Sequence[tuple[str, str]], rounds: int, tag: str,
                    on_parked: Callable[[int], None], pids: list[int]) -> Calls:
        calls = Calls(chosen, rounds)

        async def one(i: int) -> None:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(CLASSIC), str(db_path), str(tmp / "pin.key"),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
            )
            pids.append(proc.pid)
            assert proc.stdin is not None and proc.stdout is not None
            await calls.talk(i, proc.stdout, proc.stdin, header(i, tag, network=False))
            await proc.wait()

        talks = [asyncio.create_task(one(i)) for i in range(len(chosen))]
        await calls.coordinate(args.rate, random.Random(args.seed), on_parked)
        await asyncio.wait_for(asyncio.gather(*talks), CALL_TIMEOUT)
        return calls

    rss: list[int] = []
    pss: list[int] = []
    pids: list[int] = []

    def on_parked(r: int) -> None:
        if r == 0:
            for pid in pids:
                rss.append(proc_status_kb(pid))
                pss.append(proc_pss_kb(pid))

    try:
        await batch(cards[:WARMUP_CALLS], 1, f"w{secrets.token_hex(2)}", lambda r: None, [])
        cpu0 = children_cpu_s()
        calls = await batch(cards, 2, f"c{secrets.token_hex(2)}", on_parked, pids)
        cpu = children_cpu_s() - cpu0
    finally:
        log.close()
    n = len(cards)
    note = (f"each process while in Dial: RSS {sum(rss) / n / 1024:.1f} MB, PSS "
            f"{sum(pss) / n / 1024:.1f} MB (shared pages split among them); the {n} "
            f"processes hold {sum(rss) / 1024:.0f} MB RSS, {sum(pss) / 1024:.0f} MB PSS")
    return Result("classic AGI, 1 process/call", [calls.times_ms(0), calls.times_ms(1)],
                  sum(rss) / n, cpu * 1000 / n, note, ours=False)


# --------------------------------------------------------------------------- set-up


def prepare_database(url: str, count: int, tmp: Path) -> list[tuple[str, str]]:
    """Schema, the test plan and ``count`` cards (one batch: the PIN hashes are made
    once, before anything is timed). Returns (card number, PIN) pairs."""
    from ivr.db import Database
    from ivr.db.migrate import upgrade
    from ivr.money.accounts import issue_cards
    from ivr.secrets import PIN_KEY_FILE, load_pin_keys
    from ivr.testing.access import PLAN, create_test_plan

    # The PIN key ring in the data directory, as `ivr cards issue` makes it: the server
    # (data_dir = tmp) and the classic script (given the file) check PINs under it.
    keys = load_pin_keys("", tmp / PIN_KEY_FILE)
    db = Database(url)
    try:
        upgrade(db.engine)
        create_test_plan(db)
        issued = issue_cards(db, PLAN, count, BALANCE, tmp / f"cards-{secrets.token_hex(4)}.csv",
                             pin_keys=keys)
    finally:
        db.dispose()
    return [(c.number, c.pin) for c in issued]


def copy_sqlite(source: Path, target: Path) -> None:
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    with dst:
        src.backup(dst)
    src.close()
    dst.close()


def prompt_store(tmp: Path) -> tuple[Path, str]:
    """The operator's prompt store when it is complete in English, else a store holding
    only a manifest (the flows read nothing else; this Asterisk plays nothing)."""
    from datetime import UTC, datetime

    from ivr.config import default_cache_dir
    from ivr.prompts import PromptStore, Version, load_catalogue
    from ivr.prompts.store import History

    catalogue = load_catalogue()
    operator = default_cache_dir() / "asterisk-sid/ivr/main/prompts"
    store = PromptStore(operator, str(operator))
    if store.manifest_path.is_file() and not store.missing(catalogue, ("en",)):
        return operator, f"the operator's store ({operator})"
    store = PromptStore(tmp / "prompts", str(tmp / "prompts"))
    stamp = datetime.now(UTC).isoformat()
    with store.update() as manifest:
        for prompt in catalogue:
            for lang in catalogue.languages:
                manifest.prompts.setdefault(prompt.id, {})[lang] = History(
                    1, [Version(1, "tts", stamp, 1.0)])
    return store.host_dir, "a manifest-only store (no audio: the fake Asterisk plays nothing)"


class Postgres:
    """A fresh database on the server an admin URL names; dropped on exit."""

    def __init__(self, admin_url: str) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url

        self.admin_url = make_url(admin_url)
        self.name = f"ivr_bench_{secrets.token_hex(4)}"
        self.admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        self.url = self.admin_url.set(database=self.name).render_as_string(hide_password=False)

    def __enter__(self) -> Postgres:
        from sqlalchemy import text

        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.name}"'))
        return self

    def __exit__(self, *exc: object) -> None:
        from sqlalchemy import text

        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self.admin.dispose()


# --------------------------------------------------------------------------- report


def fsync_probe(directory: Path, count: int = 100) -> list[float]:
    """Latency (ms, sorted) of a 4 KiB write + fsync in ``directory``: what each commit
    (SQLite WAL, synchronous=FULL) waits for at least."""
    path = directory / f"fsync-{secrets.token_hex(4)}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    times = []
    try:
        for _ in range(count):
            os.write(fd, b"x" * 4096)
            start = time.perf_counter()
            os.fsync(fd)
            times.append((time.perf_counter() - start) * 1000)
            time.sleep(0.002)
    finally:
        os.close(fd)
        path.unlink()
    return sorted(times)


def reservations(url: str) -> dict[str, int]:
    """Reservations by status: every call must have released its hold."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT status, count(*) FROM reservations GROUP BY status"))
            return {status: count for status, count in rows}
    finally:
        engine.dispose()


def nearest_rank(values: list[float], q: float) -> float:
    return values[max(0, math.ceil(q * len(values)) - 1)] if values else math.nan


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(args: argparse.Namespace, results: list[Result], *, store_note: str,
           prepare_s: float, fsync_ms: list[float], db_dir: Path, checks: list[str],
           elapsed: float) -> None:
    n = args.calls
    rounds = (f"paced {args.rate:g}/s", f"burst of {n}")
    print(f"call-setup bench: {n} calls in flight on the access line; {os.cpu_count()} CPUs "
          f"shared by this driver, the server and the scripts; Python "
          f"{platform.python_version()}, {platform.system()} {platform.release()}")
    print("ours: `ivr serve` (ivr.service.serve, the real routes) in its own process, logging INFO "
          "to a file; AMI pointed at a closed port, so the call controller registers calls "
          f"but gets no events; access_languages=en; prompts from {store_note}")
    print("classic: `python3 bench/classic_agi.py` forked per call as AGI() does (pyst2 over "
          "stdin/stdout, sqlite3 on a copy of the same fresh SQLite database)")
    print(f"SQLite files in {db_dir} (WAL, synchronous=FULL: an fsync per commit); fsync "
          f"there: p50 {nearest_rank(fsync_ms, 0.5):.2f} ms, p99 "
          f"{nearest_rank(fsync_ms, 0.99):.2f} ms, max {fsync_ms[-1]:.2f} ms")
    print(f"each side: {n} cards of {BALANCE} USD issued in one batch ({prepare_s:.1f} s, "
          f"not timed), {min(n, WARMUP_CALLS)} warm-up calls, then {n} calls at once")
    print("setup = the caller's last destination digit (GET DATA reply written) -> EXEC Dial "
          "read, timed by this driver. It covers normalise, rate + reserve (one DB "
          "transaction) and the instant round trips of \"you have N minutes for this call\", "
          f"\"connecting\": {SETUP_COMMANDS}. Ours then sends Dial, whose B() option sets "
          "the call's variables in Asterisk; the classic script sends 4 SET VARIABLEs first "
          "(9 round trips in all).")
    print(f"round 1: the {n} callers, all waiting at the destination prompt, type in a "
          f"Poisson stream of {args.rate:g}/s (seed {args.seed}); round 2 (another call): all "
          f"{n} at the same instant. Each Dial is held until all {n} calls are in Dial. "
          "p50/p99 by nearest rank.")
    print("KB/call: ours = server RSS growth (/proc VmRSS) from idle to all calls in Dial "
          "(round 1), / calls; classic = mean RSS of one process in Dial. CPU/call: the whole "
          "call (log-in and its keyed PIN check included), server process or all scripts."
          + (f" --mmap: the server ran with MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}."
             if args.mmap else ""))
    print()
    print(f"{'':36}{'':16}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}{'KB/call':>10}"
          f"{'CPU ms/call':>13}")
    for res in results:
        for r, name in enumerate(rounds):
            t = res.setup_ms[r]
            extra = f"{res.kb_per_call:>10,.0f}{res.cpu_ms_per_call:>13.1f}" if r == 0 else ""
            print(f"{res.label if r == 0 else '':36}{name:16}{nearest_rank(t, 0.5):>8.2f}"
                  f"{nearest_rank(t, 0.99):>8.2f}{(t[-1] if t else math.nan):>8.2f}{extra}")
    print(f"{'target':52}{'':8}{TARGET_P99_MS:>8g}{'':8}{TARGET_KB_PER_CALL:>10g}")
    print()
    for res in results:
        print(f"{res.label}: {res.note}")
    for line in checks:
        print(line)
    for res in results:
        if not res.ours:
            continue
        p99 = nearest_rank(res.setup_ms[0], 0.99)
        burst = nearest_rank(res.setup_ms[1], 0.99)
        print(f"{res.label}: p99 {p99:.1f} ms ({rounds[0]}) <= {TARGET_P99_MS:g} ms "
              f"{verdict(p99 <= TARGET_P99_MS)}; {res.kb_per_call:,.0f} KB/call <= "
              f"{TARGET_KB_PER_CALL:g} KB {verdict(res.kb_per_call <= TARGET_KB_PER_CALL)}; "
              f"(burst p99 {burst:.0f} ms)")
    print(f"whole run {elapsed:.0f} s")


# --------------------------------------------------------------------------- main


async def bench(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    args.db_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ivr-callsetup-", dir=args.db_dir) as name:
        tmp = Path(name)
        store, store_note = await asyncio.to_thread(prompt_store, tmp)
        fsync_ms = await asyncio.to_thread(fsync_probe, tmp)
        db_path = tmp / "ivr.sqlite3"
        url = f"sqlite:///{db_path}"
        t = time.perf_counter()
        cards = await asyncio.to_thread(prepare_database, url, args.calls, tmp)
        prepare_s = time.perf_counter() - t
        classic_db = tmp / "classic.sqlite3"
        await asyncio.to_thread(copy_sqlite, db_path, classic_db)
        results = [
            await run_ours("ours, SQLite", url, cards, store, tmp, args, pin_mmap=args.mmap,
                           profile=args.profile),
        ]
        checks = [f"ours, SQLite: reservations afterwards {reservations(url)}"]
        if args.database_url:
            with Postgres(args.database_url) as pg:
                pg_cards = await asyncio.to_thread(prepare_database, pg.url, args.calls, tmp)
                results.append(await run_ours("ours, PostgreSQL", pg.url, pg_cards,
                                              store, tmp, args, pin_mmap=args.mmap))
                checks.append(f"ours, PostgreSQL: reservations afterwards "
                              f"{reservations(pg.url)}")
        results.append(await run_classic(classic_db, cards, tmp, args))
        checks.append(f"classic: reservations afterwards "
                      f"{reservations(f'sqlite:///{classic_db}')}")
    report(args, results, store_note=store_note, prepare_s=prepare_s, fsync_ms=fsync_ms,
           db_dir=args.db_dir, checks=checks, elapsed=time.perf_counter() - start)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100, help="calls in flight (100)")
    parser.add_argument("--rate", type=float, default=50.0,
                        help="round 1: destination digits per second, Poisson (50)")
    parser.add_argument("--database-url",
                        help="also run ours on PostgreSQL: an admin URL of a server where a "
                        "fresh database is created and dropped (CREATEDB needed); the classic "
                        "baseline stays on SQLite")
    parser.add_argument("--db-dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the SQLite files go (default: the temp dir; try /dev/shm "
                        "to take the disk out)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--mmap", action="store_true",
                        help="run our server with MALLOC_MMAP_THRESHOLD_=1MiB")
    parser.add_argument("--profile", metavar="FILE",
                        help="cProfile the event-loop thread of the first server into FILE")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve(args.serve)
    if args.calls < 1 or args.rate <= 0:
        parser.error("--calls and --rate must be positive")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # 3 pipes per classic process, a socket per FastAGI call
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return asyncio.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())
