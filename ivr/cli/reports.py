"""Operator commands for call records and traffic reports: ``ivr cdrs list`` and
``ivr reports daily|monthly`` (text, --json or --csv). The queries are in ivr.money.reports."""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
from collections.abc import Iterable
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..config import Settings
from ..money.reports import CdrFilter, CdrRow, ReportRow, currency_decimals, iter_cdrs, report
from .common import CommandError, command, emit, money, open_db, whole_arg

_MONTH = re.compile(r"[0-9]{4}-[0-9]{2}")
CDR_FIELDS = ("id", "uniqueid", "started_at", "answered_at", "ended_at", "account", "card",
              "caller", "destination", "destination_name", "prefix", "plan", "service",
              "status", "billable_seconds", "cost", "currency", "hangup_cause")
REPORT_FIELDS = ("period", "group", "currency", "calls", "answered", "asr", "minutes",
                 "seconds", "acd", "revenue", "topups")


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CommandError(f"--tz: unknown time zone {name!r} (like UTC or Europe/Paris)",
                           "bad_argument") from None


def _time(text: str | None, tz: ZoneInfo, *, end: bool, what: str) -> datetime | None:
    """--from/--to: a month (YYYY-MM), a day (YYYY-MM-DD) or an ISO time, in ``tz`` unless
    it gives its offset. A month or day given as --to includes it."""
    if text is None:
        return None
    if _MONTH.fullmatch(text):
        year, month = int(text[:4]), int(text[5:])
        if not 1 <= month <= 12:
            raise CommandError(f"{what}: not a month: {text!r}", "bad_argument")
        if end:
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        return datetime(year, month, 1, tzinfo=tz)
    try:
        if len(text) == 10:
            day = date.fromisoformat(text) + timedelta(days=1 if end else 0)
            return datetime(day.year, day.month, day.day, tzinfo=tz)
        value = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(f"{what}: not a month, day or time: {text!r} (like 2026-11, "
                           "2026-11-18 or 2026-11-18T09:30)", "bad_argument") from None
    return value if value.tzinfo else value.replace(tzinfo=tz)


def _range(args: argparse.Namespace, tz: ZoneInfo) -> tuple[datetime | None, datetime | None]:
    start = _time(args.start, tz, end=False, what="--from")
    end = _time(args.end, tz, end=True, what="--to")
    if start is not None and end is not None and end <= start:
        raise CommandError("--to is not after --from", "bad_argument")
    return start, end


def _iso(value: datetime | None, tz: ZoneInfo) -> str | None:
    return None if value is None else value.astimezone(tz).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- cdrs


@command
def cmd_cdrs(settings: Settings, args: argparse.Namespace) -> int:
    tz = _zone(args.tz)
    start, end = _range(args, tz)
    flt = CdrFilter(start=start, end=end, card=args.card, account=args.account,
                    destination=args.destination, status=args.status, cause=args.cause)
    db = open_db(settings)
    with db.reading() as s:
        decimals = currency_decimals(s)
        rows = iter_cdrs(s, flt, limit=args.limit)  # refuses unknown cards/accounts now
        try:
            _write_cdrs(args, (_cdr_dict(r, tz, decimals) for r in rows), tz)
            sys.stdout.flush()
        except BrokenPipeError:  # `ivr cdrs list | head`: the reader has had enough
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _cdr_dict(r: CdrRow, tz: ZoneInfo, decimals: dict[str, int]) -> dict[str, Any]:
    return {"id": r.id, "uniqueid": r.uniqueid, "started_at": _iso(r.started_at, tz),
            "answered_at": _iso(r.answered_at, tz), "ended_at": _iso(r.ended_at, tz),
            "account": r.account, "card": r.card, "caller": r.caller,
            "destination": r.destination, "destination_name": r.destination_name,
            "prefix": r.prefix, "plan": r.plan, "service": r.service,
            "status": "answered" if r.answered else "unanswered",
            "billable_seconds": r.billable_seconds,
            "cost": money(r.cost, decimals.get(r.currency, 2)), "currency": r.currency,
            "hangup_cause": r.hangup_cause}


def _write_cdrs(args: argparse.Namespace, rows: Iterable[dict[str, Any]], tz: ZoneInfo) -> None:
    """Write rows as they come (never all of them at once)."""
    out = sys.stdout
    if args.csv:
        writer = csv.DictWriter(out, CDR_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
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
    data = [_report_dict(r, decimals.get(r.currency, 2)) for r in rows]
    if args.csv:
        writer = csv.DictWriter(sys.stdout, REPORT_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(data)
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
                "from": _iso(start, tz), "to": _iso(end, tz), "rows": data},
         "\n".join(lines) if data else "no calls or top-ups in this range")
    return 0


def _report_dict(r: ReportRow, decimals: int) -> dict[str, Any]:
    def text(value: Decimal | None) -> str | None:
        return None if value is None else str(value)

    return {"period": r.period, "group": r.group, "currency": r.currency, "calls": r.calls,
            "answered": r.answered, "asr": text(r.asr), "minutes": str(r.minutes),
            "seconds": r.seconds, "acd": text(r.acd), "revenue": money(r.revenue, decimals),
            "topups": None if r.topups is None else money(r.topups, decimals)}


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
