"""Revaluations bench (issue 13): mobile recharges per second through the revalue line's
service layer against the simulated HTTP operator answering in 50 ms, with p50/p99
latency and errors at several numbers of recharges in flight, and the money checked
afterwards; a code-mode run (codes from a pool, no operator) beside it.

    python bench/revalue.py [--levels 1,4,16,64] [--new-client-levels 1,4,16,64]
                            [--code-levels 1,4,16,64] [--duration 10] [--answer-ms 50]
                            [--customers 1000] [--codes 30000] [--db-dir DIR]
                            [--postgres postgresql+psycopg://USER:PASS@HOST/postgres]

The operator is `ivr operator-sim --answer-ms 50` in its own process on a free loopback
port, reached through ``HttpOperatorApi`` (the client the line uses, one pooled httpx
client, ``revalue_timeout`` 10 s). The database is a fresh SQLite file (and, with
``--postgres``, a fresh database on that server, dropped afterwards) opened as the server
opens it (``db_timeout`` 5 s, the ``Database.run`` worker threads), migrated, with
``--customers`` customers, each on its own account holding ``--balance``.

Each recharge is what the line does for a caller, in the same calls: ``service.request``
(record it and hold the amount, one transaction) then ``service.fulfil_direct`` (read the
request back, POST it to the operator, apply the answer: capture, one transaction). At
each level, that many callers recharge back to back for ``--duration`` seconds, each
time the next customer in turn; the latency is request() to the outcome, for the
recharges that end COMPLETED; anything else (an exception, or another outcome) is an
error, counted by kind. Three runs at each level: ``direct`` with one pooled client for
the whole run (as a long-lived server would keep it); ``direct/new client`` with a client
made and closed around each recharge, as ivr.flows.revalue's ``fulfil`` does today
(``OperatorInterface.client`` per call); ``code``: ``request`` then ``fulfil_code`` (a
code from the pool, decrypted, issued and the amount captured in one transaction).

Where the time goes: each recharge's time is split into the hold (request()), the
operator's round trip (timed around the client's ``recharge``) and the rest of fulfil
(the database work: reading the request back, settling the answer; and making and
closing the client in the new-client run). CPU: this
process (the service layer, its database threads and the HTTP client) and the
simulator's, per recharge, and the whole machine's busy share (/proc/stat; 200% is both
CPUs of a 2-core machine), the rest of which is other work.

The money at the end, per database: every COMPLETED or ISSUED revaluation has exactly
one REVALUATION ledger entry of -amount and the sum of them is -(captured x amount);
nothing is held (``reserved`` 0 on every account, no revaluation left unsettled); each
account's balance is the sum of its ledger; the simulator recharged as many as were
COMPLETED, and the pool issued as many codes as were ISSUED.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import math
import os
import platform
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from ivr.config import Settings  # noqa: E402
from ivr.db import Database  # noqa: E402
from ivr.db.migrate import upgrade  # noqa: E402
from ivr.db.models import (  # noqa: E402
    Account,
    Customer,
    EntryKind,
    LedgerEntry,
    RechargeCode,
    Revaluation,
)
from ivr.money.accounts import create_account  # noqa: E402
from ivr.money.rates_store import create_plan  # noqa: E402
from ivr.revalue import codes as codes_  # noqa: E402
from ivr.revalue.direct import HttpOperatorApi, RechargeAnswer, RechargeRequest  # noqa: E402
from ivr.revalue.service import (  # noqa: E402
    UNSETTLED,
    Mode,
    Outcome,
    State,
    fulfil_code,
    fulfil_direct,
    reconcile,
    request,
)

OPERATOR = "BenchOp"
CURRENCY = "USD"
PLAN = "bench"
WARMUP = 40  # recharges (direct, 8 in flight) before anything is timed
AMOUNT = Decimal("10")  # each recharge
# The runs: direct with one pooled HTTP client (as a long-lived server would hold it);
# direct with a client made and closed per recharge (as ivr.flows.revalue's fulfil does
# today); code mode (a code from the pool, no operator).
DIRECT, NEW_CLIENT, CODE = "direct", "direct/new client", "code"


# --------------------------------------------------------------------------- figures


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else math.nan


def proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (all CPUs), from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def fsync_probe(directory: Path, count: int = 100) -> list[float]:
    """Latency (ms) of a 4 KiB write + fsync in ``directory``: the least each SQLite
    commit waits for."""
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
    return times


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --------------------------------------------------------------------------- the operator


@contextmanager
def simulated_operator(answer_ms: int, log_path: Path) -> Iterator[tuple[str, int]]:
    """`ivr operator-sim` on a free loopback port in its own process: (base URL, pid)."""
    log = log_path.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ivr.cli", "operator-sim", "--bind", "127.0.0.1:0",
         "--answer-ms", str(answer_ms), "--name", OPERATOR],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        url = next((word for word in line.split() if word.startswith("http://")), "")
        if not url:
            raise RuntimeError(f"the simulated operator did not start: {line!r}, "
                               f"{log_path.read_text()[-1000:]}")
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def operator_recharges(url: str) -> int:
    """How many recharges the simulator has carried out (its control endpoint)."""
    return int(httpx.get(f"{url}/_control", timeout=5).json()["recharges"])


class TimedApi:
    """The line's operator client, with the time of each ``recharge`` round trip kept by
    request id (to split a recharge's time)."""

    def __init__(self, api: HttpOperatorApi, seconds: dict[str, float] | None = None) -> None:
        self.api = api
        self.seconds: dict[str, float] = {} if seconds is None else seconds

    async def recharge(self, req: RechargeRequest) -> RechargeAnswer:
        start = time.perf_counter()
        try:
            return await self.api.recharge(req)
        finally:
            self.seconds[req.request_id] = time.perf_counter() - start

    async def status(self, request_id: str) -> RechargeAnswer:
        return await self.api.status(request_id)


# --------------------------------------------------------------------------- the database


def prepare(db: Database, customers: int, balance: Decimal, pool: int, key: bytes,
            tmp: Path) -> list[int]:
    """Migrate, make the plan and the customers (one account each), load the pool."""
    upgrade(db.engine)
    now = datetime.now(UTC)
    ids = []
    with db.transaction() as s:
        create_plan(s, PLAN, CURRENCY)
        for i in range(customers):
            account = create_account(s, PLAN, balance=balance)
            row = Customer(msisdn=f"+1555{i:07d}", code_hash="not-used", mode="direct",
                           pay="account", account_id=account.id, language="en",
                           failures=0, locked=False, created_at=now)
            s.add(row)
            s.flush()
            ids.append(row.id)
    if pool:
        path = tmp / "codes.txt"
        with path.open("w") as f:
            for code in unique_codes(pool):
                f.write(code + "\n")
        codes_.import_codes(db, path, operator=OPERATOR, value=AMOUNT,
                            currency=CURRENCY, key=key, low_stock=0)
        path.unlink()
    return ids


def unique_codes(n: int) -> Iterator[str]:
    seen: set[str] = set()
    while len(seen) < n:
        code = "".join(secrets.choice("0123456789") for _ in range(16))
        if code not in seen:
            seen.add(code)
            yield code


@dataclass
class MoneyCheck:
    lines: list[str]
    ok: bool


def check_money(db: Database, amount: Decimal, *, completed: int, issued: int,
                sim_recharged: int) -> MoneyCheck:
    with db.reading() as s:
        states = dict(s.execute(select(Revaluation.state, func.count())
                                .group_by(Revaluation.state)).all())
        captured = states.get(State.COMPLETED.value, 0) + states.get(State.ISSUED.value, 0)
        entries, total, refs = s.execute(
            select(func.count(), func.coalesce(func.sum(LedgerEntry.amount), 0),
                   func.count(func.distinct(LedgerEntry.ref)))
            .where(LedgerEntry.kind == EntryKind.REVALUATION)).one()
        odd_entries = s.scalar(select(func.count()).select_from(LedgerEntry).where(
            LedgerEntry.kind == EntryKind.REVALUATION, LedgerEntry.amount != -amount))
        reserved = Decimal(s.scalar(select(func.coalesce(func.sum(Account.reserved), 0))) or 0)
        unsettled = sum(states.get(st.value, 0) for st in UNSETTLED)
        ledger = (select(LedgerEntry.account_id, func.sum(LedgerEntry.amount).label("total"))
                  .group_by(LedgerEntry.account_id).subquery())
        off_balance = s.scalar(select(func.count()).select_from(Account)
                               .join(ledger, ledger.c.account_id == Account.id)
                               .where(Account.balance != ledger.c.total))
        codes_issued = s.scalar(select(func.count()).select_from(RechargeCode)
                                .where(RechargeCode.status == codes_.ISSUED))
    total = Decimal(total)
    checks = [
        (f"revaluations by state {dict(sorted(states.items()))}", True),
        (f"COMPLETED + ISSUED {captured} == completed by the driver {completed} + issued "
         f"{issued}", captured == completed + issued),
        (f"REVALUATION entries {entries}, for {refs} distinct revaluations, == {captured} "
         "(each captured once)", entries == refs == captured),
        (f"sum of REVALUATION entries {total} == -{captured} x {amount} "
         f"({-captured * amount}); entries of another amount: {odd_entries}",
         total == -captured * amount and odd_entries == 0),
        (f"reserved on all accounts {reserved} == 0; unsettled revaluations "
         f"{unsettled} == 0", reserved == 0 and unsettled == 0),
        (f"accounts whose balance is not their ledger's sum: {off_balance}",
         off_balance == 0),
        (f"recharged by the simulator {sim_recharged} == COMPLETED "
         f"{states.get(State.COMPLETED.value, 0)}",
         sim_recharged == states.get(State.COMPLETED.value, 0)),
        (f"codes issued from the pool {codes_issued} == ISSUED "
         f"{states.get(State.ISSUED.value, 0)}",
         codes_issued == states.get(State.ISSUED.value, 0)),
    ]
    return MoneyCheck([("ok   " if ok else "FAIL ") + text for text, ok in checks],
                      all(ok for _, ok in checks))


# --------------------------------------------------------------------------- the runs


@dataclass
class Level:
    mode: str
    in_flight: int
    elapsed: float = 0.0
    total_s: list[float] = field(default_factory=list)  # completed recharges
    hold_s: list[float] = field(default_factory=list)
    operator_s: list[float] = field(default_factory=list)
    db_s: list[float] = field(default_factory=list)  # fulfil's database work
    errors: Counter[str] = field(default_factory=Counter)
    cpu_s: float = 0.0  # this process
    sim_cpu_s: float = 0.0
    machine_s: float = 0.0

    @property
    def done(self) -> int:
        return len(self.total_s)

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed else 0.0


class Driver:
    def __init__(self, db: Database, api: TimedApi, customers: list[int], key: bytes,
                 sim_pid: int) -> None:
        self.db, self.api, self.key, self.sim_pid = db, api, key, sim_pid
        self._next = itertools.cycle(customers)
        self.completed = self.issued = 0

    async def one(self, kind: str, level: Level) -> None:
        mode = Mode.CODE if kind == CODE else Mode.DIRECT
        start = time.perf_counter()
        try:
            held = await request(self.db, customer_id=next(self._next), amount=AMOUNT,
                                 operator=OPERATOR, mode=mode)
            hold = time.perf_counter() - start
            if held.state is not State.HELD:
                level.errors[f"{held.state}: {held.reason}"] += 1
                return
            if kind == DIRECT:
                out: Outcome = await fulfil_direct(self.db, self.api, held.request_id)
            elif kind == NEW_CLIENT:  # as the flow's fulfil does: a client per recharge
                api = TimedApi(HttpOperatorApi(self.api.api.base_url,
                                               timeout=self.api.api.timeout,
                                               operator=OPERATOR), self.api.seconds)
                try:
                    out = await fulfil_direct(self.db, api, held.request_id)
                finally:
                    await api.api.aclose()
            else:
                out = await fulfil_code(self.db, held.request_id, key=self.key, low_stock=0)
        except Exception as exc:  # counted: the bench goes on
            level.errors[type(exc).__name__] += 1
            return
        total = time.perf_counter() - start
        # Counted whatever the outcome, for the money check.
        self.completed += out.state is State.COMPLETED
        self.issued += out.state is State.ISSUED
        wanted = State.ISSUED if mode is Mode.CODE else State.COMPLETED
        if out.state is not wanted:
            level.errors[f"{out.state}: {out.reason}" if out.reason else str(out.state)] += 1
            return
        level.total_s.append(total)
        level.hold_s.append(hold)
        operator = self.api.seconds.pop(held.request_id, 0.0)
        level.operator_s.append(operator)
        level.db_s.append(total - hold - operator)

    async def level(self, kind: str, in_flight: int, duration: float) -> Level:
        level = Level(kind, in_flight)
        cpu0, sim0, busy0 = time.process_time(), proc_cpu_s(self.sim_pid), machine_busy_s()
        start = time.perf_counter()
        deadline = start + duration

        async def caller() -> None:
            while time.perf_counter() < deadline:
                await self.one(kind, level)

        await asyncio.gather(*(caller() for _ in range(in_flight)))
        level.elapsed = time.perf_counter() - start
        level.cpu_s = time.process_time() - cpu0
        level.sim_cpu_s = proc_cpu_s(self.sim_pid) - sim0
        level.machine_s = machine_busy_s() - busy0
        return level

    async def warm_up(self) -> None:
        level = Level("warm-up", 8)
        await asyncio.gather(*(self.one(DIRECT, level) for _ in range(WARMUP)))
        if level.errors:
            raise RuntimeError(f"warm-up failed: {dict(level.errors)}")


@dataclass
class DbRun:
    label: str
    levels: list[Level]
    check: MoneyCheck
    prepare_s: float
    reconciled: int


async def run_database(label: str, url: str, args: argparse.Namespace, sim_url: str,
                       sim_pid: int, tmp: Path, emit: Callable[[str], None]) -> DbRun:
    settings = Settings()
    key = secrets.token_bytes(32)
    db = Database(url, timeout=settings.db_timeout)
    try:
        started = time.perf_counter()
        pool = args.codes if args.code_levels else 0
        customers = await asyncio.to_thread(prepare, db, args.customers, args.balance, pool,
                                            key, tmp)
        prepare_s = time.perf_counter() - started
        emit(f"{label}: {args.customers} customers and {pool} codes ready in "
             f"{prepare_s:.1f} s")
        sim_before = await asyncio.to_thread(operator_recharges, sim_url)
        async with HttpOperatorApi(sim_url, timeout=settings.revalue_timeout,
                                   operator=OPERATOR) as http:
            api = TimedApi(http)
            driver = Driver(db, api, customers, key, sim_pid)
            await driver.warm_up()
            levels = []
            runs = [(DIRECT, n) for n in args.levels] + \
                   [(NEW_CLIENT, n) for n in args.new_client_levels] + \
                   [(CODE, n) for n in args.code_levels]
            for kind, n in runs:
                level = await driver.level(kind, n, args.duration)
                levels.append(level)
                emit(f"{label}: {kind} x{n}: {level.rate:.1f}/s, p99 "
                     f"{nearest_rank(level.total_s, 0.99) * 1000:.0f} ms, errors "
                     f"{sum(level.errors.values())} (load average {load_average()})")
            # Anything left held (an error after the operator answered) is settled as the
            # reconciler of `ivr serve` would, from the operator's status.
            settled = await reconcile(db, {OPERATOR: http}, older_than=timedelta(0))
            driver.completed += sum(o.state is State.COMPLETED for o in settled)
        sim_recharged = await asyncio.to_thread(operator_recharges, sim_url) - sim_before
        check = await asyncio.to_thread(check_money, db, AMOUNT, completed=driver.completed,
                                        issued=driver.issued, sim_recharged=sim_recharged)
        return DbRun(label, levels, check, prepare_s, len(settled))
    finally:
        db.engine.dispose()


# --------------------------------------------------------------------------- report


def ms(values: list[float], q: float) -> str:
    return f"{nearest_rank(values, q) * 1000:.1f}" if values else "-"


def report(args: argparse.Namespace, runs: list[DbRun], *, fsync_ms: list[float],
           loads: tuple[str, str], elapsed: float) -> None:
    print()
    print(f"revaluations bench: {os.cpu_count()} CPUs shared by this driver (the service "
          f"layer, its database threads, the HTTP client), the simulated operator and any "
          f"other work; Python {platform.python_version()}, {platform.system()} "
          f"{platform.release()}")
    print(f"operator: `ivr operator-sim --answer-ms {args.answer_ms}` in its own process "
          "(approve), reached by HttpOperatorApi on loopback; amount "
          f"{AMOUNT} {CURRENCY} per recharge, paid from the account, no loyalty rates; "
          f"logging INFO to a file")
    print(f"database: opened as the server does (db_timeout {Settings().db_timeout:g} s, "
          f"Database.run's worker threads); SQLite in {args.db_dir} (WAL, an fsync per "
          f"commit; fsync there p50 {nearest_rank(fsync_ms, 0.5):.2f} ms, p99 "
          f"{nearest_rank(fsync_ms, 0.99):.2f} ms)")
    print(f"{args.customers} customers, {WARMUP} warm-up recharges, then each level for "
          f"{args.duration:g} s; latency request() -> outcome of the recharges that "
          "completed (nearest rank); hold = request(), operator = the HTTP round trip, "
          "rest = the rest of fulfil (read back + settle, and the client's making in the "
          "new-client run)")
    print("CPU per recharge: this process (user + system, all its threads) and the "
          "simulator's; ours: both as a share of one CPU; machine: every process's busy "
          "share (200% = both CPUs), the rest of it other work")
    print(f"load average at the start {loads[0]}, at the end {loads[1]}")
    head = (f"{'':12}{'run':19}{'in flight':>10}{'done':>7}{'per s':>8}{'p50 ms':>8}"
            f"{'p99 ms':>8}{'errors':>7}{'hold p50/p99':>15}{'operator p50/p99':>18}"
            f"{'rest p50/p99':>15}{'CPU ms/rch':>12}{'sim ms/rch':>11}{'ours':>6}"
            f"{'machine':>9}")
    for run in runs:
        print()
        print(head)
        for lv in run.levels:
            n = max(1, lv.done + sum(lv.errors.values()))
            ours = (lv.cpu_s + lv.sim_cpu_s) / lv.elapsed * 100
            print(f"{run.label:12}{lv.mode:19}{lv.in_flight:>10}{lv.done:>7}{lv.rate:>8.1f}"
                  f"{ms(lv.total_s, 0.5):>8}{ms(lv.total_s, 0.99):>8}"
                  f"{sum(lv.errors.values()):>7}"
                  f"{ms(lv.hold_s, 0.5) + '/' + ms(lv.hold_s, 0.99):>15}"
                  f"{ms(lv.operator_s, 0.5) + '/' + ms(lv.operator_s, 0.99):>18}"
                  f"{ms(lv.db_s, 0.5) + '/' + ms(lv.db_s, 0.99):>15}"
                  f"{lv.cpu_s * 1000 / n:>12.2f}{lv.sim_cpu_s * 1000 / n:>11.2f}"
                  f"{ours:>5.0f}%{lv.machine_s / lv.elapsed * 100:>8.0f}%")
        for lv in run.levels:
            if lv.errors:
                print(f"  {run.label} {lv.mode} x{lv.in_flight} errors: {dict(lv.errors)}")
        print(f"money check, {run.label} (after {run.reconciled} settled by the reconciler): "
              + ("PASS" if run.check.ok else "FAIL"))
        for line in run.check.lines:
            print(f"  {line}")
    print(f"whole run {elapsed:.0f} s")


# --------------------------------------------------------------------------- main


async def bench(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    load0 = load_average()
    args.db_dir.mkdir(parents=True, exist_ok=True)

    def emit(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="ivr-revalue-", dir=args.db_dir) as name:
        tmp = Path(name)
        logging.basicConfig(filename=tmp / "bench.log", level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("alembic").setLevel(logging.WARNING)
        fsync_ms = await asyncio.to_thread(fsync_probe, tmp)
        with simulated_operator(args.answer_ms, tmp / "operator.log") as (sim_url, sim_pid):
            emit(f"simulated operator at {sim_url}; load average {load0}")
            runs = [await run_database("SQLite", f"sqlite:///{tmp}/ivr.sqlite3", args,
                                       sim_url, sim_pid, tmp, emit)]
            if args.postgres:
                from ivr.testing.postgres import fresh_postgres_database

                os.environ["IVR_TEST_POSTGRES_URL"] = args.postgres
                with fresh_postgres_database() as url:
                    runs.append(await run_database("PostgreSQL", url, args, sim_url,
                                                   sim_pid, tmp, emit))
    report(args, runs, fsync_ms=fsync_ms, loads=(load0, load_average()),
           elapsed=time.perf_counter() - start)
    return 0 if all(run.check.ok for run in runs) else 1


def levels_arg(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not numbers separated by commas: {text!r}") from None
    if any(n < 1 for n in levels):
        raise argparse.ArgumentTypeError("levels are 1 or more")
    return levels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--levels", type=levels_arg, default=[1, 4, 16, 64],
                        help="direct mode: recharges in flight, one run each (1,4,16,64)")
    parser.add_argument("--new-client-levels", type=levels_arg, default=[1, 4, 16, 64],
                        help="direct mode with a new HTTP client per recharge, as the "
                        "line's flow makes one ('' for none; 1,4,16,64)")
    parser.add_argument("--code-levels", type=levels_arg, default=[1, 4, 16, 64],
                        help="code mode: recharges in flight ('' for none; 1,4,16,64)")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds per level (10)")
    parser.add_argument("--answer-ms", type=int, default=50,
                        help="the simulated operator's answer time (50)")
    parser.add_argument("--customers", type=int, default=1000,
                        help="customers, one account each, taken in turn (1000)")
    parser.add_argument("--balance", type=Decimal, default=Decimal(100_000),
                        help="each account's opening balance, USD (100000)")
    parser.add_argument("--codes", type=int, default=30_000,
                        help="recharge codes in the pool for the code mode (30000)")
    parser.add_argument("--db-dir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the SQLite file goes (default: the temp dir)")
    parser.add_argument("--postgres", metavar="URL",
                        help="also run on PostgreSQL: a server URL as scripts/postgres-up "
                        "prints it (a fresh database is made there and dropped)")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.customers < 1 or args.answer_ms < 0:
        parser.error("--duration and --customers must be positive, --answer-ms 0 or more")
    return asyncio.run(bench(args))


if __name__ == "__main__":
    sys.exit(main())
