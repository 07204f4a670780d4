"""Running the service: ``ivr serve``, ``ivr run``, ``ivr asterisk ...`` and
``ivr config``. The server itself is ivr.service; these commands only prepare its
settings and Asterisk."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from typing import TYPE_CHECKING

from ..config import Settings
from .common import CommandError, command, open_db
from .sip import write_sip_objects

if TYPE_CHECKING:
    from ..demo import Demo


def _with_ami_secret(settings: Settings) -> Settings:
    """The settings with the AMI secret resolved (ivr.secrets.ami_secret: made on first
    use, the published default refused), so Asterisk and the server use the same one."""
    from ..secrets import ami_secret

    return settings.replace(ami_secret=ami_secret(settings))


@command
def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from .. import service

    changes: dict[str, object] = {}
    if args.host:
        changes["agi_host"] = args.host
    if args.port is not None:
        changes["agi_port"] = args.port
    return asyncio.run(service.serve(_with_ami_secret(settings).replace(**changes)))


@command
def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    """Bring up Asterisk, then serve; stop Asterisk on exit unless --keep-asterisk.

    Unless --no-demo, a newcomer's softphone account and demo card are made when missing
    (ivr.demo) before the SIP objects are written, so the new phone is among them, and
    printed once Asterisk is up: register a softphone and call at once."""
    from .. import service
    from ..asterisk import instance_for

    settings = _with_ami_secret(settings)
    instance = instance_for(settings)
    was_running = instance.running()
    demo = None if args.no_demo else _ensure_demo(settings)
    write_sip_objects(settings, instance)
    # Until the server's own handlers are installed (service.serve), SIGTERM ends this
    # command like Ctrl-C does, through the finally below: the Asterisk it started is
    # stopped, even when the signal comes while Asterisk starts.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        instance.start(prompts=True)
        console = " ".join(instance.install.argv("-C", instance.conf_file, "-r"))
        print(f"ivr: Asterisk ({instance.install.kind}) up, AMI on "
              f"{settings.ami_host}:{settings.ami_port}; its console: {console}", flush=True)
        if demo is not None:
            from ..demo import demo_text

            print(demo_text(demo, settings), flush=True)
        return asyncio.run(service.serve(settings))
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        if not (args.keep_asterisk or was_running):
            instance.stop()
            print("ivr: Asterisk stopped", flush=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _ensure_demo(settings: Settings) -> Demo:
    from ..demo import ensure_demo

    db = open_db(settings)
    try:
        return ensure_demo(db, settings)
    finally:
        db.dispose()


@command
def cmd_asterisk(settings: Settings, args: argparse.Namespace) -> int:
    from ..asterisk import AsteriskSetupError, instance_for

    try:
        if args.action == "install":
            instance = instance_for(settings)
            install = instance.install
            where = f" in {install.root}" if install.root else ""
            print(f"{install.kind} Asterisk{where}: {install.version()}")
            return 0
        if args.action == "up":
            instance = instance_for(settings)
            write_sip_objects(settings, instance)
            instance.start(timeout=args.timeout, prompts=True)  # builds missing prompts
            info = instance.status()
            _print_status(info, args.json)
            return 0
        instance = instance_for(settings, build=False)
        if args.action == "down":
            stopped = instance.stop()
            print("Asterisk stopped" if stopped else "Asterisk was not running")
            return 0
        info = instance.status()
        _print_status(info, args.json)
        return 0 if info["running"] else 3
    except AsteriskSetupError as exc:
        if args.action == "status":  # a status, not a refusal: stopped (3), and why
            _print_status({"running": False, "error": str(exc)}, args.json)
            return 3
        raise CommandError(f"asterisk {args.action}: {exc}", "asterisk") from None


def _print_status(info: dict[str, object], as_json: bool) -> None:
    if as_json:
        print(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        print(f"{key:12} {value}")


@command
def cmd_config(settings: Settings, args: argparse.Namespace) -> int:
    shown = {k: str(v) for k, v in vars(settings).items()}
    for secret in ("ami_secret", "payment_sandbox_secret", "sms_http_token", "secret_key",
                   "pin_key"):
        shown[secret] = "***" if getattr(settings, secret) else ""
    if not settings.revalue_operators.strip().endswith(".toml"):  # inline: holds tokens
        shown["revalue_operators"] = "***" if settings.revalue_operators else ""
    if not settings.ami_secret:
        from ..secrets import AMI_SECRET_FILE

        shown["ami_secret"] = f"(random, in {settings.data_dir / AMI_SECRET_FILE})"
    shown["effective_database_url"] = settings.effective_database_url
    print(json.dumps(shown, indent=2))
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the FastAGI server")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("run", help="bring up Asterisk and run the FastAGI server")
    p.add_argument("--keep-asterisk", action="store_true", help="leave Asterisk running on exit")
    p.add_argument("--no-demo", action="store_true",
                   help="make and print no demo softphone account and card")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("asterisk", help="bring up, stop or inspect the project's Asterisk")
    p.add_argument(
        "action",
        choices=["install", "up", "down", "status"],
        help="install: find the system Asterisk or build the sandbox; up: install, render "
        "the config, start and wait for AMI; down: stop; status: state (exit 3 if stopped)",
    )
    p.add_argument("--json", action="store_true")
    p.add_argument("--timeout", type=float, default=60, help="seconds to wait for AMI (up)")
    p.set_defaults(func=cmd_asterisk)

    p = sub.add_parser("config", help="show the effective settings (secret hidden)")
    p.set_defaults(func=cmd_config)
