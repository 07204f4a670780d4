"""What the revalue line's real-Asterisk tests share (test_revalue_calls.py,
test_revalue_direct_calls.py): the line served as `ivr serve` serves it, a test phone
calling it, an SMS inbox (a local HTTP receiver), and small helpers. Two test files, so
the test workers run them side by side."""


import asyncio
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from ivr.agi import AgiServer
from ivr.ami import AmiClient
from ivr.app import App
from ivr.asterisk import AsteriskInstance
from ivr.config import Settings
from ivr.db import Database
from ivr.prompts import Voice
from ivr.revalue import codes, customers, lookup
from ivr.testing.access import Caller, account_state, create_test_plan, new_account
from ivr.testing.phone import Call, Phone

OPERATOR = "Sim"
MOBILE = "+12015550123"
RECHARGE_CODE = "987654321012"


class Inbox:
    """An SMS gateway on loopback: keeps each POSTed {"to", "text"}."""

    def __init__(self) -> None:
        self.messages: list[dict[str, str]] = []
        inbox = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                inbox.messages.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/sms"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def inbox() -> Iterator[Inbox]:
    box = Inbox()
    yield box
    box.close()


@dataclass
class RevalueLine:
    app: App
    server: AgiServer
    db_file: Path
    accounts: dict[str, str] = field(default_factory=dict)  # msisdn -> account number

    @property
    def db(self) -> Database:
        return self.app.db

    def customer(self, msisdn: str, balance: str, mode: str = "code") -> str:
        """A customer of ``balance``, with ``OPERATOR``; returns their first code."""
        account = new_account(self.db, Decimal(balance))
        added = customers.add_customer(self.db, msisdn, region="US", mode=mode,
                                       account=account)
        lookup.add_ported(self.db, msisdn, OPERATOR)
        self.accounts[msisdn] = account
        return added.code

    def load_codes(self, tmp_path: Path, items: list[str], value: str = "10") -> None:
        path = tmp_path / "codes.txt"
        path.write_text("\n".join(items) + "\n")
        codes.import_codes(self.db, path, operator=OPERATOR, value=Decimal(value),
                           currency="USD", key=self.app.secret_key, low_stock=0)

    def money(self, msisdn: str = MOBILE) -> tuple[Decimal, Decimal, list[tuple[str, Decimal]]]:
        balance, reserved, entries = account_state(self.db, self.accounts[msisdn])
        return balance, reserved, [(e.kind.value, e.amount) for e in entries]


MakeLine = Callable[..., Awaitable[RevalueLine]]


@pytest.fixture
async def make_revalue_line(
    asterisk: AsteriskInstance, test_settings: Settings, instance_voice: Voice,
    server_ami: AmiClient, tmp_path: Path, inbox: Inbox,
) -> AsyncIterator[MakeLine]:
    """The revalue line as `ivr serve` wires it (the server's AMI), on a fresh SQLite
    file, SMS through the local inbox."""
    made: list[RevalueLine] = []

    async def make(**overrides: object) -> RevalueLine:
        db_file = tmp_path / "ivr.sqlite3"
        settings = test_settings.replace(**{
            "database_url": f"sqlite:///{db_file}",
            "sms_mode": "http", "sms_http_url": inbox.url,
            "revalue_products": f"{OPERATOR}=5,10,20", "revalue_default_amount": "10",
            "code_low_stock": 0,
            **overrides,
        })
        app = await asyncio.to_thread(App.build, settings, voice=instance_voice)
        create_test_plan(app.db)
        app.add_asterisk(server_ami)
        server = AgiServer(app.routes(), "127.0.0.1", settings.agi_port, header_timeout=2)
        await server.start()
        line = RevalueLine(app, server, db_file)
        made.append(line)
        return line

    yield make
    for line in made:
        await line.server.shutdown(grace=5)
        await line.app.close()
        line.app.dispose()


async def recharge_by_phone(phone: Phone, first_code: str, *, callerid: str = MOBILE[1:],
                            key: str = "2") -> tuple[Call, Caller]:
    """Call, give the first code, choose the amount by ``key`` and confirm."""
    call = await phone.call("ivr-revalue", callerid=callerid, timeout=30)
    caller = Caller(call)
    await caller.answer("enter-first-code", first_code + "#")
    await caller.answer("choose-recharge-amount", key)
    await caller.answer("confirm-amount", "1")
    return call, caller


def said_digits(call: Call) -> list[str]:
    return [c.args[0] for c in call.commands if c.verb == "SAY DIGITS"]


def database_bytes(directory: Path) -> bytes:
    """The SQLite database's files (with its journal or WAL) as they are on disk."""
    return b"".join(p.read_bytes() for p in sorted(directory.glob("ivr.sqlite3*")))


async def wait_for(check: Callable[[], bool], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.05)


async def operator_settles(url: str, request_id: str, state: str) -> None:
    """The simulated operator sets a request's state (its ``/_control``, with a callback
    when it has a callback URL)."""
    async with httpx.AsyncClient(timeout=5) as http:
        answer = await http.post(f"{url}/_control", json={"settle": request_id,
                                                          "state": state})
    assert answer.status_code == 200, answer.text


# --------------------------------------------------------------------------- code mode
