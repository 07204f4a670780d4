"""Accounts and calling cards: ``ivr accounts ...`` and ``ivr cards ...``. The rules are
in ivr.money.accounts; these commands read the options, call it and print the result."""

from __future__ import annotations

import argparse
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import select

from ..config import Settings
from ..db import Database
from ..db.models import Account, Card, CardStatus, EntryKind
from .common import (
    EXIT_REFUSED,
    EXIT_USAGE,
    CommandError,
    check_decimals,
    command,
    day_arg,
    emit,
    money,
    open_db,
    parse_amount,
    whole_arg,
    with_json,
)

# --------------------------------------------------------------------------- accounts


@command
def cmd_accounts(settings: Settings, args: argparse.Namespace) -> int:
    from ..money.accounts import create_account, credit_account, find_account, history
    from ..money.rates_store import get_plan

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
        elif args.action == "credit":
            account, entry, new = credit_account(s, args.account, amount,
                                                 EntryKind(args.kind), ref=args.ref,
                                                 note=args.note)
        else:
            account = find_account(s, args.account)
        decimals = account.plan.decimals
        if args.action == "credit":
            data = _account_dict(account) | {"entry": entry.id, "applied": new}
            if new:
                text = (f"account {account.number} credited {money(amount, decimals)} "
                        f"{account.currency}; balance {data['balance']}")
            else:
                text = (f"account {account.number}: --ref {args.ref} was already applied; "
                        f"nothing changed; balance {data['balance']}")
            emit(args, data, text)
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
            emit(args, _account_dict(account) | {"entries": rows}, text or "no entries")
            return 0
        cards = s.scalars(select(Card).where(Card.account_id == account.id)).all()
        data = _account_dict(account) | {"cards": [_card_dict(c) for c in cards]}
        emit(args, data, f"account {account.number} ({account.status.value}) balance "
                         f"{data['balance']} {account.currency}, held "
                         f"{data['reserved']}, {len(cards)} card(s)")
    return 0


def _account_dict(a: Account) -> dict[str, Any]:
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


@command
def cmd_cards(settings: Settings, args: argparse.Namespace) -> int:
    from ..money.accounts import find_card, issue_card_file, set_card_callerid, set_card_status
    from ..secrets import pin_keys_of

    db = open_db(settings)
    if args.action == "issue":
        from tqdm import tqdm

        plan, balance = _issue_options(db, args)
        keys = pin_keys_of(settings)  # data_dir/pin.key or the pin_key setting
        # A bar on a terminal (stderr); quiet when stderr is not one, or under --json.
        with tqdm(total=args.count, unit="card", unit_scale=True, desc="issuing",
                  disable=True if getattr(args, "json", False) else None) as bar:
            _, count = issue_card_file(db, plan, args.count, balance, Path(args.out),
                                       pin_keys=keys, account=args.account,
                                       pin_length=args.pin_length, expires_on=args.expires,
                                       batch=args.batch, progress=bar.update)
        emit(args, {"issued": count, "out": args.out},
             f"{count} card(s) written to {args.out} (the only copy of their PINs)")
        return 0
    if args.action == "set-callerid":
        callerid = _callerid_option(args)
    with db.transaction() as s:
        if args.action == "show":
            card = find_card(s, args.card)
        elif args.action == "set-callerid":
            card = set_card_callerid(s, find_card(s, args.card), callerid,
                                     settings.default_region)
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
        emit(args, data, text)
    return 0


def _callerid_option(args: argparse.Namespace) -> str | None:
    """The caller ID ``cards set-callerid`` registers, None with --clear."""
    if args.clear:
        if args.callerid:
            raise CommandError("give a caller ID or --clear, not both", "conflicting_options")
        return None
    if not args.callerid:
        raise CommandError("give the caller ID to register, or --clear to remove it",
                           "missing_option")
    return str(args.callerid)


def _issue_options(db: Database, args: argparse.Namespace) -> tuple[str, Decimal]:
    """The plan and opening balance of ``cards issue`` (ivr.money.accounts.issue_options:
    options that would be ignored, --balance or another --plan with --account, are
    refused, not dropped)."""
    from ..money.accounts import IssueRefused, issue_options

    try:
        with db.transaction() as s:
            return issue_options(s, plan=args.plan, balance=args.balance,
                                 account=args.account, expires_on=args.expires,
                                 batch=args.batch)
    except IssueRefused as exc:
        raise CommandError(str(exc), exc.code, EXIT_USAGE if exc.code == "missing_option"
                           else EXIT_REFUSED) from None


# --------------------------------------------------------------------------- parser


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    accounts = sub.add_parser("accounts", help="accounts and their ledger").add_subparsers(
        dest="action", required=True)
    p = with_json(accounts.add_parser("create", help="create an account"))
    p.add_argument("--plan", required=True)
    p.add_argument("--balance", default="0")
    p.add_argument("--name", default="")
    p.add_argument("--number", help="account number (default: generated)")
    p.set_defaults(func=cmd_accounts)
    for name in ("show", "history"):
        p = with_json(accounts.add_parser(name))
        p.add_argument("account")
        if name == "history":
            p.add_argument("--limit", type=whole_arg, default=50)
        p.set_defaults(func=cmd_accounts)
    p = with_json(accounts.add_parser("credit", help="top up (or adjust) an account"))
    p.add_argument("account")
    p.add_argument("amount", help="e.g. 12.50 (a negative --kind adjustment takes money off)")
    p.add_argument("--kind", choices=["topup", "adjustment", "refund", "voucher"],
                   default="topup")
    p.add_argument("--ref", help="idempotency key: the same ref is applied once")
    p.add_argument("--note", default="")
    p.set_defaults(func=cmd_accounts)

    cards = sub.add_parser("cards", help="calling cards").add_subparsers(dest="action",
                                                                         required=True)
    p = with_json(cards.add_parser("issue", help="issue a batch of cards"))
    p.add_argument("--plan", help="plan of the new accounts (not needed with --account)")
    p.add_argument("--count", type=whole_arg, required=True)
    p.add_argument("--balance", help="opening balance of each new account (default 0; not "
                   "with --account)")
    p.add_argument("--out", required=True, help="CSV with numbers and PINs (mode 0600)")
    p.add_argument("--account", help="add the cards to this existing (shared) account")
    p.add_argument("--expires", type=day_arg, help="expiry date YYYY-MM-DD")
    p.add_argument("--pin-length", type=whole_arg, default=4)
    p.add_argument("--batch", help="batch label (default: generated)")
    p.set_defaults(func=cmd_cards)
    for name in ("show", "lock", "unlock"):
        p = with_json(cards.add_parser(name))
        p.add_argument("card")
        p.set_defaults(func=cmd_cards)
    p = with_json(cards.add_parser(
        "set-callerid", help="register the caller ID a card logs in from without its PIN"))
    p.add_argument("card")
    p.add_argument("callerid", nargs="?",
                   help="telephone number, national (default_region) or +international")
    p.add_argument("--clear", action="store_true", help="remove the card's caller ID")
    p.set_defaults(func=cmd_cards)
