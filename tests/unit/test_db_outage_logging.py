"""A database outage in the server's background loops (the recovery sweep, the payment
reconciliation, the lease heartbeat): one warning line when it starts, one info line when
it ends, no traceback at every try."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from ivr import payments, service
from ivr.config import load_settings
from ivr.db import DatabaseUnavailable
from ivr.live.calls import CallController
from ivr.live.charging import Charging
from ivr.live.recovery import Recovery
from ivr.live.servers import keep_lease

FAILURES = 4


def pg_down() -> OperationalError:
    return OperationalError(
        "SELECT reservations.id FROM reservations WHERE reservations.status = %(status)s",
        {"status": "active"},
        Exception('connection to server at "127.0.0.1", port 5432 failed: Connection refused\n'
                  "\tIs the server running on that host and accepting TCP/IP connections?"))


class Flaky:
    """Fails ``FAILURES`` times with a database error, then works; ``done`` is set at the
    first success after them."""

    def __init__(self, error: Callable[[], Exception]) -> None:
        self.error = error
        self.calls = 0
        self.done = asyncio.Event()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls <= FAILURES:
            raise self.error()
        if self.calls == FAILURES + 2:  # one more, so "back" is logged only once
            self.done.set()
        return []


class ConnectedAmi:
    connected = True
    logins = 1

    def on_event(self, pattern: str, callback: Callable[[Any], Any]) -> Callable[[], None]:
        return lambda: None


class FakeDatabase:
    """Runs the work at once (the real one runs it on a bounded worker thread)."""

    async def run(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(func, Flaky):
            return 0  # the sweep's housekeeping (pruning old log-in failures): nothing to do
        return func(*args, **kwargs)


class FakeLedger:
    def __init__(self, open_reservations: Flaky) -> None:
        self.open_reservations = open_reservations
        self.db = FakeDatabase()


def assert_one_line_each(caplog: pytest.LogCaptureFixture, what: str) -> None:
    records = [r for r in caplog.records if r.name.startswith("ivr")]
    assert [(r.levelno, r.exc_info) for r in records] == [
        (logging.WARNING, None), (logging.INFO, None)], [r.getMessage() for r in records]
    down, back = (r.getMessage() for r in records)
    assert down.startswith(f"{what}: database unavailable") and "\n" not in down
    assert "Connection refused" in down and "SELECT" not in down
    assert back.startswith(f"{what}: database back after")


async def test_recovery_sweep_logs_an_outage_once(caplog):
    flaky = Flaky(pg_down)
    controller = CallController(ConnectedAmi(), Charging(FakeLedger(flaky)))  # type: ignore[arg-type]
    recovery = Recovery(controller)
    with caplog.at_level(logging.INFO):
        recovery.start(0.01)
        await asyncio.wait_for(flaky.done.wait(), 30)
        await recovery.close()
    assert_one_line_each(caplog, "recovery sweep")


async def test_payment_reconciliation_logs_an_outage_once(caplog, monkeypatch):
    flaky = Flaky(lambda: DatabaseUnavailable(f"database unavailable: {pg_down().orig}"))

    async def reconcile(*args: Any, **kwargs: Any) -> list[Any]:
        return flaky()  # type: ignore[no-any-return]

    monkeypatch.setattr(payments, "reconcile", reconcile)
    settings = load_settings(environ={}).replace(payment_reconcile_interval=0.01)
    app = SimpleNamespace(settings=settings, db=object(), gateway=object())
    with caplog.at_level(logging.INFO):
        task = asyncio.ensure_future(service.reconcile_payments(app))  # type: ignore[arg-type]
        await asyncio.wait_for(flaky.done.wait(), 30)
        task.cancel()
    assert_one_line_each(caplog, "payment reconciliation")


async def test_server_heartbeat_logs_an_outage_once(caplog):
    flaky = Flaky(pg_down)

    class FlakyLease:
        heartbeat = 0.01

        def beat(self, seen: Any) -> bool:
            flaky(seen)
            return True

    lost: list[datetime] = []
    with caplog.at_level(logging.INFO):
        task = asyncio.ensure_future(keep_lease(
            FlakyLease(), list, lambda: lost.append(datetime.now(UTC))))  # type: ignore[arg-type]
        await asyncio.wait_for(flaky.done.wait(), 30)
        task.cancel()
    assert_one_line_each(caplog, "server heartbeat")
    assert lost == []


async def test_other_errors_keep_their_traceback(caplog):
    flaky = Flaky(lambda: ValueError("a bug"))
    controller = CallController(ConnectedAmi(), Charging(FakeLedger(flaky)))  # type: ignore[arg-type]
    recovery = Recovery(controller)
    with caplog.at_level(logging.INFO):
        recovery.start(0.01)
        await asyncio.wait_for(flaky.done.wait(), 30)
        await recovery.close()
    failures = [r for r in caplog.records if r.name == "ivr.live.recovery"]
    assert len(failures) == FAILURES
    assert all(r.exc_info is not None for r in failures)
