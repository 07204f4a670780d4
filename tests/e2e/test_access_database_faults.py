"""A database that does not answer, in a real Asterisk: the caller hears "service
unavailable" (ss-noservice) a few seconds after the step that needed it, whether the
SQLite file is locked by another process or the PostgreSQL server is stopped (SIGSTOP:
its sockets stay open and it enforces none of its own timeouts). The seconds each took
are printed (run with -s)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from ivr.live.recovery import Recovery
from ivr.testing.access import AccessLine, Caller, account_state, cdrs, open_reservations
from ivr.testing.dbfaults import PrivatePostgres, private_postgres, sqlite_write_lock
from ivr.testing.phone import Call, Phone

pytestmark = pytest.mark.asterisk

NOSERVICE = ("Playback", "ss-noservice")
# From the caller's last key to "service unavailable": db_timeout (5 s) and the time
# the dialplan takes to start the prompt.
BOUND = 10.0
# How long the test itself waits for it: a step that ignores its timeout fails the test
# rather than hanging it (without the timeouts: ~30 s on SQLite, forever on PostgreSQL).
NEVER = 60.0


async def seconds_until_unavailable(call: Call, digits: str) -> float:
    await call.send_dtmf(digits)
    typed = time.monotonic()
    await call.wait_for(lambda c: NOSERVICE in c.applications, NEVER, "service unavailable")
    return time.monotonic() - typed


async def test_a_locked_sqlite_database_gives_service_unavailable_in_seconds(
    access_line: AccessLine, phone: Phone
):
    card = access_line.card("5.00")
    path = Path(access_line.db.url.removeprefix("sqlite:///"))
    call = await phone.call("ivr-access", callerid="15550009999")
    caller = Caller(call)
    await caller.answer("enter-card-number", card.number + "#")
    await caller.wait_prompt("enter-pin")
    with sqlite_write_lock(path):  # e.g. an operator's sqlite3 shell in a transaction
        waited = await seconds_until_unavailable(call, card.pin + "#")
    await call.wait_ended()
    await access_line.server.wait_idle()
    print(f"\nSQLite locked: service unavailable {waited:.1f} s after the PIN")
    assert waited < BOUND
    assert "enter-destination" not in caller.heard
    assert access_line.server.stats.failed == 1
    assert cdrs(access_line) == [] and open_reservations(access_line) == []


@pytest.fixture
def private_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[PrivatePostgres]:
    """A PostgreSQL of this test's own, which it may stop; the access line's database is
    made on it."""
    with private_postgres() as server:
        monkeypatch.setenv("IVR_TEST_POSTGRES_URL", server.url)
        yield server


@pytest.mark.postgres
@pytest.mark.parametrize("access_line", [{"database": "postgres"}], indirect=True)
async def test_a_stopped_postgres_gives_service_unavailable_in_seconds(
    private_server: PrivatePostgres, access_line: AccessLine, phone: Phone
):
    assert access_line.db.url.split("@")[1].split("/")[0] == private_server.url.split("@")[1] \
        .split("/")[0]
    card = access_line.card("5.00")
    call = await phone.call("ivr-access", callerid="15550009999")
    caller = Caller(call)
    await caller.answer("enter-card-number", card.number + "#")
    await caller.wait_prompt("enter-pin")
    private_server.stop_processes()
    try:
        waited = await seconds_until_unavailable(call, card.pin + "#")
        await call.wait_ended()
    finally:
        private_server.resume_processes()
    await access_line.server.wait_idle()
    print(f"\nPostgreSQL stopped: service unavailable {waited:.1f} s after the PIN")
    assert waited < BOUND
    assert "enter-destination" not in caller.heard
    assert access_line.server.stats.failed == 1
    assert cdrs(access_line) == [] and open_reservations(access_line) == []


@pytest.mark.postgres
@pytest.mark.parametrize("access_line", [{"database": "postgres"}], indirect=True)
async def test_a_reservation_committed_after_the_caller_gave_up_is_released(
    private_server: PrivatePostgres, access_line: AccessLine, phone: Phone
):
    # PostgreSQL stops while the call is being reserved: the caller hears "service
    # unavailable"; when it runs again the abandoned authorize commits its hold anyway,
    # and the recovery sweep gives the money back (the flow left the call unclaimed).
    card = access_line.card("5.00")
    call = await phone.call("ivr-access", callerid="15550009999")
    caller = Caller(call)
    await caller.log_in(card)
    await caller.wait_prompt("enter-destination")
    private_server.stop_processes()
    try:
        waited = await seconds_until_unavailable(call, "9996021234#")
        await call.wait_ended()
    finally:
        private_server.resume_processes()
    await access_line.server.wait_idle()
    assert waited < BOUND
    assert "you-have" not in caller.heard

    for _ in range(100):  # the abandoned step finishes within moments of the resume
        late = await asyncio.to_thread(open_reservations, access_line)
        if late:
            break
        await asyncio.sleep(0.1)
    assert len(late) == 1
    assert not access_line.controller.claimed(late[0].call_key)
    report = await Recovery(access_line.controller).recover_once()
    assert report.released == [late[0].call_key]
    balance, reserved, _entries = account_state(access_line, card.account)
    assert (balance, reserved) == (Decimal("5.00"), Decimal("0"))
