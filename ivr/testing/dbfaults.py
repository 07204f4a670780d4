"""Databases that do not answer, for tests: an SQLite file whose write lock another
process holds, and a private PostgreSQL server that can be stopped (SIGSTOP).

The private server is made with initdb in a temporary directory, on a free port, and
removed afterwards; the shared one (IVR_TEST_POSTGRES_URL) is never touched. Run as
root, it runs as the ``postgres`` user, as PostgreSQL refuses root."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from . import free_port

# Holds an SQLite database's write lock until a line (or EOF) arrives on stdin.
_LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


@contextmanager
def sqlite_write_lock(path: Path) -> Iterator[None]:
    """Another process holds ``path``'s write lock (BEGIN IMMEDIATE) inside the block."""
    proc = subprocess.Popen([sys.executable, "-c", _LOCKER, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)


def postgres_bindir() -> Path:
    """The newest installed server's programs (Debian keeps them off PATH)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("no PostgreSQL server programs (initdb): run scripts/postgres-up")
    return Path(initdb).parent


@dataclass
class PrivatePostgres:
    url: str  # superuser ivr, trusted on 127.0.0.1
    data_dir: Path

    def pids(self) -> list[int]:
        """The postmaster and its children (backends and helpers)."""
        try:
            master = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        pids = [master]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with suppress(OSError, ValueError, IndexError):
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == master:
                    pids.append(int(stat.parent.name))
        return pids

    def stop_processes(self) -> None:
        """SIGSTOP the whole server (the postmaster first, so it forks no new backend):
        its sockets stay open and the kernel still acknowledges, but nothing answers."""
        for pid in self.pids():
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def resume_processes(self) -> None:
        for pid in self.pids():
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    bindir = postgres_bindir()
    base = Path(tempfile.mkdtemp(prefix="ivr-pg-"))
    as_owner: list[str] = []
    if os.getuid() == 0:
        shutil.chown(base, "postgres")
        as_owner = ["runuser", "-u", "postgres", "--"]
    data = base / "data"
    port = free_port()

    def run(*args: str) -> None:
        subprocess.run([*as_owner, *args], check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    server = PrivatePostgres(f"postgresql+psycopg://ivr@127.0.0.1:{port}/postgres", data)
    try:
        run(str(bindir / "initdb"), "-D", str(data), "-U", "ivr", "--auth=trust",
            "-E", "UTF8", "--no-sync")
        run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w",
            "-t", "60", "-o", f"-p {port} -k {base} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c max_connections=50", "start")
        yield server
    finally:
        server.resume_processes()
        with suppress(subprocess.CalledProcessError):
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)
