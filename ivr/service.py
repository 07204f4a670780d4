"""The server process: ``ivr serve`` builds the application (ivr.app), starts the FastAGI
server, the call controller, recovery, the heartbeat, payment reconciliation, the revalue
line's callbacks endpoint and revaluation reconciliation, and
shuts them down gracefully on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import signal
import sys
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .config import Settings

if TYPE_CHECKING:
    from .ami import AmiClient
    from .app import App
    from .prompts import Voice
    from .revalue.callbacks import LoopbackServer
    from .revalue.direct import DirectRecharge
    from .revalue.service import Notify
    from .sipguard import SipGuard

log = logging.getLogger("ivr")


# What the server listens to: Dial and Hangup events (class "call", the call controller)
# and failed SIP attempts (class "security", the SIP guard). Not "dtmf" nor "agi", whose
# events carry the keys callers type.
SERVER_AMI_EVENTS = "call,security"


async def stop_task(task: asyncio.Task[Any], timeout: float = 5.0) -> None:
    """Cancel a background loop and wait for it to end, cancelling again if it goes on:
    in Python 3.11 a cancellation that lands as the step it waits on completes (a
    database step's ``wait_for``) can be lost, and a loop that goes on would keep the
    process from exiting. Gives up after ``timeout`` seconds, with a warning."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not task.done():
        task.cancel()
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            log.warning("a background task did not stop: %r", task)
            return
        await asyncio.wait({task}, timeout=min(0.5, left))
    if not task.cancelled() and task.exception() is not None:
        log.warning("a background task ended with %r", task.exception())


async def reconcile_payments(app: App) -> None:
    """Settle card payments left pending or timed out with the gateway (ivr.payments)."""
    from . import payments
    from .live.servers import DatabaseOutage

    settings = app.settings
    after = timedelta(seconds=settings.payment_reconcile_after)
    outage = DatabaseOutage("payment reconciliation", log)  # one line, not a traceback a try
    while True:
        await asyncio.sleep(settings.payment_reconcile_interval)
        try:
            await payments.reconcile(app.db, app.gateway, older_than=after)
        except Exception as exc:
            if not outage.failed(exc):
                log.exception("payment reconciliation failed; next try in %gs",
                              settings.payment_reconcile_interval)
        else:
            outage.ended()


TRACE_PRUNE_INTERVAL = 3600.0  # seconds between deletions of old call traces


async def prune_call_traces(app: App, interval: float = TRACE_PRUNE_INTERVAL) -> None:
    """Delete call trace steps older than ``call_trace_days`` (ivr.live.trace), at start
    and every ``interval`` seconds."""
    from .live.servers import DatabaseOutage

    outage = DatabaseOutage("call trace retention", log)
    while True:
        try:
            removed = await app.trace.prune(app.settings.call_trace_days)
        except Exception as exc:
            if not outage.failed(exc):
                log.exception("call trace retention failed; next try in %gs", interval)
        else:
            outage.ended()
            if removed:
                log.info("call traces: %d step(s) older than %d days deleted", removed,
                         app.settings.call_trace_days)
        await asyncio.sleep(interval)


def revalue_notifier(app: App, ami: AmiClient | None) -> Notify:
    """The SMS of a revaluation settled by a callback or the reconciler, through the
    app's SMS sender (``sms_mode``; ivr.revalue.messages)."""
    from .revalue.messages import sms_notifier

    return sms_notifier(lambda: app.notice_senders(ami)[1])


async def reconcile_revaluations(app: App, apis: Mapping[str, DirectRecharge],
                                 notify: Notify | None = None) -> None:
    """Settle revaluations left unsettled with their operators (ivr.revalue.service);
    ``notify`` tells the customer of each one settled."""
    from .live.servers import DatabaseOutage
    from .revalue.service import reconcile

    settings = app.settings
    after = timedelta(seconds=settings.revalue_reconcile_after)
    outage = DatabaseOutage("revaluation reconciliation", log)
    while True:
        await asyncio.sleep(settings.revalue_reconcile_interval)
        try:
            await reconcile(app.db, apis, older_than=after, notify=notify)
        except Exception as exc:
            if not outage.failed(exc):
                log.exception("revaluation reconciliation failed; next try in %gs",
                              settings.revalue_reconcile_interval)
        else:
            outage.ended()


def start_sip_guard(app: App, ami: AmiClient | None) -> SipGuard:
    """Follow the box's failed SIP attempts and block their sources (ivr.sipguard),
    applying the blocks to the Asterisk instance beside the server as ``ivr sip``
    applies its changes."""
    from .sip import apply_objects
    from .sipguard import SipGuard

    guard = SipGuard(app.settings, app.db, ami,
                     functools.partial(apply_objects, app.settings, app.db, app.secret_key))
    guard.start()
    return guard


async def serve(settings: Settings, *, on_started: Callable[[], None] | None = None,
                voice: Voice | None = None) -> int:
    """Build the application, run the FastAGI server and the call controller until
    SIGTERM/SIGINT, then shut down gracefully. ``voice``: prompts other than the
    instance's (a benchmark's store)."""
    from .agi import AgiServer
    from .ami import AmiClient
    from .app import App
    from .live.recovery import Recovery
    from .live.servers import Lease, LeaseRefused, keep_lease
    from .revalue.callbacks import callback_server
    from .revalue.direct import operators_from_settings
    from .revalue.service import callback_handler

    interfaces = operators_from_settings(settings)  # a ConfigError before anything starts
    # SIGTERM/SIGINT from the start: one that comes while the server starts ends it as
    # soon as it is up, through the same graceful shutdown.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Opens the database (and may migrate an SQLite file).
    app = await asyncio.to_thread(functools.partial(App.build, settings, voice=voice))
    await asyncio.to_thread(check_prompts, app)
    ledger = app.ledger
    # One server per database: a second one would take this one's live calls for a dead
    # server's (ivr.live.servers).
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
    controller = app.add_asterisk(ami)
    ami_task = asyncio.ensure_future(_keep_ami_connected(ami))
    server = AgiServer(
        app.routes(),
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
    recovery = Recovery(controller, lease, region=settings.default_region,
                        failure_window=settings.callerid_failure_window)
    recovery.start(settings.recovery_interval)
    reconciler = (asyncio.ensure_future(reconcile_payments(app))
                  if settings.payment_reconcile_interval > 0 else None)
    # The revalue line's operators: their callbacks endpoint (when any is configured) and
    # the reconciler of revaluations left unsettled.
    # Each recharge they settle is told to its customer by SMS.
    apis = {name: interfaces[name].client() for name in interfaces}
    told = revalue_notifier(app, ami)
    callbacks = (callback_server(interfaces.callback_secrets(),
                                 callback_handler(app.db, notify=told),
                                 settings.revalue_callback_bind) if apis else None)
    if callbacks is not None:
        await callbacks.start()
    revalue_reconciler = (asyncio.ensure_future(reconcile_revaluations(app, apis, told))
                          if settings.revalue_reconcile_interval > 0 else None)
    web = await start_web(app, ami)
    pruner = (asyncio.ensure_future(prune_call_traces(app))
              if settings.call_trace_days > 0 else None)
    heartbeat = asyncio.ensure_future(keep_lease(lease, controller.seen_alive, stop.set))
    guard = start_sip_guard(app, ami)
    if on_started:
        on_started()
    await stop.wait()
    log.info("stopping; running calls get up to %gs to finish", settings.shutdown_grace)
    await server.shutdown(settings.shutdown_grace)
    if reconciler is not None:
        await stop_task(reconciler)
    if revalue_reconciler is not None:
        await stop_task(revalue_reconciler)
    if callbacks is not None:
        await callbacks.stop()
    if web is not None:
        await web.stop()
    if pruner is not None:
        await stop_task(pruner)
    for api in apis.values():
        await api.aclose()
    await guard.close()
    await recovery.close()
    await app.close()  # controllers, then the charging session's background work
    await stop_task(ami_task)
    await ami.close()
    await stop_task(heartbeat)
    try:
        await asyncio.to_thread(lease.release)  # the next server need not wait for expiry
    except Exception as exc:
        log.warning("lease not released (it expires by itself): %s", exc)
    app.dispose()
    return 0


async def start_web(app: App, ami: AmiClient | None) -> LoopbackServer | None:
    """The web console (ivr.web) on ``web_bind``, in this process: its live calls and
    hang-ups use this server's AMI connection. None when ``web_bind`` is empty."""
    from .revalue.callbacks import LoopbackServer
    from .revalue.direct import parse_bind
    from .web import create_app

    if not app.settings.web_bind:
        return None
    host, port = parse_bind(app.settings.web_bind, "web_bind")
    web = LoopbackServer(create_app(app, ami=ami), host, port, name="web console")
    try:
        await web.start()
    except OSError as exc:  # a busy port: the calls go on, without the console
        log.error("web console not started: %s (set web_bind, or empty to serve none)", exc)
        print(f"ivr: web console not started: {exc}", file=sys.stderr, flush=True)
        return None
    print(f"ivr: web console on {web.url}/", flush=True)
    return web


def check_prompts(app: App) -> None:
    """Log an error naming the command when voice prompts have no audio (a bare
    `ivr serve` against an instance whose prompts were never built)."""
    from . import prompts
    from .prompts.build import missing_message

    try:
        message = missing_message(app.voice.store, app.voice.catalogue)
    except (prompts.CatalogueError, prompts.ManifestError, OSError) as exc:
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


