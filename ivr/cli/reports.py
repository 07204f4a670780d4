"""Operator commands for call records and traffic reports: ``ivr cdrs list`` and
``ivr reports daily|monthly`` (text, --json or --csv). The queries are in ivr.money.reports."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from ..config import Settings
from ..money.reports import (
    CDR_FIELDS,
    REPORT_FIELDS,
    FilterError,
    RangeError,
    cdr_filter,
    cdr_record,
    currency_decimals,
    iso_time,
    iter_cdrs,
    parse_range,
    parse_zone,
    report,
    report_record,
    write_csv,
)
from .common import CommandError, command, emit, open_db, whole_arg

T = TypeVar("T")


def _read(parse: Callable[[], T]) -> T:
    """A filter read by ivr.money.reports, its refusal named by the option."""
    try:
        return parse()
    except RangeError:
        raise CommandError("--to is not after --from", "bad_argument") from None
    except FilterError as exc:
        raise CommandError(f"--{exc.field}: {exc}", "bad_argument") from None


def _zone(name: str) -> ZoneInfo:
    return _read(lambda: parse_zone(name))


def _range(args: argparse.Namespace, tz: ZoneInfo) -> tuple[datetime | None, datetime | None]:
    return _read(lambda: parse_range(args.start, args.end, tz))


# --------------------------------------------------------------------------- cdrs


@command
def cmd_cdrs(settings: Settings, args: argparse.Namespace) -> int:
    tz = _zone(args.tz)
    flt = _read(lambda: cdr_filter(
        start=args.start, end=args.end, tz=tz, card=args.card, account=args.account,
        destination=args.destination, status=args.status, cause=args.cause))
    db = open_db(settings)
    with db.reading() as s:
        decimals = currency_decimals(s)
        rows = iter_cdrs(s, flt, limit=args.limit)  # refuses unknown cards/accounts now
        try:
            _write_cdrs(args, (cdr_record(r, tz, decimals) for r in rows), tz)
            sys.stdout.flush()
        except BrokenPipeError:  # `ivr cdrs list | head`: the reader has had enough
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _write_cdrs(args: argparse.Namespace, rows: Iterable[dict[str, Any]], tz: ZoneInfo) -> None:
    """Write rows as they come (never all of them at once)."""
    out = sys.stdout
    if args.csv:
        write_csv(out, CDR_FIELDS, rows)
        return
    if args.json:
        out.write('{"cdrs": [')
        for n, row in enumerate(rows):
            out.write(("\n" if n == 0 else ",\n") + json.dumps(row, ensure_ascii=False))
        out.write("\n]}\n")
        return
    count = 0
    for r in rows:
        if count == 0:
            out.write(f"{'started':19} {'account':12} {'card':16} "
                      f"{'destination':16} {'name':20} {'status':12} {'secs':>6} "
                      f"{'cost':>12}\n")
        count += 1
        status = "answered" if r["status"] == "answered" else (r["hangup_cause"] or "failed")
        out.write(f"{r['started_at'][:19].replace('T', ' '):19} {r['account']:12} "
                  f"{r['card'] or '-':16} {r['destination']:16} "
                  f"{r['destination_name'][:20]:20} {status[:12]:12} "
                  f"{r['billable_seconds']:>6} {r['cost']:>8} {r['currency']}\n")
    out.write(f"{count} call record(s), times in {tz}\n" if count else "no call records\n")


# --------------------------------------------------------------------------- reports


@command
def cmd_reports(settings: Settings, args: argparse.Namespace) -> int:
    tz = _zone(args.tz)
    start, end = _range(args, tz)
    db = open_db(settings)
    with db.reading() as s:
        decimals = currency_decimals(s)
        rows = report(s, args.period, by=args.by, start=start, end=end, tz=tz)
    data = [report_record(r, decimals.get(r.currency, 2)) for r in rows]
    if args.csv:
        write_csv(sys.stdout, REPORT_FIELDS, data)
        return 0
    header = (f"{'period':10} " + (f"{args.by:20} " if args.by else "")
              + f"{'cur':3} {'calls':>7} {'answered':>8} {'ASR %':>6} {'minutes':>10} "
              f"{'ACD s':>7} {'revenue':>12} {'top-ups':>12}")
    lines = [header] + [
        f"{r['period']:10} " + (f"{(r['group'] or '-')[:20]:20} " if args.by else "")
        + f"{r['currency']:3} {r['calls']:>7} {r['answered']:>8} {r['asr'] or '-':>6} "
        f"{r['minutes']:>10} {r['acd'] or '-':>7} {r['revenue']:>12} {r['topups'] or '-':>12}"
        for r in data]
    emit(args, {"report": args.period, "tz": str(tz), "by": args.by,
                "from": iso_time(start, tz), "to": iso_time(end, tz), "rows": data},
         "\n".join(lines) if data else "no calls or top-ups in this range")
    return 0


# --------------------------------------------------------------------------- parser


def _common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--from", dest="start", metavar="WHEN",
                   help="from this month (YYYY-MM), day (YYYY-MM-DD) or ISO time")
    p.add_argument("--to", dest="end", metavar="WHEN",
                   help="up to this month or day (included) or ISO time (excluded)")
    p.add_argument("--tz", default="UTC",
                   help="time zone of days, months and times shown (default UTC)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="machine-readable output")
    out.add_argument("--csv", action="store_true", help="CSV with a header row")
    return p


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cdrs = sub.add_parser("cdrs", help="call records").add_subparsers(
        dest="action", required=True)
    p = _common(cdrs.add_parser("list", help="call records, oldest first (streamed)"))
    p.add_argument("--card", help="only this card's calls (card number)")
    p.add_argument("--account", help="only this account's calls (account number)")
    p.add_argument("--destination",
                   help="dialled numbers starting with these digits, or a destination name")
    p.add_argument("--status", choices=["answered", "unanswered"])
    p.add_argument("--cause", help="hang-up cause (ANSWER, BUSY, NOANSWER, CONGESTION...)")
    p.add_argument("--limit", type=whole_arg, help="at most this many records")
    p.set_defaults(func=cmd_cdrs)

    p = _common(sub.add_parser(
        "reports", help="calls, minutes, revenue, top-ups, ASR and ACD per day or month"))
    p.add_argument("period", choices=["daily", "monthly"])
    p.add_argument("--by", choices=["destination", "plan"], help="one row per group too")
    p.set_defaults(func=cmd_reports)
