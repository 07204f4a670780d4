"""Low-balance notices: a real SMTP server (aiosmtpd), a local HTTP SMS gateway, and the
AMI MessageSend sender against a recording stand-in."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from email import message_from_bytes
from email.policy import default as default_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from ivr.config import Settings
from ivr.db import Database
from ivr.db.migrate import upgrade
from ivr.db.models import Account, EntryKind
from ivr.money.accounts import create_account
from ivr.money.ledger import credit
from ivr.money.notify import (
    AmiSmsSender,
    HttpSmsSender,
    NotifyError,
    SmtpSender,
    check_low_balance,
    reset_notice_if_topped_up,
    senders_from_settings,
)
from ivr.payments import SANDBOX_APPROVE, CardDetails, SandboxGateway, pay_with_card
from ivr.testing import free_port
from ivr.testing.access import create_test_plan

FROM = "ivr@example.test"
EMAIL = "holder@example.test"
SMS = "12025550143"


@pytest.fixture
def db(tmp_path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'ivr.sqlite3'}")
    upgrade(db.engine)
    create_test_plan(db)
    yield db
    db.dispose()


def new_account(db: Database, balance: str, *, below: str | None = "5", email: str | None = EMAIL,
                sms: str | None = SMS) -> tuple[int, str]:
    with db.transaction() as s:
        account = create_account(s, "retail", balance=Decimal(balance))
        account.low_balance_notice = None if below is None else Decimal(below)
        account.email, account.sms_number = email, sms
        return account.id, account.number


def notified_at(db: Database, account_id: int) -> datetime | None:
    with db.transaction() as s:
        account = s.get(Account, account_id)
        assert account is not None
        return account.low_balance_notified_at


def spend(db: Database, account_id: int, amount: str) -> None:
    with db.transaction() as s:
        credit(s, account_id, -Decimal(amount), EntryKind.ADJUSTMENT, note="test spend")


# --------------------------------------------------------------------------- servers


class Mailbox:
    """An aiosmtpd handler keeping what it receives."""

    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"

    def messages(self) -> list[Any]:
        return [message_from_bytes(e.content, policy=default_policy) for e in self.envelopes]


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, SmtpSender]]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield mailbox, SmtpSender("127.0.0.1", port, FROM, timeout=10)
    finally:
        controller.stop()


class SmsGateway:
    """A local HTTP SMS gateway: records each POST; answers ``status``."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.status = 202
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                gateway.requests.append((dict(self.headers), json.loads(body)))
                self.send_response(gateway.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/sms"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def sms_gateway() -> Iterator[SmsGateway]:
    gateway = SmsGateway()
    yield gateway
    gateway.close()


class RecordingAmi:
    """Stands in for ivr.ami.AmiClient: records actions and their headers."""

    def __init__(self, fail: bool = False) -> None:
        self.actions: list[tuple[str, dict[str, Any]]] = []
        self.fail = fail

    async def action(self, name: str, **headers: Any) -> dict[str, str]:
        if self.fail:
            raise ConnectionError("AMI is not connected")
        self.actions.append((name, headers))
        return {"Response": "Success"}


# --------------------------------------------------------------------------- e-mail


async def test_low_balance_email_is_sent_once(db: Database, smtp):
    mailbox, sender = smtp
    account, number = new_account(db, "3", sms=None)
    now = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)
    assert await check_low_balance(db, account, email=sender, sms=None, now=now)
    assert not await check_low_balance(db, account, email=sender, sms=None)
    assert len(mailbox.envelopes) == 1
    envelope = mailbox.envelopes[0]
    assert envelope.mail_from == FROM and envelope.rcpt_tos == [EMAIL]
    [message] = mailbox.messages()
    assert message["To"] == EMAIL and message["From"] == FROM
    assert number in message["Subject"]
    body = message.get_content()
    assert number in body and "3.00 USD" in body and "5.00 USD" in body
    assert notified_at(db, account).replace(tzinfo=UTC) == now


async def test_notice_is_reset_by_a_top_up(db: Database, smtp):
    mailbox, sender = smtp
    account, _ = new_account(db, "3", sms=None)
    assert await check_low_balance(db, account, email=sender, sms=None)
    gateway = SandboxGateway(b"notify-tests", delay=0)
    card = CardDetails(SANDBOX_APPROVE, "1230", "123")
    # Not enough to reach the level: still notified, no second message.
    await pay_with_card(db, gateway, account, card, Decimal("1"), payment_id="p1")
    assert notified_at(db, account) is not None
    assert not await check_low_balance(db, account, email=sender, sms=None)
    # Back above the level: reset, and the next dip sends again.
    await pay_with_card(db, gateway, account, card, Decimal("10"), payment_id="p2")
    assert notified_at(db, account) is None
    assert not await check_low_balance(db, account, email=sender, sms=None)  # 14 >= 5
    spend(db, account, "12")
    assert await check_low_balance(db, account, email=sender, sms=None)
    assert len(mailbox.envelopes) == 2
    assert "2.00 USD" in mailbox.messages()[1].get_content()


def test_reset_notice_rules(db: Database):
    account_id, _ = new_account(db, "3")
    with db.transaction() as s:
        account = s.get(Account, account_id)
        assert not reset_notice_if_topped_up(s, account)  # nothing sent: nothing to reset
        account.low_balance_notified_at = datetime.now(UTC)
        assert not reset_notice_if_topped_up(s, account)  # still below
        account.low_balance_notice = Decimal(3)
        assert reset_notice_if_topped_up(s, account)  # at the level counts as back
        assert account.low_balance_notified_at is None
        account.low_balance_notified_at = datetime.now(UTC)
        account.low_balance_notice = None
        assert reset_notice_if_topped_up(s, account)  # notices turned off


@pytest.mark.parametrize(("balance", "values"), [
    ("6", {}),  # above the level
    ("5", {}),  # at it
    ("3", {"below": None}),  # notices off
    ("3", {"email": None, "sms": None}),  # nobody to tell
])
async def test_no_notice_due(db: Database, smtp, balance, values):
    mailbox, sender = smtp
    account, _ = new_account(db, balance, **values)
    assert not await check_low_balance(db, account, email=sender, sms=None)
    assert mailbox.envelopes == [] and notified_at(db, account) is None


async def test_held_funds_count(db: Database, smtp):
    mailbox, sender = smtp
    account, _ = new_account(db, "6", sms=None)
    with db.transaction() as s:
        s.get(Account, account).reserved = Decimal("2")
    assert await check_low_balance(db, account, email=sender, sms=None)
    assert "4.00 USD" in mailbox.messages()[0].get_content()


async def test_smtp_failure_leaves_the_notice_due(db: Database):
    account, _ = new_account(db, "3", sms=None)
    dead = SmtpSender("127.0.0.1", free_port(), FROM, timeout=5)
    with pytest.raises(NotifyError):
        await dead.send(EMAIL, "s", "b")
    assert not await check_low_balance(db, account, email=dead, sms=None)
    assert notified_at(db, account) is None


# --------------------------------------------------------------------------- SMS


async def test_http_sms(db: Database, sms_gateway: SmsGateway):
    account, number = new_account(db, "3", email=None)
    sender = HttpSmsSender(sms_gateway.url, token="gw-token")
    assert await check_low_balance(db, account, email=None, sms=sender)
    assert not await check_low_balance(db, account, email=None, sms=sender)
    [(headers, body)] = sms_gateway.requests
    assert headers["Authorization"] == "Bearer gw-token"
    assert headers["Content-Type"] == "application/json"
    assert body["to"] == SMS
    assert number in body["text"] and "3.00 USD" in body["text"]


async def test_http_sms_failure(db: Database, sms_gateway: SmsGateway):
    sms_gateway.status = 500
    sender = HttpSmsSender(sms_gateway.url)
    with pytest.raises(NotifyError):
        await sender.send(SMS, "", "text")
    assert "Authorization" not in sms_gateway.requests[0][0]
    account, _ = new_account(db, "3", email=None)
    assert not await check_low_balance(db, account, email=None, sms=sender)
    assert notified_at(db, account) is None


async def test_ami_sms(db: Database):
    ami = RecordingAmi()
    account, number = new_account(db, "3", email=None)
    sender = AmiSmsSender(ami, "pjsip:sms-trunk/sip:{number}@sms.example.test")
    assert await check_low_balance(db, account, email=None, sms=sender)
    assert not await check_low_balance(db, account, email=None, sms=sender)
    [(name, headers)] = ami.actions
    assert name == "MessageSend"
    assert headers["To"] == f"pjsip:sms-trunk/sip:{SMS}@sms.example.test"
    assert headers["From"] == "ivr"
    assert number in headers["Body"] and "\n" not in headers["Body"]
    with pytest.raises(NotifyError):
        await AmiSmsSender(RecordingAmi(fail=True)).send(SMS, "", "text")


async def test_email_and_sms_together_and_one_failing(db: Database, smtp):
    mailbox, email = smtp
    ami = RecordingAmi()
    account, _ = new_account(db, "3")
    assert await check_low_balance(db, account, email=email, sms=AmiSmsSender(ami))
    assert len(mailbox.envelopes) == 1 and len(ami.actions) == 1
    # One channel down: the other still delivers, and the notice counts as sent.
    other, _ = new_account(db, "3")
    assert await check_low_balance(db, other, email=email,
                                   sms=AmiSmsSender(RecordingAmi(fail=True)))
    assert len(mailbox.envelopes) == 2 and notified_at(db, other) is not None


def test_senders_from_settings():
    assert senders_from_settings(Settings()) == (None, None)
    email, sms = senders_from_settings(Settings(smtp_host="mail.example.test", smtp_port=2525,
                                                sms_mode="http",
                                                sms_http_url="http://sms.example.test/",
                                                sms_http_token="t"))
    assert isinstance(email, SmtpSender) and (email.host, email.port) == ("mail.example.test",
                                                                          2525)
    assert isinstance(sms, HttpSmsSender) and sms.url == "http://sms.example.test/"
    ami = RecordingAmi()
    _, sms = senders_from_settings(Settings(sms_mode="ami"), ami)
    assert isinstance(sms, AmiSmsSender) and sms.ami is ami and sms.uri == "pjsip:{number}"
    for bad in (Settings(sms_mode="ami"), Settings(sms_mode="pigeon"),
                Settings(sms_mode="http")):
        with pytest.raises(ValueError):
            senders_from_settings(bad)
