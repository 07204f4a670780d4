"""Operator commands: database, plans, rate decks, accounts and cards (each with --json)."""

from __future__ import annotations

import argparse
import csv
import re
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .cli_common import EXIT_REFUSED, EXIT_USAGE, CommandError, command, emit, money
from .config import Settings
from .db import Database
from .db.migrate import current_revision, ensure_schema, upgrade
from .db.models import Card, CardStatus, EntryKind, Rate, RatingPlan
from .db.types import MONEY_SCALE

__all__ = ["EXIT_REFUSED", "EXIT_USAGE", "CommandError", "add_commands", "open_db",
           "parse_amount", "run_admin"]
_emit = emit  # the name the command groups used before ivr.cli_common


# Every amount typed on the command line goes through parse_amount: plain ASCII decimals
# (no exponent, no digits of other scripts, which Python's Decimal would take), below a
# trillion, at most the 6 decimals the database keeps; commands then hold an amount to
# its plan's decimals (check_decimals).
_AMOUNT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")
MAX_AMOUNT = Decimal(10) ** 12
_WHOLE = re.compile(r"[0-9]{1,9}")


def parse_amount(text: str, what: str = "amount") -> Decimal:
    """An amount typed by the operator, exactly; CommandError (one line) if it is not
    a plain decimal like 12.50, is out of range or has more than 6 decimals."""
    if not _AMOUNT.fullmatch(text.strip()):
        raise CommandError(f"{what}: not an amount: {text!r} (digits with an optional "
                           "decimal point, like 12.50)", "bad_amount")
    value = Decimal(text.strip())
    if abs(value) >= MAX_AMOUNT:
        raise CommandError(f"{what}: {text} is out of range (below {MAX_AMOUNT:,})",
                           "bad_amount")
    if value != value.quantize(Decimal(1).scaleb(-MONEY_SCALE)):
        raise CommandError(f"{what}: {text} has more than {MONEY_SCALE} decimals",
                           "bad_amount")
    return value


def check_decimals(amount: Decimal, decimals: int, whose: str, what: str = "amount") -> None:
    """Refuse an amount finer than its plan's (currency's) smallest unit."""
    if amount != amount.quantize(Decimal(1).scaleb(-decimals)):
        raise CommandError(f"{what}: {amount} has more decimals than {whose} allows "
                           f"({decimals})", "bad_amount")


def _money(text: str) -> Decimal:
    """parse_amount as an argparse type (for commands outside run_admin's handling)."""
    try:
        return parse_amount(text)
    except CommandError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _whole(text: str) -> int:
    """A count or a number of seconds: ASCII digits only (int() takes other scripts'
    digits and underscores), at most 9 of them."""
    if not _WHOLE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r} (ASCII digits, "
                                         "at most 999999999)")
    return int(text)


def _when(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def open_db(settings: Settings) -> Database:
    """The database, reachable and at the current schema (SQLite is migrated on the fly;
    PostgreSQL wants an explicit `ivr db upgrade`)."""
    db = Database(settings.effective_database_url)
    db.ping()
    ensure_schema(db.engine, auto=db.is_sqlite)
    return db


# --------------------------------------------------------------------------- db


def cmd_db(settings: Settings, args: argparse.Namespace) -> int:
    db = Database(settings.effective_database_url)
    db.ping()
    if args.action == "upgrade":
        upgrade(db.engine)
    revision = current_revision(db.engine)
    _emit(args, {"database": db.safe_url, "revision": revision},
          f"database {db.safe_url} at revision {revision}")
    return 0


# --------------------------------------------------------------------------- plans


def cmd_plans(settings: Settings, args: argparse.Namespace) -> int:
    from .rates_store import create_plan

    db = open_db(settings)
    with db.transaction() as s:
        if args.action == "create":
            max_cost = (None if args.max_cost is None
                        else parse_amount(args.max_cost, "--max-cost"))
            plan = create_plan(s, args.name, args.currency, args.tz, args.decimals,
                               args.rounding, max_cost)
            _emit(args, _plan_dict(plan), f"plan {plan.name} created ({plan.currency})")
            return 0
        plans = s.scalars(select(RatingPlan).order_by(RatingPlan.name)).all()
        counts = dict(s.execute(select(Rate.plan_id, func.count()).group_by(Rate.plan_id)).all())
        rows = [_plan_dict(p) | {"rates": counts.get(p.id, 0)} for p in plans]
        text = "\n".join(
            f"{r['name']:16} {r['currency']} {r['tz']:20} {r['rounding']:8} "
            f"{r['decimals']} decimals  {r['rates']} rates" for r in rows
        ) or "no plans"
        _emit(args, {"plans": rows}, text)
    return 0


def _plan_dict(p: RatingPlan) -> dict[str, Any]:
    return {"name": p.name, "currency": p.currency, "tz": p.tz, "decimals": p.decimals,
            "rounding": p.rounding, "max_cost": p.max_cost, "rates_version": p.rates_version}


# --------------------------------------------------------------------------- rates


def cmd_rates(settings: Settings, args: argparse.Namespace) -> int:
    return {"import": _rates_import, "quote": _rates_quote, "max-seconds": _rates_max}[
        args.action
    ](settings, args)


def _rates_import(settings: Settings, args: argparse.Namespace) -> int:
    from .rates_store import import_deck

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
    _emit(args, {"plans": result.plans, "versions": result.versions}, text)
    return 0


def _table_for(settings: Settings, plan_name: str):  # noqa: ANN202
    from .rates_store import get_plan, load_table, plan_value

    db = open_db(settings)
    with db.transaction() as s:
        plan = get_plan(s, plan_name)
        return plan_value(plan), load_table(s, [plan])


def _rates_quote(settings: Settings, args: argparse.Namespace) -> int:
    from .rating import quote

    plan, table = _table_for(settings, args.plan)
    at = args.at or datetime.now(UTC)
    q = quote(table, plan, args.number, args.seconds, at, args.service)
    data = {
        "plan": q.plan, "number": q.number, "seconds": q.seconds,
        "charged_seconds": q.charged_seconds, "cost": money(q.cost, plan.decimals),
        "currency": q.currency, "prefix": q.prefix, "destination": q.destination,
        "connect_fee": money(q.connect_fee, plan.decimals),
        "at": at.isoformat(),
    }
    _emit(args, data, f"{data['cost']} {q.currency} for {q.seconds}s to {q.number} "
                      f"({q.destination}, prefix {q.prefix})")
    return 0


def _rates_max(settings: Settings, args: argparse.Namespace) -> int:
    from .rating import max_seconds, quote

    balance = parse_amount(args.balance, "--balance")
    plan, table = _table_for(settings, args.plan)
    at = args.at or datetime.now(UTC)
    seconds = max_seconds(table, plan, args.number, balance, at, args.service)
    q = quote(table, plan, args.number, max(seconds, 1), at, args.service)
    data = {"plan": plan.name, "number": args.number, "balance": money(balance, plan.decimals),
            "max_seconds": seconds, "prefix": q.prefix, "destination": q.destination,
            "currency": plan.currency, "at": at.isoformat()}
    text = (f"{seconds}s ({seconds // 60} min {seconds % 60} s) to {args.number} "
            f"({q.destination}) for {data['balance']} {plan.currency}")
    if seconds == 0:
        text += ": refused, the balance does not cover the connect fee or first block"
    _emit(args, data, text)
    return 0


# --------------------------------------------------------------------------- accounts


def cmd_accounts(settings: Settings, args: argparse.Namespace) -> int:
    from .accounts import create_account, find_account, history
    from .ledger import credit
    from .rates_store import get_plan

    if args.action in ("create", "credit"):
        amount = parse_amount(args.balance if args.action == "create" else args.amount,
                              "--balance" if args.action == "create" else "amount")
    db = open_db(settings)
    with db.transaction() as s:
        if args.action == "create":
            plan = get_plan(s, args.plan)
            check_decimals(amount, plan.decimals, f"plan {plan.name!r}", "--balance")
            account = create_account(s, args.plan, number=args.number, name=args.name,
                                     balance=amount)
        else:
            account = find_account(s, args.account)
        decimals = account.plan.decimals
        if args.action == "credit":
            check_decimals(amount, account.plan.decimals, f"the account's plan "
                           f"({account.plan.name}, {account.currency})")
            entry, new = credit(s, account.id, amount, EntryKind(args.kind),
                                ref=args.ref, note=args.note)
            data = _account_dict(account) | {"entry": entry.id, "applied": new}
            if new:
                text = (f"account {account.number} credited {money(amount, decimals)} "
                        f"{account.currency}; balance {data['balance']}")
            else:
                text = (f"account {account.number}: --ref {args.ref} was already applied; "
                        f"nothing changed; balance {data['balance']}")
            _emit(args, data, text)
            return 0
        if args.action == "history":
            entries = history(s, account, args.limit)
            rows = [{"id": e.id, "at": e.created_at, "kind": e.kind.value,
                     "amount": money(e.amount, decimals),
                     "balance_after": money(e.balance_after, decimals), "ref": e.ref,
                     "note": e.note} for e in entries]
            text = "\n".join(f"{r['at']:%Y-%m-%d %H:%M:%S} {r['kind']:10} "
                             f"{r['amount']:>14} {r['balance_after']:>14}  "
                             f"{r['note']}" for r in rows)
            _emit(args, _account_dict(account) | {"entries": rows}, text or "no entries")
            return 0
        cards = s.scalars(select(Card).where(Card.account_id == account.id)).all()
        data = _account_dict(account) | {"cards": [_card_dict(c) for c in cards]}
        _emit(args, data, f"account {account.number} ({account.status.value}) balance "
                          f"{data['balance']} {account.currency}, held "
                          f"{data['reserved']}, {len(cards)} card(s)")
    return 0


def _account_dict(a: Any) -> dict[str, Any]:
    decimals = a.plan.decimals
    return {"account": a.number, "name": a.name, "status": a.status.value,
            "currency": a.currency, "balance": money(a.balance, decimals),
            "reserved": money(a.reserved, decimals),
            "available": money(a.balance - a.reserved, decimals)}


def _card_dict(c: Card) -> dict[str, Any]:
    # The full number is the card's identifier; the PIN is never shown (only its hash
    # exists).
    return {"card": c.number, "status": c.status.value, "expires_on": c.expires_on,
            "batch": c.batch, "control": c.is_control, "failed_pins": c.failed_pins}


# --------------------------------------------------------------------------- cards


def cmd_cards(settings: Settings, args: argparse.Namespace) -> int:
    from .accounts import find_card, issue_cards, set_card_status

    db = open_db(settings)
    if args.action == "issue":
        plan, balance = _issue_options(db, args)
        cards = issue_cards(db, plan, args.count, balance, Path(args.out),
                            account=args.account, pin_length=args.pin_length,
                            expires_on=args.expires, batch=args.batch)
        _emit(args, {"issued": len(cards), "out": args.out},
              f"{len(cards)} card(s) written to {args.out} (the only copy of their PINs)")
        return 0
    with db.transaction() as s:
        if args.action == "show":
            card = find_card(s, args.card)
        elif args.action == "set-callerid":
            card = _set_callerid(s, find_card(s, args.card), args, settings.default_region)
        else:
            status = CardStatus.LOCKED if args.action == "lock" else CardStatus.ACTIVE
            card = set_card_status(s, args.card, status)
        account = card.account
        data = _card_dict(card) | {"account": account.number,
                                   "balance": money(account.balance,
                                                    account.plan.decimals),
                                   "currency": account.currency,
                                   "callerid": card.callerid}
        text = (f"card ...{card.number[-4:]} {card.status.value}, account "
                f"{account.number} balance {data['balance']} {account.currency}")
        if args.action == "set-callerid":
            text = (f"card ...{card.number[-4:]}: pinless log-in from caller ID "
                    f"{card.callerid}" if card.callerid else
                    f"card ...{card.number[-4:]}: no caller ID registered (PIN log-in only)")
        _emit(args, data, text)
    return 0


def _issue_options(db: Database, args: argparse.Namespace) -> tuple[str, Decimal]:
    """The plan and opening balance of ``cards issue``; options that would be ignored
    (--balance, or another --plan, with --account) are refused, not dropped."""
    from .accounts import find_account
    from .rates_store import get_plan

    if args.account is None:
        if args.plan is None:
            raise CommandError("give --plan (the new accounts' plan), or --account to add "
                               "the cards to an existing account", "missing_option",
                               EXIT_USAGE)
        balance = parse_amount("0" if args.balance is None else args.balance, "--balance")
        with db.transaction() as s:
            plan = get_plan(s, args.plan)
            check_decimals(balance, plan.decimals, f"plan {plan.name!r}", "--balance")
        return plan.name, balance
    if args.balance is not None:
        raise CommandError(f"--balance cannot be used with --account: the cards share "
                           f"account {args.account}'s balance (top it up with: ivr accounts "
                           f"credit {args.account} AMOUNT)", "conflicting_options")
    with db.transaction() as s:
        plan_name = find_account(s, args.account).plan.name
    if args.plan is not None and args.plan != plan_name:
        raise CommandError(f"--plan {args.plan} does not match account {args.account}, "
                           f"which is on plan {plan_name} (leave --plan out with --account)",
                           "conflicting_options")
    return plan_name, Decimal(0)


def _set_callerid(s: Session, card: Card, args: argparse.Namespace, region: str) -> Card:
    """Register (or with --clear, remove) the caller ID a card logs in from without a PIN."""
    from .numbers import normalise_callerid

    if args.clear:
        if args.callerid:
            raise CommandError("give a caller ID or --clear, not both", "conflicting_options")
        card.callerid = None
        return card
    if not args.callerid:
        raise CommandError("give the caller ID to register, or --clear to remove it",
                           "missing_option")
    callerid = normalise_callerid(args.callerid, region)
    if callerid is None:
        raise CommandError(f"not a caller ID: {args.callerid!r} (a telephone number, as "
                           f"dialled in {region} or with a leading +)", "bad_argument")
    other = s.scalar(select(Card).where(Card.callerid == callerid, Card.id != card.id))
    if other is not None:
        raise CommandError(f"caller ID {callerid} is already registered to card "
                           f"{other.number}; clear it there first (ivr cards set-callerid "
                           f"{other.number} --clear)", "callerid_taken")
    card.callerid = callerid
    return card


# --------------------------------------------------------------------------- vouchers


def cmd_vouchers(settings: Settings, args: argparse.Namespace) -> int:
    from .runtime import get_secret_key
    from .vouchers import find, generate, void

    db = open_db(settings)
    key = get_secret_key(settings)
    if args.action == "generate":
        value = parse_amount(args.value, "--value")
        currency = args.currency or _only_currency(db)
        decimals = _currency_decimals(db, currency)
        if decimals is not None:
            check_decimals(value, decimals, f"the {currency.upper()} plans", "--value")
        vouchers = generate(db, args.count, value, currency, Path(args.out),
                            length=args.length, expires_on=args.expires, batch=args.batch,
                            key=key)
        batch, currency = vouchers[0].batch, vouchers[0].currency
        shown = money(value, 2 if decimals is None else decimals)
        _emit(args, {"generated": len(vouchers), "out": args.out, "batch": batch,
                     "value": shown, "currency": currency, "expires_on": args.expires},
              f"{len(vouchers)} voucher(s) of {shown} {currency} "
              f"(batch {batch}) written to {args.out} (the only copy of their codes)")
        return 0
    info = (find(db, args.code, key=key) if args.action == "show"
            else void(db, args.code, key=key))
    decimals = _currency_decimals(db, info.currency)
    data = {"voucher": f"...{info.last4}", "status": info.status.value,
            "value": money(info.value, 2 if decimals is None else decimals),
            "currency": info.currency, "batch": info.batch,
            "expires_on": info.expires_on, "redeemed_at": info.redeemed_at,
            "redeemed_by": info.redeemed_by, "created_at": info.created_at}
    text = (f"voucher ...{info.last4} {info.status.value}: {data['value']} "
            f"{info.currency}, batch {info.batch}")
    if info.expires_on:
        text += f", expires {info.expires_on}"
    if info.redeemed_by:
        text += f", redeemed by account {info.redeemed_by} at {info.redeemed_at:%Y-%m-%d %H:%M}"
    _emit(args, data, text)
    return 0


def _currency_decimals(db: Database, currency: str) -> int | None:
    """The decimals amounts in ``currency`` are shown with (its finest plan's), if any."""
    with db.transaction() as s:
        return s.scalar(select(func.max(RatingPlan.decimals))
                        .where(RatingPlan.currency == currency.upper()))


def _only_currency(db: Database) -> str:
    """The currency of the rating plans, when they all share one (--currency otherwise)."""
    with db.transaction() as s:
        currencies = sorted(set(s.scalars(select(RatingPlan.currency))))
    if len(currencies) != 1:
        raise CommandError("give --currency" + (f" (plans use {', '.join(currencies)})"
                                                if currencies else ""), "missing_option")
    return currencies[0]


# --------------------------------------------------------------------------- parser


def add_commands(sub: argparse._SubParsersAction) -> None:
    def with_json(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    p = with_json(sub.add_parser("db", help="database schema"))
    p.add_argument("action", choices=["upgrade", "status"])
    p.set_defaults(func=command(cmd_db))

    plans = sub.add_parser("plans", help="rating plans").add_subparsers(dest="action",
                                                                        required=True)
    p = with_json(plans.add_parser("create", help="create a rating plan"))
    p.add_argument("name")
    p.add_argument("--currency", required=True)
    p.add_argument("--tz", default="UTC", help="time zone of the plan's time windows")
    p.add_argument("--decimals", type=_whole, default=4,
                   help="a call's total is rounded to this")
    p.add_argument("--rounding", choices=["up", "half-up", "down"], default="up")
    p.add_argument("--max-cost", help="cap on the cost of one call")
    p.set_defaults(func=command(cmd_plans))
    p = with_json(plans.add_parser("list", help="list plans"))
    p.set_defaults(func=command(cmd_plans))

    rates = sub.add_parser("rates", help="rate decks and quotes").add_subparsers(
        dest="action", required=True)
    p = with_json(rates.add_parser("import", help="replace the rates of the deck's plans"))
    p.add_argument("deck", type=Path)
    p.add_argument("--format", choices=["ivr", "astpp"], default="ivr")
    p.add_argument("--plan", help="plan name (needed for --format astpp)")
    p.add_argument("--currency", help="create missing plans with this currency")
    p.add_argument("--tz", help="time zone of plans created by --currency (default UTC)")
    p.set_defaults(func=command(cmd_rates))
    for name, helptext in (("quote", "price of a call"),
                           ("max-seconds", "longest call a balance pays for")):
        p = with_json(rates.add_parser(name, help=helptext))
        p.add_argument("--plan", required=True)
        p.add_argument("--number", required=True)
        if name == "quote":
            p.add_argument("--seconds", type=_whole, required=True)
        else:
            p.add_argument("--balance", required=True)
        p.add_argument("--at", type=_when, help="ISO 8601 time of the call (default now)")
        p.add_argument("--service", default="voice")
        p.set_defaults(func=command(cmd_rates))

    accounts = sub.add_parser("accounts", help="accounts and their ledger").add_subparsers(
        dest="action", required=True)
    p = with_json(accounts.add_parser("create", help="create an account"))
    p.add_argument("--plan", required=True)
    p.add_argument("--balance", default="0")
    p.add_argument("--name", default="")
    p.add_argument("--number", help="account number (default: generated)")
    p.set_defaults(func=command(cmd_accounts))
    for name in ("show", "history"):
        p = with_json(accounts.add_parser(name))
        p.add_argument("account")
        if name == "history":
            p.add_argument("--limit", type=_whole, default=50)
        p.set_defaults(func=command(cmd_accounts))
    p = with_json(accounts.add_parser("credit", help="top up (or adjust) an account"))
    p.add_argument("account")
    p.add_argument("amount", help="e.g. 12.50 (a negative --kind adjustment takes money off)")
    p.add_argument("--kind", choices=["topup", "adjustment", "refund", "voucher"],
                   default="topup")
    p.add_argument("--ref", help="idempotency key: the same ref is applied once")
    p.add_argument("--note", default="")
    p.set_defaults(func=command(cmd_accounts))

    cards = sub.add_parser("cards", help="calling cards").add_subparsers(dest="action",
                                                                         required=True)
    p = with_json(cards.add_parser("issue", help="issue a batch of cards"))
    p.add_argument("--plan", help="plan of the new accounts (not needed with --account)")
    p.add_argument("--count", type=_whole, required=True)
    p.add_argument("--balance", help="opening balance of each new account (default 0; not "
                   "with --account)")
    p.add_argument("--out", required=True, help="CSV with numbers and PINs (mode 0600)")
    p.add_argument("--account", help="add the cards to this existing (shared) account")
    p.add_argument("--expires", type=_day, help="expiry date YYYY-MM-DD")
    p.add_argument("--pin-length", type=_whole, default=4)
    p.add_argument("--batch", help="batch label (default: generated)")
    p.set_defaults(func=command(cmd_cards))
    for name in ("show", "lock", "unlock"):
        p = with_json(cards.add_parser(name))
        p.add_argument("card")
        p.set_defaults(func=command(cmd_cards))
    p = with_json(cards.add_parser(
        "set-callerid", help="register the caller ID a card logs in from without its PIN"))
    p.add_argument("card")
    p.add_argument("callerid", nargs="?",
                   help="telephone number, national (default_region) or +international")
    p.add_argument("--clear", action="store_true", help="remove the card's caller ID")
    p.set_defaults(func=command(cmd_cards))

    vouchers = sub.add_parser("vouchers", help="recharge codes").add_subparsers(
        dest="action", required=True)
    p = with_json(vouchers.add_parser("generate", help="generate a batch of recharge codes"))
    p.add_argument("--count", type=_whole, required=True)
    p.add_argument("--value", required=True)
    p.add_argument("--currency", help="default: the plans' currency, if they share one")
    p.add_argument("--out", required=True, help="CSV with the codes (mode 0600)")
    p.add_argument("--expires", type=_day, help="last day of use YYYY-MM-DD")
    p.add_argument("--batch", help="batch label (default: generated)")
    p.add_argument("--length", type=_whole, default=14, help="digits, check digit included")
    p.set_defaults(func=command(cmd_vouchers))
    for name, helptext in (("show", "a voucher's state"),
                           ("void", "cancel an unused voucher")):
        p = with_json(vouchers.add_parser(name, help=helptext))
        p.add_argument("code")
        p.set_defaults(func=command(cmd_vouchers))


def run_admin(func: Any, settings: Settings, args: argparse.Namespace) -> int:
    """Run an operator command through ivr.cli_common.command (kept for callers)."""
    return command(func)(settings, args)
