"""Calls: ``ivr calls trace CALL [--json]``, one call's story (ivr.live.trace): the
prompts played, the keys pressed (masked where the caller typed a secret), the grant,
renewals, warnings, top-ups, limit moves, how it ended and what it cost."""

from __future__ import annotations

import argparse

from ..config import Settings
from .common import CommandError, command, emit, open_db, with_json


@command
def cmd_trace(settings: Settings, args: argparse.Namespace) -> int:
    from ..live.trace import read_trace

    db = open_db(settings)
    try:
        events = read_trace(db, args.call)
    finally:
        db.dispose()
    if not events:
        raise CommandError(
            f"no trace of call {args.call!r}: not a call's uniqueid or key, or older than "
            f"the {settings.call_trace_days} day(s) traces are kept (call_trace_days)",
            "not_found")
    emit(args, {"call": args.call, "call_id": events[0].call_id,
                "events": [e.as_json() for e in events]},
         "\n".join(e.line() for e in events))
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    calls = sub.add_parser("calls", help="calls: their traces").add_subparsers(
        dest="action", required=True)
    p = with_json(calls.add_parser(
        "trace", help="a call's story: prompts, keys (masked), grant, warnings, cost"))
    p.add_argument("call", help="the caller channel's uniqueid, or a CDR's call key "
                                "(<uniqueid>-<n>)")
    p.set_defaults(func=cmd_trace)
