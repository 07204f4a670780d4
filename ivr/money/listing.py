"""What the operators' lists share (payments, vouchers, revaluations; the console's pages
and the CLI's ``list`` commands): newest first by id, a page at a time (``before``: the
last id shown), filtered by an account's number and a creation time range."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from ..db.models import Account
from .accounts import NotFound

Query = TypeVar("Query", bound=Select[*tuple[Any, ...]])


def newest_page(
    s: Session, query: Query, *, id_column: InstrumentedAttribute[int],
    created_column: InstrumentedAttribute[datetime], account_column: Any,
    account: str | None = None, start: datetime | None = None, end: datetime | None = None,
    before: int | None = None, limit: int = 50,
) -> Query:
    """``query`` newest first, at most ``limit`` rows, with the filters given: rows of the
    account numbered ``account`` (NotFound if there is none), created in [start, end),
    with an id below ``before``."""
    query = query.order_by(id_column.desc()).limit(limit)
    if account:
        found = s.scalar(select(Account.id).where(Account.number == account))
        if found is None:
            raise NotFound(f"no account {account}")
        query = query.where(account_column == found)
    if start is not None:
        query = query.where(created_column >= start.astimezone(UTC))
    if end is not None:
        query = query.where(created_column < end.astimezone(UTC))
    if before is not None:
        query = query.where(id_column < before)
    return query
