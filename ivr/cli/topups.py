"""Paid top-ups: ``ivr auto-recharge``, ``ivr notices``, ``ivr payments list`` and
``ivr payments reconcile`` (each with --json). Card numbers are never shown: only their
last four digits exist. The rules of the settings are in ivr.money.accounts."""

from __future__ import annotations

import argparse
from decimal import Decimal
from typing import Any

from ..config import Settings
from ..db.models import Account
from .common import CommandError, amount_arg, command, emit, money, open_db, whole_arg, with_json


def _amount(value: Decimal | None, decimals: int) -> str | None:
    return None if value is None else money(value, decimals)


# --------------------------------------------------------------------------- auto-recharge


@command
def cmd_auto_recharge(settings: Settings, args: argparse.Namespace) -> int:
    from ..money.accounts import find_account, set_auto_recharge
    from ..payments import active_method

    given = [args.threshold, args.amount, args.daily_cap]
    if args.off and any(v is not None for v in given):
        raise CommandError("give --off alone, or --threshold and --amount")
    db = open_db(settings)
    with db.transaction() as s:
        account = find_account(s, args.account)
        if args.off:
            set_auto_recharge(account, None, None, None)
        elif any(v is not None for v in given):
            set_auto_recharge(account, args.threshold, args.amount, args.daily_cap)
        method = active_method(s, account.id)
        data = _auto_dict(account) | {
            "payment_method": None if method is None else
            {"last4": method.last4, "brand": method.brand, "expiry": method.expiry}}
        if account.auto_recharge_threshold is None:
            text = f"account {account.number}: auto-recharge off"
        else:
            cap = (f", at most {data['daily_cap']} a day"
                   if account.auto_recharge_daily_cap is not None else ", no daily cap")
            text = (f"account {account.number}: auto-recharge "
                    f"{data['amount']} {account.currency} when the "
                    f"balance falls below {data['threshold']}{cap}")
            text += (f"; charged to {method.brand or 'card'} ...{method.last4}" if method else
                     "; no payment method linked yet (one is saved by a card top-up in a "
                     "call), so nothing will be charged until then")
        emit(args, data, text)
    return 0


def _auto_dict(a: Account) -> dict[str, Any]:
    decimals = a.plan.decimals
    return {"account": a.number, "currency": a.currency,
            "auto_recharge": a.auto_recharge_threshold is not None,
            "threshold": _amount(a.auto_recharge_threshold, decimals),
            "amount": _amount(a.auto_recharge_amount, decimals),
            "daily_cap": _amount(a.auto_recharge_daily_cap, decimals)}


# --------------------------------------------------------------------------- notices


@command
def cmd_notices(settings: Settings, args: argparse.Namespace) -> int:
    from ..money.accounts import find_account, low_balance_notice_off, set_low_balance_notice

    if args.off and any(v is not None for v in (args.email, args.sms, args.below)):
        raise CommandError("give --off alone, or --email/--sms/--below")
    db = open_db(settings)
    with db.transaction() as s:
        account = find_account(s, args.account)
        if args.off:
            low_balance_notice_off(account)
        else:
            set_low_balance_notice(s, account, below=args.below, email=args.email,
                                   sms=args.sms, region=settings.default_region)
        data = {"account": account.number, "currency": account.currency,
                "below": _amount(account.low_balance_notice, account.plan.decimals),
                "email": account.email,
                "sms": account.sms_number,
                "notified_at": account.low_balance_notified_at}
        if account.low_balance_notice is None:
            text = f"account {account.number}: low-balance notices off"
        else:
            where = " and ".join(x for x in (account.email, account.sms_number) if x)
            text = (f"account {account.number}: notice when the balance falls below "
                    f"{data['below']} {account.currency}, to "
                    f"{where or 'nobody yet (give --email or --sms)'}")
            if account.low_balance_notified_at is not None:
                text += " (sent; again after a top-up)"
        emit(args, data, text)
    return 0


# --------------------------------------------------------------------------- payments


@command
def cmd_payments(settings: Settings, args: argparse.Namespace) -> int:
    from ..payments.reconcile import list_payments

    rows: list[dict[str, Any]] = [
        {"payment_id": p.payment_id, "at": p.at, "account": p.account, "source": p.source,
         "amount": money(p.amount, p.decimals), "currency": p.currency,
         "status": p.status, "last4": p.last4, "reason": p.reason}
        for p in list_payments(open_db(settings), account=args.account or None,
                               limit=args.limit)]
    text = "\n".join(
        f"{r['at']:%Y-%m-%d %H:%M:%S} {r['account']:12} {r['source']:6} "
        f"{r['amount']:>10} {r['currency']} {r['status']:8} ...{r['last4'] or '----'}  "
        f"{r['payment_id']}{'  ' + r['reason'] if r['reason'] else ''}" for r in rows)
    emit(args, {"payments": rows}, text or "no payments")
    return 0


@command
def cmd_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio
    from datetime import timedelta

    from ..payments import gateway_from_settings, reconcile
    from ..payments.reconcile import payment_decimals

    db = open_db(settings)
    older = timedelta(seconds=settings.payment_reconcile_after
                      if args.older_than is None else args.older_than)
    decided = asyncio.run(reconcile(db, gateway_from_settings(settings), older_than=older))
    places = payment_decimals(db, (r.payment_id for r in decided))
    rows = [{"payment_id": r.payment_id, "verdict": r.verdict.value,
             "amount": money(r.amount, places.get(r.payment_id, 2)), "last4": r.last4,
             "reason": r.reason, "balance": money(r.balance, places.get(r.payment_id, 2))}
            for r in decided]
    text = "\n".join(
        f"{r['payment_id']}: {r['verdict']} {r['amount']} ...{r['last4'] or '----'}"
        f"{'  ' + r['reason'] if r['reason'] else ''}" for r in rows)
    emit(args, {"reconciled": rows}, text or "no payments left to reconcile")
    return 0


# --------------------------------------------------------------------------- parser


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = with_json(sub.add_parser(
        "auto-recharge", help="charge the linked card when the balance falls low"))
    p.add_argument("account")
    p.add_argument("--threshold", type=amount_arg, help="recharge when the balance falls below")
    p.add_argument("--amount", type=amount_arg, help="amount charged per recharge")
    p.add_argument("--daily-cap", type=amount_arg,
                   help="most auto-recharged per UTC day (default: no cap)")
    p.add_argument("--off", action="store_true", help="turn auto-recharge off")
    p.set_defaults(func=cmd_auto_recharge)

    p = with_json(sub.add_parser("notices", help="low-balance notices by e-mail and SMS"))
    p.add_argument("account")
    p.add_argument("--email", help="address for notices (\"\" removes it)")
    p.add_argument("--sms", help="telephone number for notices (\"\" removes it)")
    p.add_argument("--below", type=amount_arg, help="notify when the balance falls below this")
    p.add_argument("--off", action="store_true", help="turn notices off")
    p.set_defaults(func=cmd_notices)

    payments = sub.add_parser("payments", help="card payments (top-ups)").add_subparsers(
        dest="action", required=True)
    p = with_json(payments.add_parser("list", help="recent payments, newest first"))
    p.add_argument("--account", help="only this account's")
    p.add_argument("--limit", type=whole_arg, default=50)
    p.set_defaults(func=cmd_payments)
    p = with_json(payments.add_parser(
        "reconcile", help="settle pending or timed-out payments with the gateway"))
    p.add_argument("--older-than", type=float, default=None, metavar="SECONDS",
                   help="only payments at least this old (default: payment_reconcile_after)")
    p.set_defaults(func=cmd_reconcile)
