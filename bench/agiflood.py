"""FastAGI flood bench: the server's memory, CPU and event-loop lag under hostile peers.

    python bench/agiflood.py [--before DIR] [--connections 500] [--lines 195]
                             [--line-bytes 7000] [--after 30] [--line-mb 120] [--usage-mb 300]

Each scenario starts a fresh ``AgiServer`` (one dummy route, settings' defaults) in its own
process, so the RSS read from /proc is the server's alone, and plays the peer over loopback:

- **flood**: ``--connections`` connections at once, each sending ``--lines`` header lines of
  ``--line-bytes`` bytes and never the blank line that ends the block, then waiting for the
  server to close it (bounded by ``--flood-timeout``). RSS is sampled every 50 ms: idle,
  peak during the flood, 1 s and ``--after`` s after the last connection closed.
- **long line**: one call; its first command is answered with ``520-`` and then
  ``--line-mb`` MB without a newline. Server CPU time and the worst event-loop lag
  (a 10 ms ticker in the server) while the bytes go in.
- **long 520**: one call; its first command is answered with ``520-`` and ``--usage-mb`` MB
  of 1 kB usage lines, then ``520 End``. Peak RSS.

``--before DIR`` runs the same scenarios against another checkout too (its ``ivr`` package
first on ``sys.path``) and prints both side by side, e.g. the code before the limits::

    git archive c159779 ivr | tar -x -C /tmp/agi-before
    python bench/agiflood.py --before /tmp/agi-before
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CHUNK = 64 * 1024
USAGE_LINE = b" " + b"u" * 1022 + b"\n"


# ------------------------------------------------------------------ the server process


def serve(log_file: str) -> None:
    """Child process: an AgiServer with a dummy route; prints its port, then answers
    ``stats`` lines on stdin with one JSON line."""
    import logging

    from ivr.agi import AgiServer

    logging.basicConfig(filename=log_file, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    lag = {"max": 0.0}

    async def route(call: object) -> None:
        await call.command("GET VARIABLE", "X")  # type: ignore[attr-defined]

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(0.01)
            lag["max"] = max(lag["max"], loop.time() - start - 0.01)

    async def main() -> None:
        accepted = inspect.signature(AgiServer).parameters
        kwargs = {k: v for k, v in json.loads(os.environ.get("AGIFLOOD_KWARGS", "{}")).items()
                  if k in accepted}
        server = AgiServer({"dummy": route}, "127.0.0.1", 0, **kwargs)
        await server.start()
        asyncio.ensure_future(ticker())
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def control() -> None:
            for line in sys.stdin:
                if line.strip() == "stats":
                    stats = {k: v for k, v in vars(server.stats).items() if k != "refusals"}
                    print(json.dumps({"lag_ms": lag["max"] * 1000, "stats": stats}), flush=True)
                elif line.strip() == "reset":
                    lag["max"] = 0.0
                    print("{}", flush=True)
            loop.call_soon_threadsafe(done.set_result, None)

        threading.Thread(target=control, daemon=True).start()
        print(f"port {server.port}", flush=True)
        await done

    asyncio.run(main())


@dataclass
class Server:
    tree: Path
    kwargs: dict[str, object] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None
    port: int = 0
    log_file: str = ""
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        fd, self.log_file = tempfile.mkstemp(prefix="agiflood-", suffix=".log")
        os.close(fd)
        env = dict(os.environ, PYTHONPATH=str(self.tree),
                   AGIFLOOD_KWARGS=json.dumps(self.kwargs))
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve", self.log_file],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=self.tree)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline().split()[1])
        threading.Thread(target=self._sample, daemon=True).start()
        time.sleep(0.5)

    def _sample(self) -> None:
        assert self.proc is not None
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.samples.append((time.monotonic(), self.rss_kb()))
            time.sleep(0.05)

    def rss_kb(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def cpu_s(self) -> float:
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_kb(self, since: float) -> int:
        return max((kb for t, kb in self.samples if t >= since), default=0)

    def ask(self, command: str) -> dict[str, object]:
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def log_lines(self, word: str) -> int:
        return sum(word in line for line in Path(self.log_file).read_text().splitlines())

    def stop(self) -> None:
        self._stop.set()
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(OSError):
            os.unlink(self.log_file)


@contextlib.contextmanager
def running(tree: Path, **kwargs: object) -> Iterator[Server]:
    server = Server(tree, kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ------------------------------------------------------------------ the peers


def header(script: str) -> bytes:
    return (f"agi_network: yes\nagi_network_script: {script}\nagi_uniqueid: 1.1\n"
            f"agi_channel: Local/s@x-1;1\n\n").encode()


async def flood_one(port: int, payload: bytes, timeout: float) -> str:
    """Send the header lines; wait until the server closes. 'refused' if closed at once."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return "connect failed"
    outcome = "closed by server"
    try:
        writer.write(payload)
        await writer.drain()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader.read(), timeout)
            return outcome
        outcome = "still open"
    except OSError:
        outcome = "closed by server"
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return outcome


async def answer_first_command(port: int, body: Iterator[bytes]) -> str:
    """One call: read the first command, answer with ``body``; how it ended."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(header("dummy"))
    await reader.readline()
    outcome = "all sent"
    try:
        for chunk in body:
            writer.write(chunk)
            await writer.drain()
    except OSError:
        outcome = "closed by server"
    with contextlib.suppress(Exception):
        await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return outcome


def long_line(mb: int) -> Iterator[bytes]:
    yield b"520-Invalid command syntax.  Proper usage follows:\n"
    block = b"x" * CHUNK
    for _ in range(mb * 1024 * 1024 // CHUNK):
        yield block


def long_usage(mb: int) -> Iterator[bytes]:
    yield b"520-Invalid command syntax.  Proper usage follows:\n"
    block = USAGE_LINE * (CHUNK // len(USAGE_LINE))
    for _ in range(mb * 1024 * 1024 // len(block)):
        yield block
    yield b"520 End of proper usage.\n"


# ------------------------------------------------------------------ scenarios


def flood(tree: Path, args: argparse.Namespace) -> dict[str, object]:
    line = b"a" * (args.line_bytes - len("agi_x000: \n"))
    payload = b"".join(b"agi_x%03d: %s\n" % (i, line) for i in range(args.lines))
    with running(tree) as server:
        idle = server.rss_kb()
        server.ask("reset")
        start = time.monotonic()

        async def go() -> list[str]:
            return await asyncio.gather(*(flood_one(server.port, payload, args.flood_timeout)
                                          for _ in range(args.connections)))

        outcomes = asyncio.run(go())
        closed = time.monotonic()
        peak = server.peak_kb(start)
        time.sleep(1)
        after1 = server.rss_kb()
        time.sleep(max(args.after - 1, 0))
        after = server.rss_kb()
        info = server.ask("stats")
        stats = info["stats"]
        assert isinstance(stats, dict)
        return {
            "idle MB": idle / 1024, "peak MB": peak / 1024, "1 s after MB": after1 / 1024,
            f"{args.after:g} s after MB": after / 1024, "flood s": closed - start,
            "loop lag ms": info["lag_ms"], "accepted": stats["accepted"],
            "refused": stats["refused"],
            "refused at once": stats.get("refused_busy", 0) + stats.get("refused_peer", 0),
            "still open": outcomes.count("still open"),
            "refusal log lines": server.log_lines("refused"),
        }


def one_call(tree: Path, body: Iterator[bytes]) -> dict[str, object]:
    with running(tree) as server:
        idle = server.rss_kb()
        server.ask("reset")
        cpu = server.cpu_s()
        start = time.monotonic()
        outcome = asyncio.run(answer_first_command(server.port, body))
        wall = time.monotonic() - start
        time.sleep(0.2)
        info = server.ask("stats")
        return {"idle MB": idle / 1024, "peak MB": server.peak_kb(start) / 1024,
                "server CPU s": server.cpu_s() - cpu, "loop lag ms": info["lag_ms"],
                "wall s": wall, "peer": outcome}


def run_all(tree: Path, args: argparse.Namespace) -> dict[str, dict[str, object]]:
    results = {}
    print(f"  {tree}: flood ...", file=sys.stderr, flush=True)
    results["flood"] = flood(tree, args)
    print(f"  {tree}: long line ...", file=sys.stderr, flush=True)
    results[f"{args.line_mb} MB line without newline"] = one_call(tree, long_line(args.line_mb))
    print(f"  {tree}: long 520 ...", file=sys.stderr, flush=True)
    results[f"{args.usage_mb} MB of 520 usage lines"] = one_call(tree, long_usage(args.usage_mb))
    return results


def show(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}"
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", metavar="LOG", help=argparse.SUPPRESS)
    parser.add_argument("--before", type=Path, help="another checkout to compare with")
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--lines", type=int, default=195)
    parser.add_argument("--line-bytes", type=int, default=7000)
    parser.add_argument("--flood-timeout", type=float, default=30.0)
    parser.add_argument("--after", type=float, default=30.0)
    parser.add_argument("--line-mb", type=int, default=120)
    parser.add_argument("--usage-mb", type=int, default=300)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    trees = {"now": ROOT}
    if args.before:
        trees = {"before": args.before.resolve(), "now": ROOT}
    print(f"agiflood: Python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"Linux {platform.release()}; {args.connections} connections x {args.lines} header "
          f"lines of {args.line_bytes} B; RSS from /proc/PID/status (VmRSS) every 50 ms")
    results = {name: run_all(tree, args) for name, tree in trees.items()}
    first = next(iter(results.values()))
    for scenario, figures in first.items():
        print(f"\n{scenario}")
        print(f"  {'':24}" + "".join(f"{name:>18}" for name in results))
        for key in figures:
            row = "".join(f"{show(results[n][scenario].get(key, '')):>18}" for n in results)
            print(f"  {key:24}{row}")


if __name__ == "__main__":
    main()
