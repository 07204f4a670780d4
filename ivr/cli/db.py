"""``ivr db upgrade|status``: the database schema."""

from __future__ import annotations

import argparse

from ..config import Settings
from ..db import Database
from ..db.migrate import current_revision, upgrade
from .common import command, emit, with_json


@command
def cmd_db(settings: Settings, args: argparse.Namespace) -> int:
    # Not open_db: this is the command that brings an out-of-date schema up to date.
    db = Database(settings.effective_database_url)
    db.ping()
    if args.action == "upgrade":
        upgrade(db.engine)
    revision = current_revision(db.engine)
    emit(args, {"database": db.safe_url, "revision": revision},
         f"database {db.safe_url} at revision {revision}")
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = with_json(sub.add_parser("db", help="database schema"))
    p.add_argument("action", choices=["upgrade", "status"])
    p.set_defaults(func=cmd_db)
