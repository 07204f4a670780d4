"""Where a paid call's CPU goes in the server, without Asterisk: N calls, one after the
other, through the real ``access`` route on a FastAGI server in this process, each
played by the scripted fake Asterisk (ivr.testing.scripted: instant replies; card, PIN
and destination typed; one call answered for 42 s; settled). Every database step the
flow hands to a worker thread (``Database.run``) is counted and its CPU on that thread
measured; the event loop's thread is measured whole (it also runs the fake Asterisk).

    python bench/callcpu.py [--calls 200] [--postgres]

Cards are issued under the PIN key ring, as `ivr cards issue` does, so log-ins check
keyed hashes. SQLite in a temporary directory, or with ``--postgres`` a fresh database
on the PostgreSQL of IVR_TEST_POSTGRES_URL (scripts/postgres-up prints it), dropped after.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ivr.db.engine as engine  # noqa: E402
from ivr.agi import AgiServer  # noqa: E402
from ivr.app import App  # noqa: E402
from ivr.config import load_settings  # noqa: E402
from ivr.money.accounts import issue_cards  # noqa: E402
from ivr.prompts import PromptStore, Voice, load_catalogue  # noqa: E402
from ivr.prompts.build import build  # noqa: E402
from ivr.testing.access import PLAN, create_test_plan  # noqa: E402
from ivr.testing.scripted import Line, Outcome, ScriptedCaller  # noqa: E402

DESTINATION = "12125550100"


class StepMeter:
    """Wraps run_bounded: per database step, how many, CPU on its worker thread, wall."""

    def __init__(self) -> None:
        self.steps: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0, 0.0])
        self._run = engine.run_bounded

    def install(self) -> None:
        run = self._run
        steps = self.steps

        async def metered(timeout: float | None, func: Any, /, *args: Any,
                          **kwargs: Any) -> Any:
            name = getattr(func, "__qualname__", repr(func))
            cpu = [0.0]

            def on_thread() -> Any:
                began = time.thread_time()
                try:
                    return func(*args, **kwargs)
                finally:
                    cpu[0] = time.thread_time() - began

            began = time.perf_counter()
            try:
                return await run(timeout, on_thread)
            finally:
                entry = steps[name]
                entry[0] += 1
                entry[1] += cpu[0]
                entry[2] += time.perf_counter() - began

        engine.run_bounded = metered


def caller(number: str, pin: str) -> ScriptedCaller:
    return ScriptedCaller({"enter-card-number": [number], "enter-pin": [pin],
                           "enter-destination": [DESTINATION]},
                          dials=[Outcome.answered(42)])


async def run(args: argparse.Namespace, tmp: Path) -> None:
    store = PromptStore(tmp / "prompts", str(tmp / "prompts"))
    build(load_catalogue(), store, langs=("en",), progress=False)
    changes: dict[str, Any] = {"data_dir": tmp / "data", "access_languages": "en"}
    if args.database_url:
        changes["database_url"] = args.database_url
    settings = load_settings(environ={}).replace(**changes)
    app = await asyncio.to_thread(App.build, settings,
                                  voice=Voice(load_catalogue(), store))
    await asyncio.to_thread(create_test_plan, app.db)
    server = AgiServer(app.routes(), "127.0.0.1", 0)
    await server.start()
    line = Line(app, server)
    cards = issue_cards(app.db, PLAN, args.calls + 5, Decimal("500.00"), tmp / "cards.csv",
                        pin_keys=app.pin_keys)
    meter = StepMeter()
    meter.install()
    try:
        for i, card in enumerate(cards[:5]):  # warm-up: caches, compiled statements
            await line.call(caller(card.number, card.pin), uniqueid=f"1600000000.{i}")
        meter.steps.clear()
        loop0, process0, wall0 = time.thread_time(), time.process_time(), time.perf_counter()
        for i, card in enumerate(cards[5:]):
            await line.call(caller(card.number, card.pin), uniqueid=f"1700000000.{i}")
        n = args.calls
        loop = (time.thread_time() - loop0) * 1000 / n
        process = (time.process_time() - process0) * 1000 / n
        wall = (time.perf_counter() - wall0) * 1000 / n
    finally:
        await server.shutdown(grace=1)
        await app.close()
        app.dispose()
    backend = "PostgreSQL" if args.database_url else "SQLite"
    print(f"callcpu: {n} paid calls one after the other, {backend}; Python "
          f"{sys.version.split()[0]}")
    print(f"per call: process CPU {process:.2f} ms (the fake Asterisk included), event "
          f"loop's thread {loop:.2f} ms (the same), wall {wall:.1f} ms")
    print(f"{'database step':<28}{'per call':>9}{'CPU ms':>9}{'wall ms':>9}")
    total = 0.0
    for name, (count, cpu, spent) in sorted(meter.steps.items(), key=lambda kv: -kv[1][1]):
        total += cpu
        print(f"{name:<28}{count / n:>9.2f}{cpu * 1000 / n:>9.3f}{spent * 1000 / n:>9.3f}")
    print(f"{'all, on worker threads':<28}{'':>9}{total * 1000 / n:>9.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--postgres", action="store_true",
                        help="a fresh database on IVR_TEST_POSTGRES_URL's server")
    args = parser.parse_args()
    args.database_url = ""
    with tempfile.TemporaryDirectory(prefix="ivr-callcpu-") as tmp:
        if args.postgres:
            from sqlalchemy import create_engine

            from ivr.db.migrate import upgrade
            from ivr.testing.postgres import fresh_postgres_database

            with fresh_postgres_database() as url:
                args.database_url = url
                schema = create_engine(url)
                upgrade(schema)
                schema.dispose()
                asyncio.run(run(args, Path(tmp)))
        else:
            asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
