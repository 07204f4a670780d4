"""Operators: who may log in on the operator line (``ivr-operator``) to record prompts.

An operator logs in with a PIN alone, no name typed on the keypad: so a PIN is long
(:data:`PIN_LENGTH` digits), stored only as a salted scrypt hash, and never handed out
while an active operator has it. An operator is disabled, never deleted: the prompt
versions they recorded keep their name.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .db import Database
from .db.models import Operator
from .secrets import hash_pin, new_pin, verify_pin

PIN_LENGTH = 8
NAME_MAX = 64  # the column's width


class NotFound(LookupError):
    """No operator of that name."""


class OperatorExists(ValueError):
    """An operator of that name exists already (active or disabled)."""


def add_operator(session: Session, name: str) -> tuple[Operator, str]:
    """A new active operator and their PIN, in clear this once (only its hash is kept).
    The name is trimmed; ValueError if it is empty or longer than 64 characters,
    :class:`OperatorExists` if taken."""
    name = name.strip()
    if not name or len(name) > NAME_MAX:
        raise ValueError(f"an operator name is 1-{NAME_MAX} characters")
    if session.scalar(select(Operator.id).where(Operator.name == name)) is not None:
        raise OperatorExists(f"operator {name!r} already exists")
    others = session.scalars(select(Operator.pin_hash).where(Operator.active)).all()
    while True:  # the PIN alone identifies its operator: never one already in use
        pin = new_pin(PIN_LENGTH)
        if not any(verify_pin(pin, stored) for stored in others):
            break
    operator = Operator(name=name, pin_hash=hash_pin(pin), active=True,
                        created_at=datetime.now(UTC))
    session.add(operator)
    return operator, pin


def disable_operator(session: Session, name: str) -> Operator:
    """Stop ``name`` from logging in (their PIN is refused from now on)."""
    operator = session.scalar(select(Operator).where(Operator.name == name))
    if operator is None:
        raise NotFound(f"no operator {name!r}")
    operator.active = False
    return operator


def list_operators(session: Session) -> Sequence[Operator]:
    """Every operator, active or not, by name."""
    return session.scalars(select(Operator).order_by(Operator.name)).all()


def log_in(db: Database, pin: str) -> str | None:
    """The name of the active operator with this PIN, None when there is none. Blocking
    (scrypt is slow on purpose): run it in a worker thread. The hashes are read in a
    read-only transaction and checked outside any: on SQLite a write transaction holds
    the process-wide writer lock every live call needs. Only a match writes (its log-in
    time), in a transaction of its own."""
    with db.reading() as s:
        hashes = [(op.id, op.name, op.pin_hash)
                  for op in s.scalars(select(Operator).where(Operator.active)).all()]
    for op_id, name, pin_hash in hashes:
        if verify_pin(pin, pin_hash):
            with db.transaction() as s:
                s.execute(update(Operator).where(Operator.id == op_id, Operator.active)
                          .values(last_login_at=datetime.now(UTC)))
            return name
    return None
