"""The process's settings (and database) for code that is not handed them.

A FastAGI route is ``async def route(call)``: there is no dependency injection yet. A
route that needs the settings calls :func:`get_settings`, which loads them once with
:func:`ivr.config.load_settings` (config file, then ``IVR_*`` variables). A command that
loaded its own (``--config``) or a test installs them with :func:`set_settings`;
``set_settings(None)`` forgets them, so the next call loads them again.

:func:`get_ledger` and :func:`get_controller` are the money and live-call services the
server wires up (``ivr serve``). :func:`get_database` is the one :class:`ivr.db.Database`
for those settings, with the schema brought to head on first use when the database is
SQLite (PostgreSQL wants ``ivr db upgrade``, as for the operator commands).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

from .config import Settings, load_settings

if TYPE_CHECKING:
    from .calls import CallController
    from .db import Database
    from .ledger import Ledger
    from .payments import PaymentGateway

_lock = threading.Lock()
_settings: Settings | None = None
_database: Database | None = None
_ledger: Ledger | None = None
_controller: CallController | None = None
_gateway: tuple[object, PaymentGateway] | None = None  # (settings, gateway)
_secret_key: tuple[tuple[str, Path], bytes] | None = None  # ((configured, file), key)


def get_settings() -> Settings:
    global _settings
    with _lock:
        if _settings is None:
            _settings = load_settings()
        return _settings


def set_settings(settings: Settings | None) -> None:
    """Install the process's settings (None: load them again on next use)."""
    global _settings, _database, _ledger
    with _lock:
        _settings = settings
        _ledger = None
        if _database is not None:
            _database.dispose()
            _database = None


def get_secret_key(settings: Settings | None = None) -> bytes:
    """The key of the recharge codes' keyed hashes (ivr.secrets.load_secret_key) for
    ``settings`` (default: the process's), read once."""
    from .secrets import load_secret_key

    global _secret_key
    settings = settings or get_settings()
    source = (settings.secret_key, settings.data_dir / "secret.key")
    with _lock:
        if _secret_key is None or _secret_key[0] != source:
            _secret_key = (source, load_secret_key(*source))
        return _secret_key[1]


def get_database() -> Database:
    """The database of the current settings; call it from a worker thread (it may migrate).
    Its steps wait at most ``db_timeout`` seconds. The default SQLite file's data
    directory is kept private (0700)."""
    global _database
    settings = get_settings()
    with _lock:
        if (_database is None or _database.url != settings.effective_database_url
                or _database.timeout != settings.db_timeout):
            from .db import Database
            from .db.engine import private_path
            from .db.migrate import ensure_schema

            if not settings.database_url:
                settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                private_path(settings.data_dir)
            db = Database(settings.effective_database_url, timeout=settings.db_timeout)
            ensure_schema(db.engine, auto=db.is_sqlite)
            if _database is not None:
                _database.dispose()
            _database = db
        return _database


def get_ledger() -> Ledger:
    """The ledger (with its rating cache) over :func:`get_database`; from a worker thread."""
    global _ledger
    db = get_database()
    with _lock:
        if _ledger is None or _ledger.db is not db:
            from .ledger import Ledger

            _ledger = Ledger(db)
        return _ledger


def get_controller() -> CallController | None:
    """The call controller the server runs (None when it runs without AMI)."""
    return _controller


def set_controller(controller: CallController | None) -> None:
    global _controller
    _controller = controller


def get_gateway() -> PaymentGateway:
    """The payment gateway the settings name, one per process (its idempotency records
    and connections live as long as the server)."""
    global _gateway
    settings = get_settings()
    with _lock:
        if _gateway is None or _gateway[0] is not settings:
            from .payments import gateway_from_settings

            _gateway = (settings, gateway_from_settings(settings))
        return _gateway[1]
