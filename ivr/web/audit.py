"""The audit log: every change made from the web console, written in the same
transaction as the change itself (who, their role, from where, what, on what, the reason
they typed), and read back newest first."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..db import Database
from ..db.models import AuditEntry
from .users import Who


@dataclass(frozen=True)
class Actor:
    """Who makes a change, and from which address."""

    who: Who
    address: str


def record(s: Session, actor: Actor, action: str, target: str, *,
           detail: dict[str, Any] | None = None, reason: str = "") -> None:
    """Write one audit line in ``s`` (the change's own transaction)."""
    s.add(AuditEntry(at=datetime.now(UTC), user=actor.who.name, role=actor.who.role.value,
                     address=actor.address[:45], action=action, target=target[:128],
                     detail=json.dumps(detail or {}, default=str, sort_keys=True),
                     reason=reason))


def recent(db: Database, *, limit: int = 100, before: int | None = None,
           target: str | None = None) -> list[AuditEntry]:
    """Audit lines, newest first; ``before``: an id, for the next page."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if before is not None:
        query = query.where(AuditEntry.id < before)
    if target:
        query = query.where(AuditEntry.target == target)
    with db.reading() as s:
        return list(s.scalars(query))
