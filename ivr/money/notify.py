"""Low-balance notices outside calls: an e-mail (SMTP) and/or an SMS (Asterisk's AMI
MessageSend, or an HTTP gateway) when an account's available balance falls below its
``low_balance_notice`` level.

One notice per dip: ``low_balance_notified_at`` is set when the notice goes out and cleared
by :func:`reset_notice_if_topped_up` once a credit lifts the balance back to the level
(``ivr.money.ledger.credit`` calls it, through ``after_credit``, for every way money
comes in). The messages carry the account number, the balance and the currency, nothing
secret.
"""

from __future__ import annotations

import asyncio
import json
import logging
import smtplib
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import TYPE_CHECKING, Protocol

from sqlalchemy.orm import Session

from ..config import Settings
from ..db import Database, lock_account
from ..db.models import Account
from ..db.types import display

if TYPE_CHECKING:  # annotations only: no need to load the AMI client to send e-mail
    from ..ami import AmiClient

log = logging.getLogger("ivr.money.notify")


class NotifyError(RuntimeError):
    """A message could not be handed over for delivery."""


class Sender(Protocol):
    async def send(self, to: str, subject: str, body: str) -> None: ...


# --------------------------------------------------------------------------- e-mail


class SmtpSender:
    """E-mail over SMTP (smtplib, in a worker thread)."""

    def __init__(self, host: str, port: int, sender: str, starttls: bool = False,
                 username: str | None = None, password: str | None = None,
                 timeout: float = 30.0) -> None:
        self.host, self.port, self.sender = host, port, sender
        self.starttls = starttls
        self.username, self._password = username, password
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"SmtpSender({self.host}:{self.port}, from {self.sender})"

    async def send(self, to: str, subject: str, body: str) -> None:
        await asyncio.to_thread(self._send, to, subject, body)

    def _send(self, to: str, subject: str, body: str) -> None:
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = to
        msg["Subject"] = subject
        msg["Date"] = formatdate(usegmt=True)
        msg["Message-ID"] = make_msgid(domain=self.sender.rpartition("@")[2] or "localhost")
        msg.set_content(body)
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                if self.starttls:
                    smtp.starttls(context=ssl.create_default_context())
                if self.username:
                    smtp.login(self.username, self._password or "")
                smtp.send_message(msg)
        except (smtplib.SMTPException, OSError) as exc:
            raise NotifyError(f"SMTP {self.host}:{self.port}: {exc}") from exc


# --------------------------------------------------------------------------- SMS


def _one_line(text: str) -> str:
    return " ".join(text.split())


class AmiSmsSender:
    """SMS through Asterisk: the AMI action MessageSend to ``uri`` ({number} is replaced),
    e.g. "pjsip:{number}@sms-trunk" or "pjsip:sms-provider/sip:{number}@host"."""

    def __init__(self, ami: AmiClient, uri: str = "pjsip:{number}", sender: str = "ivr") -> None:
        self.ami, self.uri, self.sender = ami, uri, sender

    async def send(self, to: str, subject: str, body: str) -> None:
        try:
            # To (not Destination) works on every Asterisk since 11; AMI headers are lines.
            await self.ami.action("MessageSend", To=self.uri.format(number=to),
                                  From=self.sender, Body=_one_line(body))
        except Exception as exc:  # AmiError and friends
            raise NotifyError(f"AMI MessageSend: {exc}") from exc


class HttpSmsSender:
    """SMS through an HTTP gateway: POST {"to": number, "text": body} as JSON, with
    ``Authorization: Bearer <token>`` when a token is given. Any 2xx answer is success."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 30.0) -> None:
        if not url:
            raise ValueError("the HTTP SMS sender needs a URL")
        self.url, self._token, self.timeout = url, token, timeout

    def __repr__(self) -> str:
        return f"HttpSmsSender({self.url})"

    async def send(self, to: str, subject: str, body: str) -> None:
        await asyncio.to_thread(self._send, to, body)

    def _send(self, to: str, body: str) -> None:
        headers = {"Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(
            self.url, data=json.dumps({"to": to, "text": body}).encode(), headers=headers,
            method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                response.read()
        except (urllib.error.URLError, OSError) as exc:  # HTTPError (4xx/5xx) is a URLError
            raise NotifyError(f"SMS gateway {self.url}: {exc}") from exc


def senders_from_settings(
    settings: Settings, ami: AmiClient | None = None
) -> tuple[Sender | None, Sender | None]:
    """(e-mail sender, SMS sender) as configured; None for a channel that is off."""
    email: Sender | None = None
    if settings.smtp_host:
        email = SmtpSender(settings.smtp_host, settings.smtp_port, settings.smtp_from)
    sms: Sender | None = None
    mode = settings.sms_mode.strip().lower()
    if mode == "ami":
        if ami is None:
            raise ValueError("sms_mode 'ami' needs an AMI connection")
        sms = AmiSmsSender(ami, settings.sms_ami_uri)
    elif mode == "http":
        sms = HttpSmsSender(settings.sms_http_url, settings.sms_http_token or None)
    elif mode:
        raise ValueError(f"sms_mode: {settings.sms_mode!r} is not ami, http or empty")
    return email, sms


# --------------------------------------------------------------------------- notices


@dataclass(frozen=True)
class _Notice:
    account: str
    balance: str
    level: str
    currency: str
    email: str | None
    sms: str | None

    @property
    def subject(self) -> str:
        return f"Low balance on account {self.account}"

    @property
    def body(self) -> str:
        return (f"Account {self.account}: your balance is {self.balance} {self.currency}, "
                f"below {self.level} {self.currency}. Top up to keep calling.")


def _claim(db: Database, account_id: int, now: datetime, email: bool, sms: bool
           ) -> _Notice | None:
    """Mark the notice as sent (with the account locked, so it goes out once), or None
    when none is due."""
    with db.transaction() as s:
        account = lock_account(s, account_id)
        level = account.low_balance_notice
        if level is None or account.low_balance_notified_at is not None:
            return None
        if account.available >= level:
            return None
        to_email = account.email if email and account.email else None
        to_sms = account.sms_number if sms and account.sms_number else None
        if to_email is None and to_sms is None:
            return None
        account.low_balance_notified_at = now
        return _Notice(account.number, display(account.available), display(level),
                       account.currency, to_email, to_sms)


def _unclaim(db: Database, account_id: int) -> None:
    with db.transaction() as s:
        account = lock_account(s, account_id)
        if account.low_balance_notified_at is not None:
            account.low_balance_notified_at = None


async def check_low_balance(
    db: Database,
    account_id: int,
    *,
    email: Sender | None,
    sms: Sender | None,
    now: datetime | None = None,
) -> bool:
    """Send the low-balance notice if it is due (available balance below the account's
    level, not sent since the last top-up) by every channel the account has an address
    for. True if a message went out. If every channel fails, the notice stays due."""
    now = now or datetime.now(UTC)
    notice = await db.run(_claim, db, account_id, now, email is not None,
                                     sms is not None)
    if notice is None:
        return False
    sent = []
    for channel, sender, to in (("e-mail", email, notice.email), ("SMS", sms, notice.sms)):
        if sender is None or to is None:
            continue
        try:
            await sender.send(to, notice.subject, notice.body)
        except Exception as exc:
            log.warning("low-balance %s for account %s not sent: %s", channel, notice.account,
                        exc)
            continue
        sent.append(channel)
    if not sent:
        await db.run(_unclaim, db, account_id)
        return False
    log.info("low-balance notice for account %s sent by %s", notice.account, " and ".join(sent))
    return True


def reset_notice_if_topped_up(session: Session, account: Account) -> bool:
    """Make the next dip below the level send a notice again, once the available balance
    is back at or above it (or the notice is off). True if it was reset."""
    if account.low_balance_notified_at is None:
        return False
    level = account.low_balance_notice
    if level is not None and account.available < level:
        return False
    account.low_balance_notified_at = None
    return True
