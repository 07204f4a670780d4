"""Operators' recharge codes for the revalue line: ``ivr codes import|stock|void``
(ivr.revalue.codes). No command ever prints a code: they go into the pool encrypted under
the server's secret key (common.secret_key) and come out only to the customer who buys
one."""

from __future__ import annotations

import argparse
from decimal import Decimal
from pathlib import Path

from ..config import Settings
from ..db import Database
from .common import (
    CommandError,
    check_decimals,
    command,
    currency_decimals,
    emit,
    money,
    only_currency,
    open_db,
    parse_amount,
    secret_key,
    whole_arg,
    with_json,
)

_FILE_NOTE = "nothing was imported; the pool is unchanged"


@command
def cmd_import(settings: Settings, args: argparse.Namespace) -> int:
    from ..revalue.codes import CodeFileError, import_codes

    path = Path(args.file)
    if not path.is_file():
        raise CommandError(f"{path}: no such file", "not_found")
    db = open_db(settings)
    value, currency, decimals = _value(db, args)
    try:
        result = import_codes(db, path, operator=args.operator, value=value, currency=currency,
                              key=secret_key(settings), low_stock=settings.code_low_stock)
    except CodeFileError as exc:
        raise CommandError(f"{exc}\n{_FILE_NOTE}", "bad_file") from None
    shown = money(value, decimals)
    emit(args, {"imported": result.imported, "skipped": result.skipped,
                "available": result.available, "operator": args.operator.strip(),
                "value": shown, "currency": currency},
         f"{result.imported} code(s) imported into {args.operator.strip()} {shown} {currency}"
         f" ({result.skipped} already in the pool, skipped); {result.available} available")
    return 0


@command
def cmd_stock(settings: Settings, args: argparse.Namespace) -> int:
    from ..revalue.codes import stock

    db = open_db(settings)
    level = settings.code_low_stock
    pools = stock(db)
    shown = [money(p.value, _decimals(db, p.currency)) for p in pools]
    rows = [{"operator": p.operator, "currency": p.currency, "value": value,
             "available": p.available, "issued": p.issued, "void": p.void,
             "low": p.available <= level, "low_stock_noticed_at": p.low_stock_noticed_at}
            for p, value in zip(pools, shown, strict=True)]
    if not pools:
        text = "no recharge codes (import some with ivr codes import)"
    else:
        width = max(8, *(len(p.operator) for p in pools))
        lines = [f"{'operator':<{width}}  currency  {'value':>10}  available  issued  void"]
        lines += [f"{p.operator:<{width}}  {p.currency:<8}  {value:>10}  {p.available:>9}  "
                  f"{p.issued:>6}  {p.void:>4}" + ("  LOW" if p.available <= level else "")
                  for p, value in zip(pools, shown, strict=True)]
        text = "\n".join(lines)
    emit(args, {"low_stock_level": level, "pools": rows}, text)
    return 0


@command
def cmd_void(settings: Settings, args: argparse.Namespace) -> int:
    from ..revalue.codes import void_codes

    db = open_db(settings)
    value, currency, decimals = _value(db, args)
    voided = void_codes(db, operator=args.operator, value=value, currency=currency,
                        count=args.count)
    shown = money(value, decimals)
    emit(args, {"voided": voided, "operator": args.operator.strip(), "value": shown,
                "currency": currency},
         f"{voided} code(s) of {args.operator.strip()} {shown} {currency} voided")
    return 0


def _value(db: Database, args: argparse.Namespace) -> tuple[Decimal, str, int]:
    """(--value, --currency, the currency's decimals) as given, checked."""
    value = parse_amount(args.value, "--value")
    if value <= 0:
        raise CommandError(f"--value: {args.value} is not positive", "bad_amount")
    currency = (args.currency or only_currency(db)).strip().upper()
    decimals = _decimals(db, currency)
    check_decimals(value, decimals, f"the {currency} plans", "--value")
    return value, currency, decimals


def _decimals(db: Database, currency: str) -> int:
    """The decimals amounts in ``currency`` are shown with (its finest plan's; 2)."""
    found = currency_decimals(db, currency)
    return 2 if found is None else found


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    codes = sub.add_parser(
        "codes", help="operators' recharge codes for the revalue line").add_subparsers(
        dest="action", required=True)
    p = with_json(codes.add_parser(
        "import", help="load an operator's recharge codes (one per line) into its pool"))
    p.add_argument("file", help="text or CSV file, one code per line")
    _pool_options(p)
    p.set_defaults(func=cmd_import)
    p = with_json(codes.add_parser("stock", help="codes available and issued, per pool"))
    p.set_defaults(func=cmd_stock)
    p = with_json(codes.add_parser("void", help="take available codes out of a pool"))
    _pool_options(p)
    p.add_argument("--count", type=whole_arg, required=True, help="how many (newest first)")
    p.set_defaults(func=cmd_void)


def _pool_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--operator", required=True, help="the mobile operator's name")
    p.add_argument("--value", required=True, help="the codes' value, e.g. 10")
    p.add_argument("--currency", help="default: the plans' currency, if they share one")
