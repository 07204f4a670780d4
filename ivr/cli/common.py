"""What every command group shares: refusals, output, argument parsers and the database.

A command raises :class:`CommandError` (or a domain error such as ``NotFound`` or
``NoRate``) and prints its result with :func:`emit`. Every command is wrapped by the one
decorator, :func:`command`, so that a refusal is one line on stderr (``ivr: ...``), or
under ``--json`` one object on stdout, ``{"error": {"code": "...", "message": "..."}}``,
with the same exit status (1; 2 for usage and configuration errors). Amounts are shown
with :func:`money` and read with :func:`parse_amount`.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from ..config import Settings
from ..db import Database
from ..db.migrate import ensure_schema
from ..db.types import display

EXIT_REFUSED = 1
EXIT_USAGE = 2

Command = Callable[[Settings, argparse.Namespace], int]


class CommandError(Exception):
    """A refused command: one clear line (or JSON object), exit status ``status``."""

    def __init__(self, message: str, code: str = "refused", status: int = EXIT_REFUSED):
        super().__init__(message)
        self.code = code
        self.status = status


# --------------------------------------------------------------------------- output

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


def with_json(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give a command the --json option :func:`emit` and :func:`report` look at."""
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


# --------------------------------------------------------------------------- refusals

# Known refusals: (module, class, code, exit status), most specific first (a subclass
# before its base). A class whose module was never imported cannot have been raised, so
# nothing is imported to check: `ivr --help` does not load the rating engine or pydub.
_REFUSALS: tuple[tuple[str, str, str, int], ...] = (
    ("ivr.config", "ConfigError", "config", EXIT_USAGE),
    ("ivr.money.accounts", "NotFound", "not_found", EXIT_REFUSED),
    ("ivr.money.accounts", "BadAmount", "bad_amount", EXIT_REFUSED),
    ("ivr.money.accounts", "CallerIdTaken", "callerid_taken", EXIT_REFUSED),
    ("ivr.money.accounts", "SettingRefused", "refused", EXIT_REFUSED),
    ("ivr.operators", "NotFound", "not_found", EXIT_REFUSED),
    ("ivr.sip", "SipNotFound", "not_found", EXIT_REFUSED),
    ("ivr.sip", "SipError", "refused", EXIT_REFUSED),
    ("ivr.operators", "OperatorExists", "exists", EXIT_REFUSED),
    ("ivr.prompts.catalogue", "UnknownPrompt", "not_found", EXIT_REFUSED),
    ("ivr.rating.model", "NoRate", "no_rate", EXIT_REFUSED),
    ("ivr.rating.model", "DeckError", "bad_deck", EXIT_REFUSED),
    ("ivr.money.rates_store", "PlanError", "plan", EXIT_REFUSED),
    ("ivr.money.ledger", "LedgerError", "ledger", EXIT_REFUSED),
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
    """The decorator of every command: refusals are reported by :func:`report` (one line,
    or one JSON object under --json), bugs still raise with their traceback."""

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


# --------------------------------------------------------------------------- parsing

# Every amount typed on the command line goes through parse_amount (the rules are
# ivr.money.accounts.read_amount's, the console's too); commands then hold an amount to
# its plan's decimals (check_decimals).
_WHOLE = re.compile(r"[0-9]{1,9}")


def parse_amount(text: str, what: str = "amount") -> Decimal:
    """An amount typed by the operator, exactly (ivr.money.accounts.read_amount);
    CommandError (one line) if it is not a plain decimal like 12.50, is out of range or
    has more than 6 decimals."""
    from ..money.accounts import BadAmount, read_amount

    try:
        return read_amount(text, what)
    except BadAmount as exc:
        raise CommandError(str(exc), "bad_amount") from None


def check_decimals(amount: Decimal, decimals: int, whose: str, what: str = "amount") -> None:
    """Refuse an amount finer than its plan's (currency's) smallest unit."""
    from ..money import accounts

    try:
        accounts.check_decimals(amount, decimals, whose, what)
    except accounts.BadAmount as exc:
        raise CommandError(str(exc), "bad_amount") from None


def amount_arg(text: str) -> Decimal:
    """:func:`parse_amount` as an argparse type: a bad amount is a usage error."""
    try:
        return parse_amount(text)
    except CommandError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def whole_arg(text: str) -> int:
    """A count or a number of seconds: ASCII digits only (int() takes other scripts'
    digits and underscores), at most 9 of them."""
    if not _WHOLE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r} (ASCII digits, "
                                         "at most 999999999)")
    return int(text)


def time_arg(text: str) -> datetime:
    """An ISO 8601 time; one without an offset is taken as UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def day_arg(text: str) -> date:
    """A date, YYYY-MM-DD."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


# --------------------------------------------------------------------------- resources


def open_db(settings: Settings) -> Database:
    """The database, reachable and at the current schema (SQLite is migrated on the fly;
    PostgreSQL wants an explicit `ivr db upgrade`)."""
    db = Database(settings.effective_database_url)
    db.ping()
    ensure_schema(db.engine, auto=db.is_sqlite)
    return db


def secret_key(settings: Settings) -> bytes:
    """The key of the recharge codes' keyed hashes: ``secret_key`` when configured, else
    the random one kept (made on first use) in the data directory, as the server reads it."""
    from ..secrets import load_secret_key

    return load_secret_key(settings.secret_key, settings.data_dir / "secret.key")


def currency_decimals(db: Database, currency: str) -> int | None:
    """The decimals amounts in ``currency`` are shown with (its finest plan's), None
    when no plan is in that currency."""
    from sqlalchemy import func, select

    from ..db.models import RatingPlan

    with db.reading() as s:
        found: int | None = s.scalar(select(func.max(RatingPlan.decimals))
                                     .where(RatingPlan.currency == currency.upper()))
    return found


def only_currency(db: Database) -> str:
    """The currency of the rating plans, when they all share one (--currency otherwise)."""
    from sqlalchemy import select

    from ..db.models import RatingPlan

    with db.reading() as s:
        currencies = sorted(set(s.scalars(select(RatingPlan.currency))))
    if len(currencies) != 1:
        raise CommandError("give --currency" + (f" (plans use {', '.join(currencies)})"
                                                if currencies else ""), "missing_option")
    return currencies[0]

