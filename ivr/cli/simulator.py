"""``ivr operator-sim``: run the simulated mobile operator (ivr.revalue.simulator) until
Ctrl-C or SIGTERM, for demonstrations, the bench and trying the revalue line by hand."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import TYPE_CHECKING

from ..config import Settings
from .common import CommandError, command, whole_arg

if TYPE_CHECKING:
    from ..revalue.simulator import SimulatedOperator


@command
def cmd_operator_sim(settings: Settings, args: argparse.Namespace) -> int:
    from ..revalue.direct import check_url, parse_bind
    from ..revalue.simulator import SimulatedOperator

    host, port = parse_bind(args.bind, "--bind")
    if args.callback_url:
        if not args.secret:
            raise CommandError("--callback-url needs --secret (callbacks are signed)",
                               "bad_argument")
        try:
            check_url(args.callback_url)
        except ValueError as exc:
            raise CommandError(f"--callback-url: {exc}", "bad_argument") from None
    try:
        sim = SimulatedOperator(
            args.behaviour, answer_ms=args.answer_ms, token=args.token,
            callback_url=args.callback_url, callback_secret=args.secret.encode(),
            name=args.name)
    except ValueError as exc:
        raise CommandError(str(exc), "bad_argument") from None
    return asyncio.run(_run(sim, host, port))


async def _run(sim: SimulatedOperator, host: str, port: int) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with sim.serving(host, port) as server:
            print(f"ivr: simulated operator {sim.name} on {server.url} (behaviour "
                  f"{sim.behaviour}, answers in {sim.answer_ms} ms"
                  f"{', callbacks to ' + sim.callback_url if sim.callback_url else ''}); "
                  "Ctrl-C stops it", flush=True)
            await stop.wait()
    except OSError as exc:
        raise CommandError(str(exc), "unavailable") from None
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(signum)
    print("ivr: simulated operator stopped", flush=True)
    return 0


def _behaviour(text: str) -> str:
    from ..revalue.simulator import Behaviour

    try:
        Behaviour.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "operator-sim",
        help="run a simulated mobile operator (direct-recharge HTTP API) on loopback",
        description="A simulated operator speaking the direct-recharge API: POST "
                    "/recharges, GET /recharges/ID, and POST /_control (loopback only) "
                    "to change its behaviour while it runs.")
    p.add_argument("--bind", default="127.0.0.1:8099", help="host:port (default %(default)s)")
    p.add_argument("--behaviour", type=_behaviour, default="approve",
                   help="approve, decline, delay:MS, timeout:MS, unknown, pending:MS, "
                        "reverse:MS or callback-twice (default %(default)s)")
    p.add_argument("--answer-ms", type=whole_arg, default=50,
                   help="milliseconds every answer takes (default %(default)s)")
    p.add_argument("--token", default="", help="bearer token requests must carry")
    p.add_argument("--callback-url", default="",
                   help="where callbacks go, e.g. http://127.0.0.1:8091/callbacks/NAME")
    p.add_argument("--secret", default="",
                   help="shared secret signing the callbacks (the operator's token on "
                        "our side, unless it has its own callback_secret)")
    p.add_argument("--name", default="Simulated", help="the operator's name")
    p.set_defaults(func=cmd_operator_sim)
