"""The ``ivr`` command: one module per command group, each with ``add_commands(sub)``.

- :mod:`.server`: serve, run, asterisk, config
- :mod:`.db`: db
- :mod:`.rates`: plans, rates
- :mod:`.accounts`: accounts, cards
- :mod:`.vouchers`: vouchers
- :mod:`.topups`: auto-recharge, notices, payments
- :mod:`.prompts`: prompts, operators
- :mod:`.reports`: cdrs, reports
- :mod:`.sip`: sip trunks, sip phones
- :mod:`.codes`: codes (the revalue line's recharge-code pools)
- :mod:`.customers`: customers, ported, lookup (the revalue line's customers and operator
  lookup)
- :mod:`.simulator`: operator-sim (a simulated mobile operator for direct recharges)
- :mod:`.revaluations`, :mod:`.loyalty`: revaluations, loyalty (the revalue line's
  recharges and loyalty points)
- :mod:`.web`: web, web-users (the web console and its users)
- :mod:`.calls`: calls (a call's trace)

:mod:`.common` holds what they share: refusals and output (every command is wrapped by
``common.command``), argument parsers, the database and the secret key.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
from collections.abc import Sequence

from ..config import ConfigError, Settings, load_settings
from . import (
    accounts,
    calls,
    codes,
    customers,
    db,
    loyalty,
    prompts,
    rates,
    reports,
    revaluations,
    server,
    simulator,
    sip,
    topups,
    vouchers,
    web,
)
from .common import EXIT_USAGE, report

__all__ = ["build_parser", "main"]

# In the order `ivr --help` lists them.
GROUPS = (server, db, rates, accounts, vouchers, prompts, topups, reports, sip, codes,
          customers, simulator, revaluations, loyalty, web, calls)


def _setup_logging(settings: Settings, verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else getattr(logging, settings.log_level.upper(), 20),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ivr",
        description="Prepaid calling-card and top-up IVR for Asterisk.",
    )
    parser.add_argument("--config", help="TOML settings file (else $IVR_CONFIG, ./ivr.toml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_commands(sub)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace | int:
    """The parsed arguments, or the exit status of a usage error (under --json, reported
    as a JSON object on stdout like every refusal; argparse's usage stays on stderr)."""
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
    parser = build_parser()
    parsed = _parse(parser, list(sys.argv[1:] if argv is None else argv))
    if isinstance(parsed, int):
        return parsed
    args = parsed
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        return report(bool(getattr(args, "json", False)), "config", str(exc), EXIT_USAGE)
    _setup_logging(settings, args.verbose)
    # Every command is wrapped by common.command: a refusal (a ConfigError found when a
    # setting is first needed, too) is one line, or one JSON object under --json.
    return int(args.func(settings, args) or 0)
