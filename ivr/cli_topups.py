"""Operator commands for paid top-ups: ``ivr auto-recharge``, ``ivr notices``,
``ivr payments list`` and ``ivr payments reconcile`` (each with --json). Card numbers are
never shown: only the last four digits exist."""

from __future__ import annotations

import argparse
from datetime import UTC
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from .cli_admin import _money, _whole, open_db
from .cli_common import CommandError, command, money
from .cli_common import emit as _emit
from .config import Settings
from .db.models import Account, Payment, RatingPlan


def _amount(value: Decimal | None, decimals: int) -> str | None:
    return None if value is None else money(value, decimals)


# --------------------------------------------------------------------------- auto-recharge


def cmd_auto_recharge(settings: Settings, args: argparse.Namespace) -> int:
    from .accounts import find_account
    from .payments import active_method

    given = [args.threshold, args.amount, args.daily_cap]
    if args.off and any(v is not None for v in given):
        raise CommandError("give --off alone, or --threshold and --amount")
    if not args.off and any(v is not None for v in given):
        if args.threshold is None or args.amount is None:
            raise CommandError("auto-recharge needs both --threshold and --amount")
        if args.threshold < 0:
            raise CommandError("--threshold cannot be negative")
        if args.amount <= 0:
            raise CommandError("--amount must be positive")
        if args.daily_cap is not None and args.daily_cap < args.amount:
            raise CommandError(f"--daily-cap {args.daily_cap} is below one recharge of "
                               f"{args.amount}: auto-recharge could never fire")
    db = open_db(settings)
    with db.transaction() as s:
        account = find_account(s, args.account)
        if args.off:
            account.auto_recharge_threshold = None
            account.auto_recharge_amount = None
            account.auto_recharge_daily_cap = None
        elif args.threshold is not None:
            account.auto_recharge_threshold = args.threshold
            account.auto_recharge_amount = args.amount
            account.auto_recharge_daily_cap = args.daily_cap
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
        _emit(args, data, text)
    return 0


def _auto_dict(a: Account) -> dict[str, Any]:
    decimals = a.plan.decimals
    return {"account": a.number, "currency": a.currency,
            "auto_recharge": a.auto_recharge_threshold is not None,
            "threshold": _amount(a.auto_recharge_threshold, decimals),
            "amount": _amount(a.auto_recharge_amount, decimals),
            "daily_cap": _amount(a.auto_recharge_daily_cap, decimals)}


# --------------------------------------------------------------------------- notices


def cmd_notices(settings: Settings, args: argparse.Namespace) -> int:
    from .accounts import find_account
    from .notify import reset_notice_if_topped_up
    from .numbers import normalise_callerid

    changes = [args.email, args.sms, args.below]
    if args.off and any(v is not None for v in changes):
        raise CommandError("give --off alone, or --email/--sms/--below")
    if args.email is not None and args.email and "@" not in args.email:
        raise CommandError(f"not an e-mail address: {args.email!r}")
    if args.below is not None and args.below < 0:
        raise CommandError("--below cannot be negative")
    sms = args.sms
    if sms:
        sms = normalise_callerid(sms, settings.default_region)
        if sms is None:
            raise CommandError(f"not a telephone number: {args.sms!r}")
    db = open_db(settings)
    with db.transaction() as s:
        account = find_account(s, args.account)
        if args.off:
            account.low_balance_notice = None
            account.low_balance_notified_at = None
        if args.email is not None:
            account.email = args.email or None  # --email "" removes it
        if args.sms is not None:
            account.sms_number = sms or None
        if args.below is not None:
            account.low_balance_notice = args.below
            reset_notice_if_topped_up(s, account)
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
        _emit(args, data, text)
    return 0


# --------------------------------------------------------------------------- payments


def cmd_payments(settings: Settings, args: argparse.Namespace) -> int:
    from .accounts import find_account

    db = open_db(settings)
    with db.transaction() as s:
        query = (select(Payment, Account.number, RatingPlan.decimals)
                 .join(Account, Account.id == Payment.account_id)
                 .join(RatingPlan, RatingPlan.id == Account.plan_id)
                 .order_by(Payment.id.desc()).limit(args.limit))
        if args.account:
            query = query.where(Payment.account_id == find_account(s, args.account).id)
        rows = [{"payment_id": p.payment_id, "at": p.created_at.replace(tzinfo=UTC)
                 if p.created_at.tzinfo is None else p.created_at,
                 "account": number, "source": p.source, "amount": money(p.amount, decimals),
                 "currency": p.currency, "status": p.status, "last4": p.last4,
                 "reason": p.reason}
                for p, number, decimals in s.execute(query).all()]
    text = "\n".join(
        f"{r['at']:%Y-%m-%d %H:%M:%S} {r['account']:12} {r['source']:6} "
        f"{r['amount']:>10} {r['currency']} {r['status']:8} ...{r['last4'] or '----'}  "
        f"{r['payment_id']}{'  ' + r['reason'] if r['reason'] else ''}" for r in rows)
    _emit(args, {"payments": rows}, text or "no payments")
    return 0


def cmd_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio
    from datetime import timedelta

    from .payments import gateway_from_settings, reconcile

    db = open_db(settings)
    older = timedelta(seconds=settings.payment_reconcile_after
                      if args.older_than is None else args.older_than)
    decided = asyncio.run(reconcile(db, gateway_from_settings(settings), older_than=older))
    with db.transaction() as s:  # each amount with its account's plan's decimals
        places = dict(s.execute(
            select(Payment.payment_id, RatingPlan.decimals)
            .join(Account, Account.id == Payment.account_id)
            .join(RatingPlan, RatingPlan.id == Account.plan_id)
            .where(Payment.payment_id.in_([r.payment_id for r in decided]))).all())
    rows = [{"payment_id": r.payment_id, "verdict": r.verdict.value,
             "amount": money(r.amount, places.get(r.payment_id, 2)), "last4": r.last4,
             "reason": r.reason, "balance": money(r.balance, places.get(r.payment_id, 2))}
            for r in decided]
    text = "\n".join(
        f"{r['payment_id']}: {r['verdict']} {r['amount']} ...{r['last4'] or '----'}"
        f"{'  ' + r['reason'] if r['reason'] else ''}" for r in rows)
    _emit(args, {"reconciled": rows}, text or "no payments left to reconcile")
    return 0


# --------------------------------------------------------------------------- parser


def add_commands(sub: argparse._SubParsersAction) -> None:
    def with_json(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    p = with_json(sub.add_parser(
        "auto-recharge", help="charge the linked card when the balance falls low"))
    p.add_argument("account")
    p.add_argument("--threshold", type=_money, help="recharge when the balance falls below")
    p.add_argument("--amount", type=_money, help="amount charged per recharge")
    p.add_argument("--daily-cap", type=_money,
                   help="most auto-recharged per UTC day (default: no cap)")
    p.add_argument("--off", action="store_true", help="turn auto-recharge off")
    p.set_defaults(func=command(cmd_auto_recharge))

    p = with_json(sub.add_parser("notices", help="low-balance notices by e-mail and SMS"))
    p.add_argument("account")
    p.add_argument("--email", help="address for notices (\"\" removes it)")
    p.add_argument("--sms", help="telephone number for notices (\"\" removes it)")
    p.add_argument("--below", type=_money, help="notify when the balance falls below this")
    p.add_argument("--off", action="store_true", help="turn notices off")
    p.set_defaults(func=command(cmd_notices))

    payments = sub.add_parser("payments", help="card payments (top-ups)").add_subparsers(
        dest="action", required=True)
    p = with_json(payments.add_parser("list", help="recent payments, newest first"))
    p.add_argument("--account", help="only this account's")
    p.add_argument("--limit", type=_whole, default=50)
    p.set_defaults(func=command(cmd_payments))
    p = with_json(payments.add_parser(
        "reconcile", help="settle pending or timed-out payments with the gateway"))
    p.add_argument("--older-than", type=float, default=None, metavar="SECONDS",
                   help="only payments at least this old (default: payment_reconcile_after)")
    p.set_defaults(func=command(cmd_reconcile))
