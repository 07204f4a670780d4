"""``ivr sip trunks|phones|blocks``: carriers' trunks and softphone accounts (rules:
ivr.sip), and the source addresses blocked after failed attempts (ivr.sipguard).

Each change is written to the database, then to the Asterisk instance's PJSIP objects and
applied with a reload of res_pjsip when the instance runs (live calls are not touched).
"""

from __future__ import annotations

import argparse
from typing import Any

from .. import sip, sipguard
from ..asterisk import AsteriskInstance
from ..config import Settings
from .common import command, emit, open_db, secret_key, with_json


@command
def cmd_sip(settings: Settings, args: argparse.Namespace) -> int:
    db = open_db(settings)
    key = secret_key(settings)
    changed = args.action in ("add", "remove")
    with db.transaction() as s:
        if args.what == "trunks":
            data, text = _trunks(s, args, key)
        elif args.what == "phones":
            data, text = _phones(s, args)
        else:
            data, text = _blocks(s, args)
    if changed:
        applied = apply(settings, db, key)
        data["applied"] = applied
        text += "" if applied else " (Asterisk is not running: applied when it starts)"
    emit(args, data, text)
    return 0


def _trunks(s: Any, args: argparse.Namespace, key: bytes) -> tuple[dict[str, Any], str]:
    if args.action == "add":
        t = sip.add_trunk(s, args.name, args.host, key=key, port=args.port,
                          username=args.username, password=args.password,
                          register=args.register, match=args.match or (),
                          outbound=args.outbound, prefix=args.prefix, strip=args.strip)
        return _trunk_dict(t), f"trunk {t.name} added ({t.host}:{t.port})"
    if args.action == "remove":
        sip.remove_trunk(s, args.name)
        return {"name": args.name, "removed": True}, f"trunk {args.name} removed"
    rows = [_trunk_dict(t) for t in sip.list_trunks(s)]
    return {"trunks": rows}, "\n".join(
        f"{r['name']:16} {r['host']}:{r['port']}"
        f"{' outbound' if r['outbound'] else ''}{' register' if r['register'] else ''}"
        for r in rows) or "no trunks"


def _phones(s: Any, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    if args.action == "add":
        p = sip.add_phone(s, args.name, args.callerid)
        return ({"name": p.name, "password": p.password, "callerid": p.callerid,
                 "realm": sip.REALM},
                f"phone {p.name} added; password {p.password} (shown once only)")
    if args.action == "remove":
        sip.remove_phone(s, args.name)
        return {"name": args.name, "removed": True}, f"phone {args.name} removed"
    rows = [{"name": p.name, "callerid": p.callerid, "created_at": p.created_at}
            for p in sip.list_phones(s)]
    return {"phones": rows}, "\n".join(
        f"{r['name']:16} {r['callerid'] or '-'}" for r in rows) or "no phones"


def _blocks(s: Any, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    if args.action == "remove":
        address = sipguard.check_address(args.address)
        sipguard.remove_block(s, address)
        return {"address": address, "removed": True}, f"block of {address} lifted"
    rows = [{"address": b.address, "reason": b.reason,
             "created_at": sipguard.aware(b.created_at), "until": sipguard.aware(b.until)}
            for b in sipguard.list_blocks(s)]
    return {"blocks": rows}, "\n".join(
        f"{r['address']:39} until {r['until']:%Y-%m-%d %H:%M:%S} UTC  {r['reason']}"
        for r in rows) or "no blocked addresses"


def _trunk_dict(t: Any) -> dict[str, Any]:
    # The password is never shown, even encrypted.
    return {"name": t.name, "host": t.host, "port": t.port, "username": t.username,
            "register": t.register, "match": t.match.split(",") if t.match else [],
            "outbound": t.outbound, "prefix": t.prefix, "strip": t.strip}


def write_sip_objects(settings: Settings, instance: AsteriskInstance) -> None:
    """Before an instance starts: its trunks' and phones' PJSIP objects from the database
    (pjsip.conf includes them; the render keeps the file)."""
    etc = instance.host(instance.etc_dir)
    etc.mkdir(parents=True, exist_ok=True)
    db = open_db(settings)
    try:
        with db.reading() as s:
            sip.write_objects(s, etc, key=secret_key(settings))
    finally:
        db.dispose()


def apply(settings: Settings, db: Any, key: bytes) -> bool:
    """Write the PJSIP objects into the instance and reload res_pjsip when it runs;
    False when it does not (the next start writes them). The server applies its SIP
    blocks the same way."""
    return sip.apply_objects(settings, db, key)


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser(
        "sip", help="SIP trunks (carriers), softphone accounts and blocked addresses")
    whats = group.add_subparsers(dest="what", required=True, metavar="WHAT")

    trunks = whats.add_parser("trunks", help="carriers' SIP trunks")
    actions = trunks.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = with_json(actions.add_parser("add", help="add a trunk"))
    p.add_argument("name")
    p.add_argument("--host", required=True, help="the carrier's host name or address")
    p.add_argument("--port", type=int, default=5060)
    p.add_argument("--username", help="user name for the carrier's challenges")
    p.add_argument("--password", help="password for the carrier's challenges")
    p.add_argument("--register", action="store_true", help="register to the carrier")
    p.add_argument("--match", action="append", metavar="CIDR",
                   help="addresses its calls come from (default: its host); repeatable")
    p.add_argument("--outbound", action="store_true",
                   help="this trunk takes the paid calls' outgoing legs")
    p.add_argument("--prefix", default="", help="digits put before the number dialled")
    p.add_argument("--strip", type=int, default=0,
                   help="digits taken off the front of the E.164 number")
    for name, helptext in (("remove", "remove a trunk"), ("list", "list trunks")):
        p = with_json(actions.add_parser(name, help=helptext))
        if name == "remove":
            p.add_argument("name")
    trunks.set_defaults(func=cmd_sip)

    phones = whats.add_parser("phones", help="softphone accounts")
    actions = phones.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = with_json(actions.add_parser("add", help="add a phone; prints its password once"))
    p.add_argument("name")
    p.add_argument("--callerid", help="the phone's number (E.164 digits), for pinless log-in")
    for name, helptext in (("remove", "remove a phone"), ("list", "list phones")):
        p = with_json(actions.add_parser(name, help=helptext))
        if name == "remove":
            p.add_argument("name")
    phones.set_defaults(func=cmd_sip)

    blocks = whats.add_parser(
        "blocks", help="source addresses blocked after repeated failed attempts")
    actions = blocks.add_subparsers(dest="action", required=True, metavar="ACTION")
    with_json(actions.add_parser("list", help="list the live blocks"))
    p = with_json(actions.add_parser("remove", help="lift a block now"))
    p.add_argument("address", help="the blocked IPv4 or IPv6 address")
    blocks.set_defaults(func=cmd_sip)
