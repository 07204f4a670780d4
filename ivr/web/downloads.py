"""Files the console hands out once (a card batch's PINs, a voucher batch's codes): kept
encrypted (AES-256-GCM under a key derived from the server's secret key) until their
user downloads them, then deleted; a link that has been used, or is older than
``LIFETIME``, gives nothing. The database never holds the PINs in clear."""

from __future__ import annotations

import hashlib
import os
import secrets
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from ..db import Database
from ..db.models import WebDownload

LIFETIME = timedelta(minutes=30)


def _key(secret: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=None, info=b"ivr web downloads").derive(secret)


def offer(db: Database, secret: bytes, user_id: int, filename: str, content: bytes) -> str:
    """Keep ``content`` for one download by ``user_id``; returns the link's token."""
    with db.transaction() as s:
        return offer_in(s, secret, user_id, filename, content)


def offer_in(s: Session, secret: bytes, user_id: int, filename: str, content: bytes) -> str:
    """:func:`offer` in the transaction ``s`` (that of the change making the file, so
    the file is kept if and only if the change is)."""
    token = secrets.token_urlsafe(24)
    nonce = os.urandom(12)
    sealed = nonce + AESGCM(_key(secret)).encrypt(nonce, content, filename.encode())
    now = datetime.now(UTC)
    s.execute(delete(WebDownload).where(WebDownload.expires_at < now))
    s.add(WebDownload(token_hash=hashlib.sha256(token.encode()).hexdigest(),
                      user_id=user_id, filename=filename, content=sealed,
                      created_at=now, expires_at=now + LIFETIME))
    return token


def take(db: Database, secret: bytes, user_id: int, token: str) -> tuple[str, bytes] | None:
    """The file behind ``token`` for ``user_id``, deleted as it is taken; None if used,
    expired or someone else's."""
    digest = hashlib.sha256(token.encode()).hexdigest()
    with db.transaction() as s:
        row = s.scalar(select(WebDownload).where(WebDownload.token_hash == digest,
                                                 WebDownload.user_id == user_id))
        if row is None:
            return None
        filename, sealed, expires = row.filename, row.content, row.expires_at
        s.delete(row)
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    if expires < datetime.now(UTC):
        return None
    content = AESGCM(_key(secret)).decrypt(sealed[:12], sealed[12:], filename.encode())
    return filename, content
