"""Loyalty points of the revalue line's customers: ``ivr loyalty show|redeem`` (each with
--json). The rules are in ivr.revalue.loyalty."""

from __future__ import annotations

import argparse

from ..config import Settings
from .common import CommandError, command, emit, money, open_db, whole_arg, with_json


def _customer(settings: Settings, msisdn: str) -> tuple[int, str]:
    from ..revalue.customers import get_customer
    from ..revalue.lookup import InvalidMsisdn

    try:
        info = get_customer(open_db(settings), msisdn, region=settings.default_region)
    except InvalidMsisdn as exc:
        raise CommandError(str(exc), "bad_number") from None
    return info.id, info.msisdn


@command
def cmd_show(settings: Settings, args: argparse.Namespace) -> int:
    from ..revalue.loyalty import point_value, statement

    customer_id, msisdn = _customer(settings, args.msisdn)
    value = point_value(settings)
    st = statement(open_db(settings), customer_id)
    worth = money(max(st.points, 0) * value)
    data = {"msisdn": msisdn, "points": st.points, "point_value": money(value, 6),
            "worth": worth,
            "entries": [{"points": e.points, "kind": e.kind, "ref": e.ref, "note": e.note,
                         "created_at": e.created_at} for e in st.entries]}
    lines = [f"{msisdn}: {st.points} points (worth {worth})"]
    lines += [f"  {e.created_at:%Y-%m-%d %H:%M:%S}  {e.points:>+7}  {e.kind:<8} {e.note}"
              for e in st.entries]
    emit(args, data, "\n".join(lines))
    return 0


@command
def cmd_redeem(settings: Settings, args: argparse.Namespace) -> int:
    from ..revalue.loyalty import RedeemRefused, point_value, redeem

    customer_id, msisdn = _customer(settings, args.msisdn)
    try:
        done = redeem(open_db(settings), customer_id, args.points,
                      value=point_value(settings))
    except RedeemRefused as exc:
        raise CommandError(str(exc), "refused") from None
    emit(args, {"msisdn": msisdn, "ref": done.ref, "points": done.points,
                "amount": money(done.amount), "points_left": done.points_left,
                "balance": money(done.balance)},
         f"{done.points} points redeemed for {money(done.amount)}; {done.points_left} "
         f"points left, balance {money(done.balance)}")
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser(
        "loyalty", help="revalue-line customers' loyalty points").add_subparsers(
        dest="action", required=True)
    p = with_json(group.add_parser("show", help="a customer's points and latest entries"))
    p.add_argument("msisdn", help="the customer's mobile number")
    p.set_defaults(func=cmd_show)
    p = with_json(group.add_parser("redeem", help="turn points into account credit"))
    p.add_argument("msisdn", help="the customer's mobile number")
    p.add_argument("--points", type=whole_arg, required=True, help="how many")
    p.set_defaults(func=cmd_redeem)
