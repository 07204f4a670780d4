"""What every command group shares: refusals, output and the wrapper that reports them.

A command raises :class:`CommandError` (or a domain error such as ``NotFound`` or
``NoRate``) and prints its result with :func:`emit`; :func:`command` wraps it so that a
refusal is one line on stderr (``ivr: ...``), or under ``--json`` one object on stdout,
``{"error": {"code": "...", "message": "..."}}``, with the same exit status (1; 2 for
usage and configuration errors). Amounts are shown with :func:`money`.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from .config import Settings
from .db.types import display

EXIT_REFUSED = 1
EXIT_USAGE = 2

Command = Callable[[Settings, argparse.Namespace], int]


class CommandError(Exception):
    """A refused command: one clear line (or JSON object), exit status ``status``."""

    def __init__(self, message: str, code: str = "refused", status: int = EXIT_REFUSED):
        super().__init__(message)
        self.code = code
        self.status = status


CENTS = 2


def money(amount: Decimal, decimals: int = CENTS) -> str:
    """An amount as every output shows it (text, JSON, CSV): with its plan's ``decimals``
    up to cents (5 -> 5.00; 500 on a whole-unit plan), and never a digit less than the
    amount has (a 4-decimal plan's 0.1234 stays 0.1234): exact, and alike everywhere."""
    return display(amount, min(decimals, CENTS))


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """Print a command's result: ``data`` as JSON under --json, else ``text``."""
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, default=str, ensure_ascii=False))
    else:
        print(text)


def report(as_json: bool, code: str, message: str, status: int = EXIT_REFUSED) -> int:
    """Report a refusal (JSON on stdout, or one line on stderr) and return ``status``."""
    if as_json:
        print(json.dumps({"error": {"code": code, "message": message}}, ensure_ascii=False),
              flush=True)
    else:
        print(f"ivr: {message}", file=sys.stderr, flush=True)
    return status


# Known refusals: (module, class, code, exit status), most specific first. A class whose
# module was never imported cannot have been raised, so nothing is imported to check.
_REFUSALS: tuple[tuple[str, str, str, int], ...] = (
    ("ivr.config", "ConfigError", "config", EXIT_USAGE),
    ("ivr.accounts", "NotFound", "not_found", EXIT_REFUSED),
    ("ivr.prompts.catalogue", "UnknownPrompt", "not_found", EXIT_REFUSED),
    ("ivr.rating.model", "NoRate", "no_rate", EXIT_REFUSED),
    ("ivr.rating.model", "DeckError", "bad_deck", EXIT_REFUSED),
    ("ivr.rates_store", "PlanError", "plan", EXIT_REFUSED),
    ("ivr.ledger", "LedgerError", "ledger", EXIT_REFUSED),
    ("ivr.db.types", "MoneyPrecisionError", "bad_amount", EXIT_REFUSED),
    ("ivr.db.engine", "DatabaseUnavailable", "database_unavailable", EXIT_REFUSED),
    ("ivr.db.migrate", "SchemaOutOfDate", "schema_out_of_date", EXIT_REFUSED),
    ("ivr.prompts.catalogue", "CatalogueError", "catalogue", EXIT_REFUSED),
    ("ivr.prompts.store", "ManifestError", "manifest", EXIT_REFUSED),
    ("ivr.prompts.audio", "AudioError", "audio", EXIT_REFUSED),
    ("ivr.asterisk.install", "AsteriskSetupError", "asterisk", EXIT_REFUSED),
    ("builtins", "FileExistsError", "file_exists", EXIT_REFUSED),
    ("builtins", "ValueError", "bad_argument", EXIT_REFUSED),
)
_DECK_NOTE = "nothing was imported; the previous rates are unchanged"


def refusal(exc: BaseException) -> CommandError | None:
    """The refusal an exception stands for, or None for a bug (left to its traceback)."""
    if isinstance(exc, CommandError):
        return exc
    for module_name, class_name, code, status in _REFUSALS:
        module = sys.modules.get(module_name)
        cls = getattr(module, class_name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            message = str(exc)
            if code == "bad_deck":  # one line per bad deck line
                message = f"{message}\n{_DECK_NOTE}"
            else:  # one line (psycopg's connection errors, for one, take two)
                message = " ".join(part.strip() for part in message.splitlines())
            return CommandError(message, code, status)
    return None


def command(func: Command) -> Command:
    """Wrap a command: refusals are reported by :func:`report`, bugs still raise."""

    @functools.wraps(func)
    def run(settings: Settings, args: argparse.Namespace) -> int:
        try:
            return int(func(settings, args) or 0)
        except Exception as exc:
            error = refusal(exc)
            if error is None:
                raise
            return report(getattr(args, "json", False), error.code, str(error), error.status)

    return run
