"""Web console users, their log-ins and sessions: a service with no HTTP in it, used by
the console (ivr.web.http) and by ``ivr web-users``.

- Passwords are generated (shown once) and stored as Argon2id hashes (argon2-cffi): they
  guard people's log-ins, so they keep a memory-hard hash.
- Log-in is throttled per address and per user name: ``MAX_FAILURES`` failures within
  ``FAILURE_WINDOW`` refuse further attempts (even right ones) until the window passes.
  The refusal is the same whether the name exists or not.
- A session is a random token in an HttpOnly SameSite=Strict cookie; the database keeps
  only its SHA-256, with the session's CSRF token, which every form sends back.
- Roles are ordered: viewer (read only) < support (lock and unlock cards, resend notices,
  hang up calls) < admin (everything that moves money or changes rates, users).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, or_, select
from sqlalchemy.orm import Session

from ..db import Database
from ..db.models import WebLoginFailure, WebSession, WebUser

MAX_FAILURES = 5
FAILURE_WINDOW = timedelta(minutes=15)
SESSION_LIFETIME = timedelta(hours=8)
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-@")
_hasher = PasswordHasher()  # Argon2id, the library's defaults (64 MiB, 3 passes)
# Verified against when the name is unknown, so that a wrong name costs what a wrong
# password costs (no timing hint of which names exist).
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


class Role(enum.StrEnum):
    VIEWER = "viewer"
    SUPPORT = "support"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        return self.rank >= needed.rank


class UserError(ValueError):
    """A refused change to the web users (a clear message for the CLI and the page)."""


class LoginRefused(Exception):
    """A log-in that did not succeed: ``throttled`` tells too many failures apart."""

    def __init__(self, message: str, throttled: bool = False) -> None:
        super().__init__(message)
        self.throttled = throttled


@dataclass(frozen=True)
class Who:
    """The user of a request."""

    user_id: int
    name: str
    role: Role
    session_id: int
    csrf: str


def _now() -> datetime:
    return datetime.now(UTC)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_name(name: str) -> str:
    name = name.strip().lower()
    if not (1 <= len(name) <= 64) or not set(name) <= _NAME_CHARS:
        raise UserError(f"user name {name!r}: 1-64 of a-z 0-9 . _ - @")
    return name


def new_password() -> str:
    return secrets.token_urlsafe(12)


def add_user(db: Database, name: str, role: Role | str) -> str:
    """Add a web user; returns the generated password (shown once, stored hashed)."""
    name, role = check_name(name), Role(role)
    password = new_password()
    digest = _hasher.hash(password)
    with db.transaction() as s:
        if s.scalar(select(WebUser.id).where(WebUser.name == name)) is not None:
            raise UserError(f"web user {name} exists (reset its password with "
                            "`ivr web-users reset`)")
        s.add(WebUser(name=name, role=role.value, password_hash=digest, active=True,
                      created_at=_now()))
    return password


def reset_password(db: Database, name: str) -> str:
    """A new password for ``name`` (shown once); its sessions end."""
    password = new_password()
    digest = _hasher.hash(password)
    with db.transaction() as s:
        user = _user(s, name)
        user.password_hash = digest
        user.active = True
        s.execute(delete(WebSession).where(WebSession.user_id == user.id))
    return password


def set_role(db: Database, name: str, role: Role | str) -> None:
    with db.transaction() as s:
        _user(s, name).role = Role(role).value


def remove_user(db: Database, name: str) -> None:
    """Deactivate ``name`` (kept, as the audit log names it) and end its sessions."""
    with db.transaction() as s:
        user = _user(s, name)
        user.active = False
        s.execute(delete(WebSession).where(WebSession.user_id == user.id))


def list_users(db: Database) -> list[WebUser]:
    with db.reading() as s:
        return list(s.scalars(select(WebUser).order_by(WebUser.name)))


def has_users(db: Database) -> bool:
    with db.reading() as s:
        return s.scalar(select(func.count()).select_from(WebUser)) != 0


def password_ok(db: Database, name: str, password: str) -> bool:
    """Whether ``password`` is ``name``'s (no session made, no failure counted)."""
    with db.reading() as s:
        digest = s.scalar(select(WebUser.password_hash).where(WebUser.name == name,
                                                               WebUser.active))
    try:
        return digest is not None and _hasher.verify(digest, password)
    except (VerificationError, InvalidHashError):
        return False


def _user(s: Session, name: str) -> WebUser:
    user = s.scalar(select(WebUser).where(WebUser.name == check_name(name)))
    if user is None:
        raise UserError(f"no web user {name}")
    return user


def log_in(db: Database, name: str, password: str, address: str) -> tuple[str, Who]:
    """Check a log-in; on success a new session: (cookie token, who). Else LoginRefused
    (and the failure counted). Blocking: Argon2 takes tens of ms."""
    try:
        name = check_name(name)
    except UserError:
        name = name[:64]
    since = _now() - FAILURE_WINDOW
    with db.reading() as s:
        failures = s.scalar(select(func.count()).select_from(WebLoginFailure).where(
            WebLoginFailure.at >= since,
            or_(WebLoginFailure.address == address, WebLoginFailure.name == name)))
        user = s.scalar(select(WebUser).where(WebUser.name == name, WebUser.active))
    if (failures or 0) >= MAX_FAILURES:
        raise LoginRefused("too many failed log-ins: try again in 15 minutes", throttled=True)
    try:
        _hasher.verify(user.password_hash if user else _DUMMY_HASH, password)
        ok = user is not None
    except (VerificationError, InvalidHashError):
        ok = False
    if not ok or user is None:
        with db.transaction() as s:
            s.add(WebLoginFailure(name=name, address=address[:45], at=_now()))
        raise LoginRefused("wrong user name or password")
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    now = _now()
    with db.transaction() as s:
        row = WebSession(token_hash=_digest(token), user_id=user.id, csrf_token=csrf,
                         address=address[:45], created_at=now,
                         expires_at=now + SESSION_LIFETIME)
        s.add(row)
        s.execute(delete(WebLoginFailure).where(WebLoginFailure.name == name,
                                                WebLoginFailure.address == address))
        s.execute(delete(WebSession).where(WebSession.expires_at < now))
        fresh = s.get(WebUser, user.id)
        assert fresh is not None
        fresh.last_login_at = now
        if _hasher.check_needs_rehash(user.password_hash):
            fresh.password_hash = _hasher.hash(password)
        s.flush()
        session_id = row.id
    return token, Who(user.id, user.name, Role(user.role), session_id, csrf)


def session_user(db: Database, token: str) -> Who | None:
    """The user of a session cookie, or None (unknown, expired, user removed)."""
    if not token or len(token) > 100:
        return None
    with db.reading() as s:
        row = s.execute(
            select(WebSession.id, WebSession.csrf_token, WebSession.expires_at, WebUser.id,
                   WebUser.name, WebUser.role)
            .join(WebUser, WebUser.id == WebSession.user_id)
            .where(WebSession.token_hash == _digest(token), WebUser.active)).first()
    if row is None:
        return None
    session_id, csrf, expires, user_id, name, role = row
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    if expires <= _now():
        return None
    return Who(user_id, name, Role(role), session_id, csrf)


def log_out(db: Database, session_id: int) -> None:
    with db.transaction() as s:
        s.execute(delete(WebSession).where(WebSession.id == session_id))


def csrf_ok(expected: str, sent: str | None) -> bool:
    return bool(sent) and hmac.compare_digest(expected.encode(), (sent or "").encode())
