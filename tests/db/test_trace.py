"""Call traces in the database (ivr.live.trace), on SQLite and on PostgreSQL: steps
written in batches and read back in order (by the channel's uniqueid or a call key),
old ones pruned; ``ivr calls trace`` as text and JSON; and the console's live-calls page,
its hang-up (AMI) and a call's timeline, through Starlette's test client."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from starlette.applications import Starlette

from ivr.ami import AmiActionError
from ivr.app import App
from ivr.config import load_settings
from ivr.db import Database
from ivr.db.models import AuditEntry, CallEvent
from ivr.live.trace import MASK, CallTrace, live_calls, prune, read_trace, write_steps
from ivr.money.ledger import Grant
from ivr.testing.access import create_test_plan, new_card
from ivr.web import create_app
from ivr.web.pages import calls, home
from ivr.web.users import add_user


def count(db: Database) -> int:
    with db.reading() as s:
        return int(s.scalar(select(func.count()).select_from(CallEvent)) or 0)


async def test_steps_are_written_in_batches_and_read_in_order(db: Database) -> None:
    trace = CallTrace(db, interval=0.1)
    trace.event("1700000001.1", "start", route="access", channel="PJSIP/a-1")
    trace.event("1700000001.1", "keys", keys=MASK * 4, count=4, masked=True)
    trace.event("1700000002.2", "start", route="access", channel="PJSIP/b-2")
    trace.event("1700000001.1", "grant", call="1700000001.1-1", number="12125550100",
                destination="USA", seconds=300, amount=Decimal("3.000000"), currency="USD",
                affordable=500)
    trace.event("1700000001.1", "end", call="1700000001.1-1", status="ANSWER",
                cause="ANSWER", billsec=42, seconds=42, cost=Decimal("0.4200"),
                balance=Decimal("4.58"))
    assert count(db) == 0  # buffered: nothing written by event()
    deadline = time.monotonic() + 3
    while count(db) < 5:  # written by the loop within about interval seconds
        assert time.monotonic() < deadline, "the steps were not written"
        await asyncio.sleep(0.02)
    await trace.close()

    events = await asyncio.to_thread(read_trace, db, "1700000001.1")
    assert [e.kind for e in events] == ["start", "keys", "grant", "end"]
    assert events[2].detail["amount"] == "3.00" and events[3].detail["cost"] == "0.42"
    # The end step takes its grant's currency; the text shows the cost.
    assert events[3].detail["currency"] == "USD"
    assert "cost 0.42 USD" in events[3].text and "42s billed" in events[3].text
    assert all(e.at.tzinfo is not None for e in events)
    by_key = await asyncio.to_thread(read_trace, db, "1700000001.1-1")
    assert [e.as_json() for e in by_key] == [e.as_json() for e in events]
    assert [e.kind for e in await asyncio.to_thread(read_trace, db, "1700000002.2")] == [
        "start"]
    assert await asyncio.to_thread(read_trace, db, "1700000009.9") == []
    assert await asyncio.to_thread(read_trace, db, "1700000009.9-1") == []


def test_old_steps_are_pruned(db: Database) -> None:
    now = time.time()
    write_steps(db, [("old.1", now - 8 * 86400, "start", {}),
                     ("old.1", now - 8 * 86400 + 1, "end", {}),
                     ("mid.1", now - 6 * 86400, "start", {}),
                     ("new.1", now, "start", {})])
    assert prune(db, 0) == 0 and count(db) == 4  # 0: kept for ever
    assert prune(db, 7) == 2
    assert read_trace(db, "old.1") == [] and [e.kind for e in read_trace(db, "mid.1")] == [
        "start"]
    later = datetime.now(UTC) + timedelta(days=2)
    assert prune(db, 7, now=later) == 1 and count(db) == 1


# --------------------------------------------------------------------------- the command


@pytest.fixture
def ivr(db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ivr_cli: Any) -> Any:
    monkeypatch.setenv("IVR_DATABASE_URL", db.url)
    monkeypatch.setenv("IVR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    return ivr_cli


def test_ivr_calls_trace_prints_the_story(db: Database, ivr: Any) -> None:
    at = datetime(2026, 3, 1, 9, 15, 2, 345000, UTC).timestamp()
    write_steps(db, [
        ("1700000003.3", at, "prompt", {"prompt": "welcome", "lang": "en", "version": 1}),
        ("1700000003.3", at + 1.5, "keys", {"keys": MASK * 4, "count": 4, "masked": True}),
        ("1700000003.3", at + 2, "grant", {"call": "1700000003.3-1", "number": "12125550100",
                                           "destination": "USA", "seconds": 300,
                                           "amount": "3.00", "currency": "USD",
                                           "affordable": 500}),
        ("1700000003.3", at + 50, "warning", {"warning": "final", "left": 10}),
        ("1700000003.3", at + 60, "end", {"call": "1700000003.3-1", "status": "ANSWER",
                                          "cause": "ANSWER", "billsec": 42, "seconds": 42,
                                          "cost": "0.42", "balance": "4.58"}),
    ])
    lines = ivr("calls", "trace", "1700000003.3-1").splitlines()
    assert lines == [
        "09:15:02.345  prompt    played welcome (en, v1)",
        "09:15:03.845  keys      pressed •••• [4 keys] (masked)",
        "09:15:04.345  grant     granted 300s to 12125550100 USA (held 3.00 USD; the "
        "balance buys 500s)",
        "09:15:52.345  warning   final warning whispered: 10s left",
        "09:16:02.345  end       ended: ANSWER; 42s billed (42s talked), cost 0.42 USD, "
        "balance 4.58",
    ]
    data = json.loads(ivr("calls", "trace", "1700000003.3", "--json"))
    assert data["call_id"] == "1700000003.3"
    assert [e["kind"] for e in data["events"]] == ["prompt", "keys", "grant", "warning", "end"]
    assert data["events"][0]["at"] == "2026-03-01T09:15:02.345000+00:00"
    assert data["events"][4]["detail"]["cost"] == "0.42"
    assert data["events"][4]["detail"]["currency"] == "USD"


def test_ivr_calls_trace_refuses_an_unknown_call(db: Database, ivr: Any,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    err = ivr("calls", "trace", "1700000404.1", expect=1)
    assert "no trace of call '1700000404.1'" in err and "call_trace_days" in err
    from ivr.cli import main

    assert main(["calls", "trace", "1700000404.1-2", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "not_found"


# --------------------------------------------------------------------------- the console


@dataclass
class FakeAmi:
    """What the console asks of AMI: actions, recorded (``refuse``: an error reply)."""

    actions: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    refuse: bool = False
    connected: bool = True

    async def action(self, name: str, **headers: Any) -> dict[str, str]:
        self.actions.append((name, headers))
        if self.refuse:
            raise AmiActionError(name, {"Response": "Error", "Message": "No such channel"})
        return {"Response": "Success"}


CALL = "1700000100.4"
CHANNEL = "PJSIP/phone-00000004"


@pytest.fixture
def console(db: Database, tmp_path: Path) -> Iterator[tuple[App, FakeAmi]]:
    settings = load_settings(environ={}).replace(data_dir=tmp_path / "data",
                                                 database_url=db.url, web_bind="")
    app = App.build(settings, db=db)
    create_test_plan(db)
    ami = FakeAmi()
    yield app, ami
    app.dispose()


def site(app: App, ami: FakeAmi | None) -> Starlette:
    """The console with the pages these tests need (log-in and calls)."""
    return create_app(app, ami=ami, routes=[*home.routes, *calls.routes])  # type: ignore[arg-type]


def client(web: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=web),
                             base_url="http://testserver")


async def log_in(client: httpx.AsyncClient, db: Database, name: str, role: str) -> None:
    password = await asyncio.to_thread(add_user, db, name, role)
    page = await client.get("/login")
    done = await client.post("/login", data={"csrf": csrf_of(page.text), "name": name,
                                             "password": password, "next": "/calls"})
    assert done.status_code == 303, done.text


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found
    return found.group(1)


def live_call(app: App) -> tuple[str, Grant]:
    card = new_card(app.db, Decimal("5.00"))
    before = time.time()
    grant = app.ledger.authorize("12125550100", card_id=card.card_id, call_key=f"{CALL}-1",
                                 channel=CHANNEL, hold=300)
    assert isinstance(grant, Grant)
    now = time.time()
    write_steps(app.db, [(CALL, before - 8, "start", {"route": "access", "channel": CHANNEL}),
                         (CALL, before - 7, "keys", {"keys": MASK * 4, "count": 4,
                                                     "masked": True}),
                         (CALL, now, "grant", {"call": f"{CALL}-1", "seconds": 300,
                                               "amount": "3.00", "currency": "USD",
                                               "number": "12125550100", "affordable": 500}),
                         (CALL, now + 0.01, "answer", {"channel": "PJSIP/trunk-5"})])
    return card.number, grant


async def test_live_calls_page_and_a_calls_timeline(console: tuple[App, FakeAmi]) -> None:
    app, ami = console
    number, _ = live_call(app)
    (row,) = live_calls(app.db)
    assert row.call_id == CALL and row.channel == CHANNEL and row.answered is not None
    assert 295 <= (row.left(datetime.now(UTC)) or 0) <= 300  # 300 s from answer, just now
    async with client(site(app, ami)) as browser:
        await log_in(browser, app.db, "vera", "viewer")
        page = await browser.get("/calls")
        assert page.status_code == 200
        assert 'hx-get="/calls/rows"' in page.text and 'hx-trigger="every 2s [' in page.text
        assert number in page.text and CHANNEL in page.text and "12125550100" in page.text
        assert f'href="/calls/{CALL}/trace"' in page.text
        assert "Hang up" not in page.text  # a viewer has no hang-up button
        rows = await browser.get("/calls/rows")
        assert rows.text.lstrip().startswith('<tbody id="live-rows"')
        assert re.search(r'data-left="(29[5-9]|300)"', rows.text)

        trace = await browser.get(f"/calls/{CALL}-1/trace")  # a CDR's call key works too
        assert trace.status_code == 200
        assert '<ol class="timeline"' in trace.text and "(live)" in trace.text
        kinds = re.findall(r'<li data-kind="([a-z]+)"', trace.text)
        assert kinds == ["start", "keys", "grant", "answer"]
        assert "pressed •••• [4 keys] (masked)" in trace.text
        events = await browser.get(f"/calls/{CALL}/trace/events")
        assert events.text.lstrip().startswith('<ol class="timeline"')
        missing = await browser.get("/calls/1700000404.1/trace")
        assert missing.status_code == 404 and "No trace of call" in missing.text
        # A viewer cannot hang up, even by posting the form.
        refused = await browser.post("/calls/hangup", data={"csrf": csrf_of(page.text),
                                                            "channel": CHANNEL})
        assert refused.status_code == 403
    assert ami.actions == []


async def test_hang_up_a_live_call_from_the_console(console: tuple[App, FakeAmi]) -> None:
    app, ami = console
    live_call(app)
    async with client(site(app, ami)) as browser:
        await log_in(browser, app.db, "sam", "support")
        page = await browser.get("/calls")
        assert 'action="/calls/hangup"' in page.text
        csrf = csrf_of(page.text)
        # Without the CSRF token: refused, nothing done.
        no_token = await browser.post("/calls/hangup", data={"channel": CHANNEL})
        assert no_token.status_code == 403
        # Not a live call's channel: refused, nothing sent to Asterisk.
        bad = await browser.post("/calls/hangup",
                                 data={"csrf": csrf, "channel": "PJSIP/other-1"})
        assert bad.status_code == 400 and "not a live call" in bad.text
        assert ami.actions == []
        done = await browser.post("/calls/hangup", data={"csrf": csrf, "channel": CHANNEL,
                                                         "reason": "caller asked"})
        assert done.status_code == 200 and f"Hung up {CHANNEL}" in done.text
        assert ami.actions == [("Hangup", {"Channel": CHANNEL})]
        ami.refuse = True
        failed = await browser.post("/calls/hangup", data={"csrf": csrf, "channel": CHANNEL})
        assert failed.status_code == 502 and "did not hang up" in failed.text
    with app.db.reading() as s:
        (entry,) = s.scalars(select(AuditEntry).where(AuditEntry.action == "call.hangup"))
    assert (entry.user, entry.target, entry.reason) == ("sam", CHANNEL, "caller asked")
    assert json.loads(entry.detail)["call"] == f"{CALL}-1"
    # The call's trace says who hung it up, and why.
    last = read_trace(app.db, CALL)[-1]
    assert last.kind == "hangup"
    assert last.text == "hung up from the console by sam: caller asked"


async def test_without_ami_the_console_says_so_and_does_nothing(
        console: tuple[App, FakeAmi]) -> None:
    app, _ = console
    live_call(app)
    async with client(site(app, None)) as browser:
        await log_in(browser, app.db, "ada", "admin")
        csrf = csrf_of((await browser.get("/calls")).text)
        answer = await browser.post("/calls/hangup", data={"csrf": csrf, "channel": CHANNEL})
        assert answer.status_code == 503 and "No AMI connection" in answer.text
    with app.db.reading() as s:
        assert s.scalar(select(func.count()).select_from(AuditEntry)) == 0


async def test_the_server_prunes_old_traces_by_itself(console: tuple[App, FakeAmi]) -> None:
    from ivr.service import prune_call_traces, stop_task

    app, _ = console
    now = time.time()
    days = app.settings.call_trace_days
    await asyncio.to_thread(write_steps, app.db, [
        ("gone.1", now - (days + 1) * 86400, "start", {}), ("kept.1", now, "start", {})])
    task = asyncio.ensure_future(prune_call_traces(app, interval=3600))
    deadline = time.monotonic() + 10
    while await asyncio.to_thread(read_trace, app.db, "gone.1"):  # pruned at start
        assert time.monotonic() < deadline, "old steps not pruned"
        await asyncio.sleep(0.05)
    await stop_task(task)
    assert task.done()
    assert [e.kind for e in await asyncio.to_thread(read_trace, app.db, "kept.1")] == ["start"]
