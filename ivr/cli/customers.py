"""The revalue line's customers and operator lookup: ``ivr customers ...``, ``ivr ported
...`` and ``ivr lookup``. The rules are in ivr.revalue.customers and ivr.revalue.lookup;
these commands read the options, call them and print the result. A first code is printed
by ``customers add`` and ``customers reset-code`` only, once."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..config import Settings
from .common import CommandError, command, emit, open_db, with_json

if TYPE_CHECKING:
    from ..revalue.customers import CustomerInfo, WithCode


@contextlib.contextmanager
def _refusals() -> Iterator[None]:
    """The revalue modules' refusals as one line (or JSON object) with their own codes
    (imported here, so that `ivr --help` does not load them)."""
    from ..revalue.customers import CustomerExists, CustomerRefused
    from ..revalue.lookup import InvalidMsisdn, LookupFailed

    try:
        yield
    except InvalidMsisdn as exc:
        raise CommandError(str(exc), "bad_number") from None
    except CustomerExists as exc:
        raise CommandError(str(exc), "exists") from None
    except CustomerRefused as exc:
        raise CommandError(str(exc), "refused") from None
    except LookupFailed as exc:
        raise CommandError(f"the lookup failed: {exc}", "lookup_failed") from None


# --------------------------------------------------------------------------- customers


@command
def cmd_customers(settings: Settings, args: argparse.Namespace) -> int:
    from ..revalue import customers as c

    region = settings.default_region
    db = open_db(settings)
    with _refusals():
        if args.action == "add":
            plan = args.plan
            if plan is not None and args.account is not None:
                raise CommandError("give --account (an existing account) or --plan (a new "
                                   "account), not both", "conflicting_options")
            if plan is None and args.account is None:
                plan = settings.revalue_plan or None
                if plan is None:
                    raise CommandError("give --account (the account the customer draws "
                                       "on) or --plan (the plan of a new account for them; "
                                       "or set revalue_plan)", "missing_option")
            made = c.add_customer(db, args.msisdn, region=region, mode=args.mode,
                                  pay=args.pay, account=args.account, plan=plan,
                                  language=args.language,
                                  code_length=settings.revalue_code_length)
            _print_code(args, made, f"customer {made.customer.msisdn} added")
            return 0
        if args.action == "reset-code":
            made = c.reset_code(db, args.msisdn, region=region,
                                code_length=settings.revalue_code_length)
            _print_code(args, made, f"customer {made.customer.msisdn}: new first code, "
                        "the old one no longer works")
            if made.customer.locked and not args.json:
                print(f"the customer is still locked: ivr customers unlock "
                      f"{made.customer.msisdn}")
            return 0
        if args.action == "list":
            rows = c.list_customers(db)
            emit(args, {"customers": [r.as_dict() for r in rows]},
                 "\n".join(_line(r) for r in rows) or "no customers")
            return 0
        if args.action == "show":
            info = c.get_customer(db, args.msisdn, region=region)
        else:
            info = c.set_locked(db, args.msisdn, args.action == "lock", region=region)
        emit(args, info.as_dict(), f"{_line(info)}\n{_paid_by(info)}")
    return 0


def _print_code(args: argparse.Namespace, made: WithCode, head: str) -> None:
    info = made.customer
    data = info.as_dict() | {"first_code": made.code,
                             "account_created": made.account_created,
                             "paid_by": _paid_by(info)}
    created = f" (new account {info.account}, {info.currency})" if made.account_created else ""
    emit(args, data,
         f"{head}{created}\n{_what(info)}\n{_paid_by(info)}\n"
         f"first code: {made.code}\n"
         "(shown this once: give it to the customer; it is kept hashed and cannot be "
         "shown again; a new one: ivr customers reset-code)")


def _what(info: CustomerInfo) -> str:
    from ..revalue.customers import Mode

    how = ("a recharge code from the operator's pool" if info.mode is Mode.CODE
           else "direct recharge through the operator")
    return f"recharged by {how}, language {info.language}"


def _paid_by(info: CustomerInfo) -> str:
    from ..revalue.customers import Pay

    if info.pay is Pay.ACCOUNT:
        return f"pays from the balance of account {info.account} ({info.currency})"
    now = (f"it has card ...{info.saved_card} now" if info.saved_card
           else "it has none yet (a top-up paid by card on the account saves one)")
    return (f"pays with the card saved on account {info.account} ({info.currency}): the "
            f"account must have an active saved card when a recharge is paid; {now}")


def _line(info: CustomerInfo) -> str:
    status = "locked" if info.locked else "active"
    return (f"{info.msisdn:16} {status:7} {info.mode.value:7} {info.pay.value:13} "
            f"account {info.account} {info.currency} lang {info.language} "
            f"wrong codes {info.failures}")


# --------------------------------------------------------------------------- ported, lookup


@command
def cmd_ported(settings: Settings, args: argparse.Namespace) -> int:
    from ..revalue import lookup as lk

    db = open_db(settings)
    with _refusals():
        if args.action == "list":
            rows = lk.list_ported(db)
            data = [{"msisdn": r.msisdn, "operator": r.operator, "mccmnc": r.mccmnc,
                     "updated_at": r.updated_at} for r in rows]
            emit(args, {"ported": data},
                 "\n".join(f"{r.msisdn:16} {r.operator} {r.mccmnc or '-'}" for r in rows)
                 or "no ported numbers")
            return 0
        number = lk.parse_msisdn(args.msisdn, settings.default_region,
                                 check="valid" if args.action == "add" else "none")
        if args.action == "add":
            entry, new = lk.add_ported(db, number, args.operator, args.mccmnc)
            emit(args, {"msisdn": entry.msisdn, "operator": entry.operator,
                        "mccmnc": entry.mccmnc, "new": new},
                 f"{entry.msisdn} is with {entry.operator}"
                 f"{' (' + entry.mccmnc + ')' if entry.mccmnc else ''} "
                 f"({'added' if new else 'replaced'})")
            return 0
        if not lk.remove_ported(db, number):
            raise CommandError(f"{number} is not in the ported numbers", "not_found")
        emit(args, {"msisdn": number, "removed": True}, f"{number} removed")
    return 0


@command
def cmd_lookup(settings: Settings, args: argparse.Namespace) -> int:
    from ..revalue import lookup as lk

    with _refusals():
        number = lk.parse_msisdn(args.msisdn, settings.default_region, check="valid")
        source = lk.lookup_from_settings(settings, open_db(settings))
        answer = asyncio.run(source.lookup(number))
    reachable = {True: "reachable", False: "not reachable", None: "reachable: unknown"}
    text = (f"{answer.msisdn}: {answer.operator or 'operator unknown'}, mccmnc "
            f"{answer.mccmnc or 'unknown'}, {'ported' if answer.ported else 'not ported'}, "
            f"{reachable[answer.reachable]}, "
            f"{'verified' if answer.verified else 'unverified'}")
    emit(args, answer.as_dict(), text)
    return 0


# --------------------------------------------------------------------------- parser


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    customers = sub.add_parser(
        "customers", help="revalue-line customers and their first codes").add_subparsers(
        dest="action", required=True)
    p = with_json(customers.add_parser(
        "add", help="register a customer; prints their first code once"))
    p.add_argument("--msisdn", required=True,
                   help="their mobile number, national (default_region) or +international")
    p.add_argument("--mode", choices=["code", "direct"], default="code",
                   help="recharge by a code from the pool, or directly (default code)")
    p.add_argument("--pay", choices=["account", "saved-method"], default="account",
                   help="pay from the account's balance, or its saved card (default "
                        "account)")
    p.add_argument("--account", help="the existing account they draw on (default: a new "
                   "account on --plan)")
    p.add_argument("--plan", help="plan of the new account (default: revalue_plan)")
    p.add_argument("--language", default="en")
    p.set_defaults(func=cmd_customers)
    p = with_json(customers.add_parser("list", help="all customers (never their codes)"))
    p.set_defaults(func=cmd_customers)
    for name, text in (("show", "one customer"), ("lock", "refuse their first code"),
                       ("unlock", "accept their first code again"),
                       ("reset-code", "a new first code, printed once")):
        p = with_json(customers.add_parser(name, help=text))
        p.add_argument("msisdn")
        p.set_defaults(func=cmd_customers)

    ported = sub.add_parser(
        "ported", help="numbers ported to another operator (the local lookup's table)"
    ).add_subparsers(dest="action", required=True)
    p = with_json(ported.add_parser("add", help="record (or replace) a number's operator"))
    p.add_argument("msisdn")
    p.add_argument("--operator", required=True)
    p.add_argument("--mccmnc", default="", help="the operator's network code (5-6 digits)")
    p.set_defaults(func=cmd_ported)
    p = with_json(ported.add_parser("list"))
    p.set_defaults(func=cmd_ported)
    p = with_json(ported.add_parser("remove"))
    p.add_argument("msisdn")
    p.set_defaults(func=cmd_ported)

    p = with_json(sub.add_parser("lookup", help="which operator a number is with"))
    p.add_argument("msisdn")
    p.set_defaults(func=cmd_lookup)
