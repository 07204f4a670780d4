"""Rating plans and rate decks: ``ivr plans ...`` and ``ivr rates import|quote|max-seconds``."""

from __future__ import annotations

import argparse
import csv
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from ..config import Settings
from ..db.models import Rate, RatingPlan
from .common import (
    CommandError,
    command,
    emit,
    money,
    open_db,
    parse_amount,
    time_arg,
    whole_arg,
    with_json,
)

# --------------------------------------------------------------------------- plans


@command
def cmd_plans(settings: Settings, args: argparse.Namespace) -> int:
    from ..money.rates_store import create_plan

    db = open_db(settings)
    with db.transaction() as s:
        if args.action == "create":
            max_cost = (None if args.max_cost is None
                        else parse_amount(args.max_cost, "--max-cost"))
            plan = create_plan(s, args.name, args.currency, args.tz, args.decimals,
                               args.rounding, max_cost)
            emit(args, _plan_dict(plan), f"plan {plan.name} created ({plan.currency})")
            return 0
        plans = s.scalars(select(RatingPlan).order_by(RatingPlan.name)).all()
        counts = dict(s.execute(select(Rate.plan_id, func.count()).group_by(Rate.plan_id)).all())
        rows = [_plan_dict(p) | {"rates": counts.get(p.id, 0)} for p in plans]
        text = "\n".join(
            f"{r['name']:16} {r['currency']} {r['tz']:20} {r['rounding']:8} "
            f"{r['decimals']} decimals  {r['rates']} rates" for r in rows
        ) or "no plans"
        emit(args, {"plans": rows}, text)
    return 0


def _plan_dict(p: RatingPlan) -> dict[str, Any]:
    return {"name": p.name, "currency": p.currency, "tz": p.tz, "decimals": p.decimals,
            "rounding": p.rounding, "max_cost": p.max_cost, "rates_version": p.rates_version}


# --------------------------------------------------------------------------- rates


@command
def cmd_rates(settings: Settings, args: argparse.Namespace) -> int:
    return {"import": _rates_import, "quote": _rates_quote, "max-seconds": _rates_max}[
        args.action
    ](settings, args)


def _rates_import(settings: Settings, args: argparse.Namespace) -> int:
    from ..money.rates_store import import_deck

    if args.format == "astpp" and not args.plan:
        raise CommandError("--format astpp needs --plan (the deck names no plan)",
                           "missing_option")
    if args.format == "ivr" and args.plan:
        raise CommandError("--plan is for --format astpp: an ivr deck names the plan on each "
                           "line", "conflicting_options")
    if args.tz is not None and not args.currency:
        raise CommandError("--tz is the time zone of plans created by --currency: give both, "
                           "or leave --tz out",
                           "conflicting_options")
    try:
        deck = open(args.deck, encoding="utf-8-sig", newline="")  # noqa: SIM115
    except OSError as exc:
        raise CommandError(f"cannot read {args.deck}: {exc.strerror or exc}",
                           "unreadable_file") from None
    with deck:
        db = open_db(settings)
        try:  # streamed: DeckError (every bad line) and nothing written, or all of it
            result = import_deck(db, deck, args.format, args.plan, currency=args.currency,
                                 tz=args.tz or "UTC")
        except UnicodeDecodeError as exc:
            raise CommandError(f"{args.deck} is not UTF-8 text ({exc.reason}); nothing "
                               "was imported", "unreadable_file") from None
        except (csv.Error, OSError) as exc:
            raise CommandError(f"cannot read {args.deck}: {exc}; nothing was imported",
                               "unreadable_file") from None
    text = "\n".join(f"plan {p}: {n} rates imported (version {result.versions[p]})"
                     for p, n in result.plans.items())
    emit(args, {"plans": result.plans, "versions": result.versions}, text)
    return 0


def _rates_quote(settings: Settings, args: argparse.Namespace) -> int:
    from ..money.rates_store import quote_call

    at = args.at or datetime.now(UTC)
    plan, q = quote_call(open_db(settings), args.plan, args.number, args.seconds, at,
                         args.service)
    data = {
        "plan": q.plan, "number": q.number, "seconds": q.seconds,
        "charged_seconds": q.charged_seconds, "cost": money(q.cost, plan.decimals),
        "currency": q.currency, "prefix": q.prefix, "destination": q.destination,
        "connect_fee": money(q.connect_fee, plan.decimals),
        "at": at.isoformat(),
    }
    emit(args, data, f"{data['cost']} {q.currency} for {q.seconds}s to {q.number} "
                     f"({q.destination}, prefix {q.prefix})")
    return 0


def _rates_max(settings: Settings, args: argparse.Namespace) -> int:
    from ..money.rates_store import longest_call

    balance = parse_amount(args.balance, "--balance")
    at = args.at or datetime.now(UTC)
    plan, seconds, q = longest_call(open_db(settings), args.plan, args.number, balance, at,
                                    args.service)
    data = {"plan": plan.name, "number": args.number, "balance": money(balance, plan.decimals),
            "max_seconds": seconds, "prefix": q.prefix, "destination": q.destination,
            "currency": plan.currency, "at": at.isoformat()}
    text = (f"{seconds}s ({seconds // 60} min {seconds % 60} s) to {args.number} "
            f"({q.destination}) for {data['balance']} {plan.currency}")
    if seconds == 0:
        text += ": refused, the balance does not cover the connect fee or first block"
    emit(args, data, text)
    return 0


# --------------------------------------------------------------------------- parser


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    plans = sub.add_parser("plans", help="rating plans").add_subparsers(dest="action",
                                                                        required=True)
    p = with_json(plans.add_parser("create", help="create a rating plan"))
    p.add_argument("name")
    p.add_argument("--currency", required=True)
    p.add_argument("--tz", default="UTC", help="time zone of the plan's time windows")
    p.add_argument("--decimals", type=whole_arg, default=4,
                   help="a call's total is rounded to this")
    p.add_argument("--rounding", choices=["up", "half-up", "down"], default="up")
    p.add_argument("--max-cost", help="cap on the cost of one call")
    p.set_defaults(func=cmd_plans)
    p = with_json(plans.add_parser("list", help="list plans"))
    p.set_defaults(func=cmd_plans)

    rates = sub.add_parser("rates", help="rate decks and quotes").add_subparsers(
        dest="action", required=True)
    p = with_json(rates.add_parser("import", help="replace the rates of the deck's plans"))
    p.add_argument("deck", type=Path)
    p.add_argument("--format", choices=["ivr", "astpp"], default="ivr")
    p.add_argument("--plan", help="plan name (needed for --format astpp)")
    p.add_argument("--currency", help="create missing plans with this currency")
    p.add_argument("--tz", help="time zone of plans created by --currency (default UTC)")
    p.set_defaults(func=cmd_rates)
    for name, helptext in (("quote", "price of a call"),
                           ("max-seconds", "longest call a balance pays for")):
        p = with_json(rates.add_parser(name, help=helptext))
        p.add_argument("--plan", required=True)
        p.add_argument("--number", required=True)
        if name == "quote":
            p.add_argument("--seconds", type=whole_arg, required=True)
        else:
            p.add_argument("--balance", required=True)
        p.add_argument("--at", type=time_arg, help="ISO 8601 time of the call (default now)")
        p.add_argument("--service", default="voice")
        p.set_defaults(func=cmd_rates)
