"""The web console: ``ivr web`` serves it alone (``ivr serve`` / ``ivr run`` serve it
too, on ``web_bind``), ``ivr web-users add|list|reset|role|remove`` manage its users."""

from __future__ import annotations

import argparse
import asyncio
import functools
import signal

from ..config import Settings
from .common import command, emit, open_db, with_json


@command
def cmd_web(settings: Settings, args: argparse.Namespace) -> int:
    if args.bind:
        settings = settings.replace(web_bind=args.bind)
    if not settings.web_bind:
        from ..config import ConfigError

        raise ConfigError("web_bind is empty: give --bind HOST:PORT")
    return asyncio.run(_serve_web(settings))


async def _serve_web(settings: Settings) -> int:
    """The console alone: its own application and AMI connection (hang-ups), until
    SIGTERM/SIGINT."""
    from ..ami import AmiClient
    from ..app import App
    from ..secrets import ami_secret
    from ..service import _keep_ami_connected, start_web, stop_task

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    settings = settings.replace(ami_secret=ami_secret(settings))
    app = await asyncio.to_thread(functools.partial(App.build, settings))
    ami = AmiClient.from_settings(settings, events="off")
    ami_task = asyncio.ensure_future(_keep_ami_connected(ami))
    web = await start_web(app, ami)
    try:
        if web is None:  # the port is taken: said on stderr
            return 1
        await stop.wait()
    finally:
        if web is not None:
            await web.stop()
        await stop_task(ami_task)
        await ami.close()
        await app.close()
        app.dispose()
    return 0


@command
def cmd_web_users(settings: Settings, args: argparse.Namespace) -> int:
    from ..web import users

    db = open_db(settings)
    try:
        if args.action == "add":
            password = users.add_user(db, args.name, args.role)
            emit(args, {"name": args.name.lower(), "role": args.role, "password": password},
                 f"web user {args.name.lower()} ({args.role}) added; password (shown once): "
                 f"{password}")
        elif args.action == "reset":
            password = users.reset_password(db, args.name)
            emit(args, {"name": args.name.lower(), "password": password},
                 f"web user {args.name.lower()}: new password (shown once): {password}")
        elif args.action == "role":
            users.set_role(db, args.name, args.role)
            emit(args, {"name": args.name.lower(), "role": args.role},
                 f"web user {args.name.lower()} is now {args.role}")
        elif args.action == "remove":
            users.remove_user(db, args.name)
            emit(args, {"name": args.name.lower(), "active": False},
                 f"web user {args.name.lower()} removed (kept in the audit log)")
        else:
            rows = users.list_users(db)
            data = [{"name": u.name, "role": u.role, "active": u.active,
                     "created_at": u.created_at, "last_login_at": u.last_login_at}
                    for u in rows]
            text = "\n".join(f"{u.name:20} {u.role:8} {'active' if u.active else 'removed'}"
                             for u in rows) or "no web users"
            emit(args, data, text)
    finally:
        db.dispose()
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("web", help="serve the web console alone (ivr serve serves it too)")
    p.add_argument("--bind", help="HOST:PORT (default: the web_bind setting)")
    p.set_defaults(func=cmd_web)
    from ..web.users import Role

    roles = [r.value for r in Role]
    wu = sub.add_parser("web-users", help="the web console's users").add_subparsers(
        dest="action", required=True)
    p = with_json(wu.add_parser("add", help="add a user; its password is shown once"))
    p.add_argument("name")
    p.add_argument("--role", choices=roles, required=True)
    p.set_defaults(func=cmd_web_users)
    p = with_json(wu.add_parser("role", help="change a user's role"))
    p.add_argument("name")
    p.add_argument("--role", choices=roles, required=True)
    p.set_defaults(func=cmd_web_users)
    for name, helptext in (("reset", "a new password (shown once); its sessions end"),
                           ("remove", "remove a user (kept in the audit log)")):
        p = with_json(wu.add_parser(name, help=helptext))
        p.add_argument("name")
        p.set_defaults(func=cmd_web_users)
    p = with_json(wu.add_parser("list", help="the users and their roles"))
    p.set_defaults(func=cmd_web_users)
