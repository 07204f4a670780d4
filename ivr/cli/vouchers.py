"""Recharge codes: ``ivr vouchers generate|show|void``. Codes are matched by a keyed hash
(ivr.money.vouchers), so every action needs the server's secret key (common.secret_key)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import Settings
from .common import (
    check_decimals,
    command,
    currency_decimals,
    day_arg,
    emit,
    money,
    only_currency,
    open_db,
    parse_amount,
    secret_key,
    whole_arg,
    with_json,
)


@command
def cmd_vouchers(settings: Settings, args: argparse.Namespace) -> int:
    from ..money.vouchers import find, generate, void

    db = open_db(settings)
    key = secret_key(settings)
    if args.action == "generate":
        value = parse_amount(args.value, "--value")
        currency = args.currency or only_currency(db)
        decimals = currency_decimals(db, currency)
        if decimals is not None:
            check_decimals(value, decimals, f"the {currency.upper()} plans", "--value")
        from tqdm import tqdm

        # A bar on a terminal (stderr); quiet when stderr is not one, or under --json.
        with tqdm(total=args.count, unit="code", unit_scale=True, desc="generating",
                  disable=True if getattr(args, "json", False) else None) as bar:
            vouchers = generate(db, args.count, value, currency, Path(args.out),
                                length=args.length, expires_on=args.expires,
                                batch=args.batch, key=key, progress=bar.update)
        batch, currency = vouchers[0].batch, vouchers[0].currency
        shown = money(value, 2 if decimals is None else decimals)
        emit(args, {"generated": len(vouchers), "out": args.out, "batch": batch,
                    "value": shown, "currency": currency, "expires_on": args.expires},
             f"{len(vouchers)} voucher(s) of {shown} {currency} "
             f"(batch {batch}) written to {args.out} (the only copy of their codes)")
        return 0
    info = (find(db, args.code, key=key) if args.action == "show"
            else void(db, args.code, key=key))
    decimals = currency_decimals(db, info.currency)
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
    emit(args, data, text)
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    vouchers = sub.add_parser("vouchers", help="recharge codes").add_subparsers(
        dest="action", required=True)
    p = with_json(vouchers.add_parser("generate", help="generate a batch of recharge codes"))
    p.add_argument("--count", type=whole_arg, required=True)
    p.add_argument("--value", required=True)
    p.add_argument("--currency", help="default: the plans' currency, if they share one")
    p.add_argument("--out", required=True, help="CSV with the codes (mode 0600)")
    p.add_argument("--expires", type=day_arg, help="last day of use YYYY-MM-DD")
    p.add_argument("--batch", help="batch label (default: generated)")
    p.add_argument("--length", type=whole_arg, default=14, help="digits, check digit included")
    p.set_defaults(func=cmd_vouchers)
    for name, helptext in (("show", "a voucher's state"),
                           ("void", "cancel an unused voucher")):
        p = with_json(vouchers.add_parser(name, help=helptext))
        p.add_argument("code")
        p.set_defaults(func=cmd_vouchers)
