"""The web console's users (ivr.web.users) and one-time downloads (ivr.web.downloads), on
SQLite and PostgreSQL: passwords shown once and kept as Argon2id hashes, sessions by
token hash, throttled log-ins, roles, removal, files given once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from ivr.db import Database
from ivr.db.models import WebDownload, WebSession, WebUser
from ivr.web import downloads, users
from ivr.web.users import LoginRefused, Role


def test_a_user_logs_in_with_the_password_shown_once(db: Database):
    password = users.add_user(db, "Alice", "admin")
    with db.reading() as s:
        row = s.scalar(select(WebUser))
    assert row is not None and row.name == "alice" and row.role == "admin"
    assert row.password_hash.startswith("$argon2id$") and password not in row.password_hash
    token, who = users.log_in(db, "alice", password, "127.0.0.1")
    assert who.name == "alice" and who.role is Role.ADMIN and len(who.csrf) >= 32
    with db.reading() as s:
        stored = s.scalar(select(WebSession.token_hash))
    assert stored is not None and token not in stored  # only its digest is kept
    assert users.session_user(db, token) == who
    assert users.session_user(db, token + "x") is None
    users.log_out(db, who.session_id)
    assert users.session_user(db, token) is None


def test_names_are_checked_and_unique(db: Database):
    users.add_user(db, "bob", "viewer")
    with pytest.raises(users.UserError, match="exists"):
        users.add_user(db, "BOB", "admin")
    for bad in ("", "a b", "x" * 65, "名"):
        with pytest.raises(users.UserError):
            users.add_user(db, bad, "viewer")
    with pytest.raises(ValueError):
        users.add_user(db, "carol", "root")


def test_failures_throttle_the_address_and_the_name(db: Database):
    password = users.add_user(db, "alice", "support")
    for _ in range(users.MAX_FAILURES):
        with pytest.raises(LoginRefused) as refused:
            users.log_in(db, "alice", "wrong", "10.0.0.1")
        assert not refused.value.throttled
    # The right password, from that address: refused while the failures are recent.
    with pytest.raises(LoginRefused) as refused:
        users.log_in(db, "alice", password, "10.0.0.1")
    assert refused.value.throttled
    # From another address too: the name itself is throttled (guessing from many).
    with pytest.raises(LoginRefused) as refused:
        users.log_in(db, "alice", password, "10.0.0.2")
    assert refused.value.throttled
    # Unknown names answer like wrong passwords, and count against the address.
    with pytest.raises(LoginRefused, match="wrong user name or password"):
        users.log_in(db, "nobody", "x", "10.0.0.3")


def test_a_reset_ends_sessions_and_a_removed_user_cannot_log_in(db: Database):
    first = users.add_user(db, "alice", "admin")
    token, _ = users.log_in(db, "alice", first, "127.0.0.1")
    second = users.reset_password(db, "alice")
    assert users.session_user(db, token) is None
    assert not users.password_ok(db, "alice", first)
    token, _ = users.log_in(db, "alice", second, "127.0.0.1")
    users.set_role(db, "alice", "viewer")
    who = users.session_user(db, token)
    assert who is not None and who.role is Role.VIEWER
    users.remove_user(db, "alice")
    assert users.session_user(db, token) is None
    with pytest.raises(LoginRefused):
        users.log_in(db, "alice", second, "127.0.0.1")


def test_an_expired_session_is_refused(db: Database):
    password = users.add_user(db, "alice", "admin")
    token, _ = users.log_in(db, "alice", password, "127.0.0.1")
    with db.transaction() as s:
        s.execute(update(WebSession).values(expires_at=datetime.now(UTC) - timedelta(1)))
    assert users.session_user(db, token) is None


def test_roles_are_ordered():
    assert Role.ADMIN.allows(Role.SUPPORT) and Role.SUPPORT.allows(Role.VIEWER)
    assert not Role.VIEWER.allows(Role.SUPPORT) and not Role.SUPPORT.allows(Role.ADMIN)
    assert users.csrf_ok("abc", "abc") and not users.csrf_ok("abc", "abd")
    assert not users.csrf_ok("abc", "") and not users.csrf_ok("abc", None)


def test_a_download_is_given_once_to_its_user_and_kept_encrypted(db: Database):
    users.add_user(db, "alice", "admin")
    users.add_user(db, "bob", "admin")
    with db.reading() as s:
        ids = {name: id_ for name, id_ in s.execute(select(WebUser.name, WebUser.id))}
    key = b"k" * 32
    content = b"card,pin\n1234567890,4321\n"
    token = downloads.offer(db, key, ids["alice"], "pins.csv", content)
    with db.reading() as s:
        sealed = s.scalar(select(WebDownload.content))
    assert sealed is not None and b"4321" not in sealed
    assert downloads.take(db, key, ids["bob"], token) is None  # not bob's
    assert downloads.take(db, key, ids["alice"], token) == ("pins.csv", content)
    assert downloads.take(db, key, ids["alice"], token) is None  # once
    expired = downloads.offer(db, key, ids["alice"], "pins.csv", content)
    with db.transaction() as s:
        s.execute(update(WebDownload).values(expires_at=datetime.now(UTC) - timedelta(1)))
    assert downloads.take(db, key, ids["alice"], expired) is None
