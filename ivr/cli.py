"""The ``ivr`` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import io
import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from datetime import timedelta

from .config import ConfigError, Settings, load_settings

log = logging.getLogger("ivr")


def _setup_logging(settings: Settings, verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else getattr(logging, settings.log_level.upper(), 20),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)


# ------------------------------------------------------------------------- serve / run


# What the call controller listens to: Dial and Hangup events (class "call"). Not "dtmf"
# nor "agi", whose events carry the keys callers type.
SERVER_AMI_EVENTS = "call"


async def _reconcile_payments(settings: Settings) -> None:
    """Settle card payments left pending or timed out with the gateway (ivr.payments)."""
    from . import payments, runtime
    from .servers import DatabaseOutage

    after = timedelta(seconds=settings.payment_reconcile_after)
    outage = DatabaseOutage("payment reconciliation", log)  # one line, not a traceback a try
    while True:
        await asyncio.sleep(settings.payment_reconcile_interval)
        try:
            db = await asyncio.to_thread(runtime.get_database)
            await payments.reconcile(db, runtime.get_gateway(), older_than=after)
        except Exception as exc:
            if not outage.failed(exc):
                log.exception("payment reconciliation failed; next try in %gs",
                              settings.payment_reconcile_interval)
        else:
            outage.ended()


async def serve(settings: Settings, *, on_started: Callable[[], None] | None = None) -> int:
    """Run the FastAGI server and the call controller until SIGTERM/SIGINT, then shut
    down gracefully."""
    from . import autorecharge, runtime
    from .agi import AgiServer
    from .ami import AmiClient
    from .calls import CallController
    from .flows import ROUTES
    from .recovery import Recovery
    from .servers import Lease, LeaseRefused, keep_lease

    runtime.set_settings(settings)  # routes read the process settings from here
    await asyncio.to_thread(_check_prompts)
    ledger = await asyncio.to_thread(runtime.get_ledger)  # may migrate an SQLite file
    # One server per database: a second one would take this one's live calls for a dead
    # server's (ivr.servers).
    try:
        lease = await asyncio.to_thread(Lease.acquire, ledger.db, settings.server_heartbeat)
    except LeaseRefused as exc:
        print(f"ivr serve: {exc}", file=sys.stderr, flush=True)
        return 1
    ledger.server_id = lease.server_id
    # Rate tables compiled before the first call, not by it (a big deck takes seconds).
    started = time.monotonic()
    plans = await asyncio.to_thread(ledger.rates.load_all)
    log.info("rates of %d plan(s) loaded in %.1fs", plans, time.monotonic() - started)
    ami = AmiClient.from_settings(settings, events=SERVER_AMI_EVENTS)
    controller = CallController.from_settings(ami, ledger, settings,
                                              auto_recharge=autorecharge.recharge)
    runtime.set_controller(controller)
    ami_task = asyncio.ensure_future(_keep_ami_connected(ami))
    server = AgiServer(
        ROUTES,
        settings.agi_host,
        settings.agi_port,
        header_timeout=settings.agi_header_timeout,
        command_timeout=settings.agi_command_timeout,
        max_connections=settings.agi_max_connections,
        allowed_hosts=settings.agi_allowed_hosts,
    )
    await server.start()
    # Start-up objects (modules, catalogue, rate tables) never die: keep them out of the
    # collector's full passes, which otherwise pause every live call for tens of ms.
    gc.collect()
    gc.freeze()
    # Calls that ended while no server was running are settled from Asterisk's records.
    recovery = Recovery(controller, lease)
    recovery.start(settings.recovery_interval)
    reconciler = (asyncio.ensure_future(_reconcile_payments(settings))
                  if settings.payment_reconcile_interval > 0 else None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    heartbeat = asyncio.ensure_future(keep_lease(lease, controller.seen_alive, stop.set))
    if on_started:
        on_started()
    await stop.wait()
    log.info("stopping; running calls get up to %gs to finish", settings.shutdown_grace)
    await server.shutdown(settings.shutdown_grace)
    if reconciler is not None:
        reconciler.cancel()
    await recovery.close()
    await controller.close()
    runtime.set_controller(None)
    ami_task.cancel()
    await ami.close()
    heartbeat.cancel()
    try:
        await asyncio.to_thread(lease.release)  # the next server need not wait for expiry
    except Exception as exc:
        log.warning("lease not released (it expires by itself): %s", exc)
    return 0


def _check_prompts() -> None:
    """Log an error naming the command when voice prompts have no audio (a bare
    `ivr serve` against an instance whose prompts were never built)."""
    from . import prompts
    from .asterisk import AsteriskSetupError
    from .prompts.build import missing_message

    try:
        message = missing_message(prompts.get_store(), prompts.get_catalogue())
    except (AsteriskSetupError, prompts.CatalogueError, prompts.ManifestError, OSError) as exc:
        message = f"voice prompts cannot be checked ({exc}): run `ivr prompts build`"
    if message:
        log.error("%s", message)


async def _keep_ami_connected(ami: object) -> None:
    """Connect to AMI, retrying until it answers; panoramisk reconnects after that.
    Without AMI calls still work and end at their limit; only warnings and recovery wait."""
    from .ami import AmiClient, AmiError

    assert isinstance(ami, AmiClient)
    while not ami.connected:
        try:
            await ami.connect(timeout=10)
        except AmiError as exc:
            log.error("%s; mid-call warnings and recovery wait for AMI (retrying)", exc)
            await asyncio.sleep(5)


def _with_ami_secret(settings: Settings) -> Settings:
    """The settings with the AMI secret resolved (ivr.secrets.ami_secret: made on first
    use, the published default refused), so Asterisk and the server use the same one."""
    from .secrets import ami_secret

    return settings.replace(ami_secret=ami_secret(settings))


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    changes: dict[str, object] = {}
    if args.host:
        changes["agi_host"] = args.host
    if args.port is not None:
        changes["agi_port"] = args.port
    return asyncio.run(serve(_with_ami_secret(settings).replace(**changes)))


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    """Bring up Asterisk, then serve; stop Asterisk on exit unless --keep-asterisk."""
    from .asterisk import instance_for

    settings = _with_ami_secret(settings)
    instance = instance_for(settings)
    was_running = instance.running()
    instance.start(prompts=True)
    console = " ".join(instance.install.argv("-C", instance.conf_file, "-r"))
    print(f"ivr: Asterisk ({instance.install.kind}) up, AMI on "
          f"{settings.ami_host}:{settings.ami_port}; its console: {console}", flush=True)
    try:
        return asyncio.run(serve(settings))
    finally:
        if not (args.keep_asterisk or was_running):
            instance.stop()
            print("ivr: Asterisk stopped", flush=True)


# ------------------------------------------------------------------------- asterisk


def cmd_asterisk(settings: Settings, args: argparse.Namespace) -> int:
    from .asterisk import AsteriskSetupError, instance_for

    try:
        if args.action == "install":
            instance = instance_for(settings)
            install = instance.install
            where = f" in {install.root}" if install.root else ""
            print(f"{install.kind} Asterisk{where}: {install.version()}")
            return 0
        if args.action == "up":
            instance = instance_for(settings)
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
        if args.action == "status":
            _print_status({"running": False, "error": str(exc)}, args.json)
            return 3
        from .cli_common import report

        return report(args.json, "asterisk", f"asterisk {args.action}: {exc}")


def _print_status(info: dict[str, object], as_json: bool) -> None:
    if as_json:
        print(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        print(f"{key:12} {value}")


def cmd_config(settings: Settings, args: argparse.Namespace) -> int:
    shown = {k: str(v) for k, v in vars(settings).items()}
    for secret in ("ami_secret", "payment_sandbox_secret", "sms_http_token", "secret_key"):
        shown[secret] = "***" if getattr(settings, secret) else ""
    if not settings.ami_secret:
        from .secrets import AMI_SECRET_FILE

        shown["ami_secret"] = f"(random, in {settings.data_dir / AMI_SECRET_FILE})"
    shown["effective_database_url"] = settings.effective_database_url
    print(json.dumps(shown, indent=2))
    return 0


# ------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ivr",
        description="Prepaid calling-card and top-up IVR for Asterisk.",
    )
    parser.add_argument("--config", help="TOML settings file (else $IVR_CONFIG, ./ivr.toml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the FastAGI server")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("run", help="bring up Asterisk and run the FastAGI server")
    p.add_argument("--keep-asterisk", action="store_true", help="leave Asterisk running on exit")
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

    from .cli_admin import add_commands

    add_commands(sub)
    from .cli_prompts import add_commands as add_prompt_commands

    add_prompt_commands(sub)
    from .cli_topups import add_commands as add_topup_commands

    add_topup_commands(sub)
    from .cli_reports import add_commands as add_report_commands

    add_report_commands(sub)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | int:
    """The parsed arguments, or the exit status of a usage error (under --json, reported
    as a JSON object on stdout like every refusal; argparse's usage stays on stderr)."""
    from .cli_common import EXIT_USAGE, report

    if "--json" not in argv:
        return parser.parse_args(argv)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return parser.parse_args(argv)
    except SystemExit as exc:
        text = captured.getvalue()
        sys.stderr.write(text)
        if exc.code in (0, None):
            raise
        message = text.strip().splitlines()[-1] if text.strip() else "bad arguments"
        return report(True, "usage", message.replace(": error: ", ": ", 1), EXIT_USAGE)


def main(argv: Sequence[str] | None = None) -> int:
    from .cli_common import EXIT_USAGE, report

    parser = build_parser()
    parsed = _parse(parser, list(sys.argv[1:] if argv is None else argv))
    if isinstance(parsed, int):
        return parsed
    args = parsed
    as_json = bool(getattr(args, "json", False))
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        return report(as_json, "config", str(exc), EXIT_USAGE)
    _setup_logging(settings, args.verbose)
    # The command groups (ivr.cli_admin, cli_topups, cli_prompts...) wrap their commands
    # with ivr.cli_common.command: refusals are one line, or one JSON object under --json.
    try:
        return int(args.func(settings, args) or 0)
    except ConfigError as exc:  # e.g. a refused ami_secret, found when it is first needed
        return report(as_json, "config", str(exc), EXIT_USAGE)


if __name__ == "__main__":
    sys.exit(main())
