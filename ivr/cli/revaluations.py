"""The revalue line's recharges: ``ivr revaluations list|show|reconcile`` (each with
--json). The rules are in ivr.revalue.service; no command prints a recharge code, only
the id of the code issued."""

from __future__ import annotations

import argparse
import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ..config import Settings
from .common import CommandError, command, emit, money, open_db, whole_arg, with_json

if TYPE_CHECKING:
    from ..ami import AmiClient
    from ..revalue.service import Notify, RevaluationInfo

AMI_TIMEOUT = 10.0  # seconds to reach Asterisk when the SMS goes through it


def _row(r: RevaluationInfo) -> dict[str, Any]:
    return {"id": r.id, "request_id": r.request_id, "msisdn": r.msisdn,
            "operator": r.operator, "mode": r.mode, "amount": money(r.amount),
            "currency": r.currency, "account": r.account, "pay": r.pay, "state": r.state,
            "reason": r.reason, "operator_ref": r.operator_ref, "code_id": r.code_id,
            "points": r.points, "created_at": r.created_at, "updated_at": r.updated_at}


def _line(r: RevaluationInfo) -> str:
    reason = f" ({r.reason})" if r.reason else ""
    return (f"{r.id:>6}  {r.created_at:%Y-%m-%d %H:%M:%S}  {r.msisdn:<16} {r.operator:<12} "
            f"{r.mode:<6} {money(r.amount):>9} {r.currency}  {r.state}{reason}")


@command
def cmd_list(settings: Settings, args: argparse.Namespace) -> int:
    from ..revalue.service import State, list_revaluations

    if args.state is not None and args.state not in State.__members__.values():
        raise CommandError(f"--state: {args.state!r} is not one of "
                           f"{', '.join(s.value for s in State)}", "bad_argument")
    rows = list_revaluations(open_db(settings), state=args.state, limit=args.limit)
    emit(args, {"revaluations": [_row(r) for r in rows]},
         "\n".join(_line(r) for r in rows) or "no revaluations")
    return 0


@command
def cmd_show(settings: Settings, args: argparse.Namespace) -> int:
    from ..revalue.service import get_revaluation

    try:
        r = get_revaluation(open_db(settings), args.id)
    except LookupError as exc:
        raise CommandError(str(exc).strip("'\""), "not_found") from None
    data = _row(r) | {"events": [{"at": e.at, "state": e.state, "note": e.note}
                                 for e in r.events]}
    lines = [_line(r), f"request {r.request_id}, account {r.account} ({r.pay})"
             + (f", operator ref {r.operator_ref}" if r.operator_ref else "")
             + (f", code #{r.code_id}" if r.code_id is not None else "")
             + (f", {r.points} loyalty points" if r.points else "")]
    lines += [f"  {e.at:%Y-%m-%d %H:%M:%S}  {e.state:<10} {e.note}" for e in r.events]
    emit(args, data, "\n".join(lines))
    return 0


@command
def cmd_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from ..revalue.direct import operators_from_settings
    from ..revalue.service import reconcile

    db = open_db(settings)
    older = timedelta(seconds=settings.revalue_reconcile_after
                      if args.older_than is None else args.older_than)
    interfaces = operators_from_settings(settings)

    async def run() -> list[Any]:
        apis = {name: interfaces[name].client() for name in interfaces}
        ami = await _ami_for_sms(settings)
        notify = None
        try:
            notify = _sms_notify(settings, ami)
        except ValueError as exc:
            print(f"ivr revaluations reconcile: no SMS of settled recharges: {exc}",
                  file=sys.stderr)
        try:
            return await reconcile(db, apis, older_than=older, notify=notify)
        finally:
            for api in apis.values():
                await api.aclose()
            if ami is not None:
                await ami.close()

    decided = asyncio.run(run())
    rows = [{"request_id": o.request_id, "state": o.state.value, "amount": money(o.amount),
             "currency": o.currency, "reason": o.reason} for o in decided]
    text = "\n".join(f"{r['request_id']}: {r['state']} {r['amount']} {r['currency']}"
                     + (f" ({r['reason']})" if r["reason"] else "") for r in rows)
    emit(args, {"reconciled": rows}, text or "no revaluations left to reconcile")
    return 0


async def _ami_for_sms(settings: Settings) -> AmiClient | None:
    """An AMI connection when the SMS goes through Asterisk (``sms_mode`` ami); None when
    it does not, or when Asterisk cannot be reached (said on stderr)."""
    if settings.sms_mode.strip().lower() != "ami":
        return None
    from ..ami import AmiClient, AmiError

    ami = AmiClient.from_settings(settings, events="off")
    try:
        await ami.connect(timeout=AMI_TIMEOUT)
    except AmiError as exc:
        print(f"ivr revaluations reconcile: {exc}", file=sys.stderr)
        return None
    return ami


def _sms_notify(settings: Settings, ami: AmiClient | None) -> Notify:
    """The customers' SMS of what the reconciler settles (ValueError: none can be sent)."""
    from ..money.notify import senders_from_settings
    from ..revalue.messages import sms_notifier

    sms = senders_from_settings(settings, ami=ami)[1]
    return sms_notifier(lambda: sms)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser(
        "revaluations", help="the revalue line's recharges and their history").add_subparsers(
        dest="action", required=True)
    p = with_json(group.add_parser("list", help="recharges, the newest first"))
    p.add_argument("--state", help="only those in this state")
    p.add_argument("--limit", type=whole_arg, default=100, help="at most (default 100)")
    p.set_defaults(func=cmd_list)
    p = with_json(group.add_parser("show", help="one recharge with its state history"))
    p.add_argument("id", help="its id or request id")
    p.set_defaults(func=cmd_show)
    p = with_json(group.add_parser(
        "reconcile", help="settle unsettled recharges from the operators' status"))
    p.add_argument("--older-than", type=whole_arg,
                   help="seconds (default: the revalue_reconcile_after setting)")
    p.set_defaults(func=cmd_reconcile)
