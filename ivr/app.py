"""The application: every service a call flow, the server loop or a command needs, built
once from the settings and handed to whoever needs it.

``ivr serve`` / ``ivr run`` build one (:meth:`App.build`), add a call controller per
Asterisk box they serve (:meth:`App.add_asterisk`) and start the FastAGI server with
:meth:`App.routes`; each route is ``async def route(call, app)``, as wazo-agid hands each
handler its dependencies. Tests build their own apps (several side by side in one process
do not see each other: nothing here is module state).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .agi import AgiSession, Handler
from .config import Settings
from .db import Database
from .live.calls import CallController, LiveCall
from .live.charging import Charging
from .live.trace import CallTrace
from .money.ledger import Ledger
from .sip import Outbound
from .sip import outbound as outbound_trunk

if TYPE_CHECKING:
    from .ami import AmiClient
    from .money.notify import Sender
    from .payments import PaymentGateway
    from .prompts import Voice
    from .revalue.direct import DirectRecharge, OperatorInterface, OperatorInterfaces
    from .revalue.ivr_operator import PendingIvrRecharge
    from .revalue.lookup import NumberLookup
    from .secrets import PinKeys

log = logging.getLogger("ivr.app")

OUTBOUND_TTL = 5.0  # seconds a server keeps what it read of the outbound trunk
# Routes whose calls have no story of their own: a warning whispered into a live call
# (its Local channel) is a step of that call's, recorded by the call controller.
UNTRACED_ROUTES = frozenset({"whisper"})

Route = Callable[[AgiSession, "App"], Awaitable[None]]


@dataclass
class App:
    """Settings, database, ledger (with its rate cache), charging session, payment
    gateway, voice prompts, and a call controller per Asterisk box."""

    settings: Settings
    db: Database
    ledger: Ledger
    voice: Voice
    gateway: PaymentGateway
    charging: Charging
    secret_key: bytes  # the keyed hashes' key (recharge codes)
    pin_keys: PinKeys  # the card PINs' key ring (ivr.secrets.load_pin_keys)
    asterisks: dict[str, CallController] = field(default_factory=dict)
    # (loop time read, the outbound trunk or None): see dial_target
    _outbound: tuple[float, Outbound | None] | None = field(default=None, repr=False)
    # IVR-to-IVR recharges being dialled, by request id (ivr.revalue.ivr_operator): the
    # route `revalue-ivr` of the answered call takes its request from here.
    ivr_recharges: dict[str, PendingIvrRecharge] = field(default_factory=dict, repr=False)
    # The direct-recharge client of each operator the line has used (by operator name,
    # case folded), kept for the server's life: an HTTP client's connection pool and
    # TLS context cost about 30 ms of CPU to make, more than the recharge itself.
    _operator_clients: dict[str, DirectRecharge] = field(default_factory=dict, repr=False)
    # The revalue line's settings read once (a TOML file, a plug-in's factory), not per
    # call: see revalue_operators() and number_lookup().
    _revalue_operators: OperatorInterfaces | None = field(default=None, repr=False)
    _number_lookup: NumberLookup | None = field(default=None, repr=False)
    # Each call's story (ivr.live.trace): the routes' commands, the charging steps.
    trace: CallTrace = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.trace = CallTrace(self.db)
        self.charging.trace = self.trace

    @classmethod
    def build(cls, settings: Settings, *, db: Database | None = None,
              voice: Voice | None = None, gateway: PaymentGateway | None = None) -> App:
        """The application for ``settings``; blocking (opens the database and may bring an
        SQLite file's schema to head): call it from a worker thread in async code."""
        from .payments import gateway_from_settings
        from .secrets import load_secret_key, pin_keys_of

        db = db or open_database(settings)
        ledger = Ledger(db)
        charging = Charging(ledger, hold=settings.reservation_hold)
        app = cls(settings, db, ledger, voice or default_voice(settings),
                  gateway or gateway_from_settings(settings), charging,
                  load_secret_key(settings.secret_key, settings.data_dir / "secret.key"),
                  pin_keys_of(settings))
        charging.notice = app._low_balance_notice
        charging.recharge = app._auto_recharge
        return app

    # ------------------------------------------------------------------ Asterisk boxes

    def add_asterisk(self, ami: AmiClient | None, name: str = "asterisk") -> CallController:
        """The call controller of one Asterisk box this server takes calls from."""
        controller = CallController.from_settings(ami, self.charging, self.settings, name=name)
        self.asterisks[name] = controller
        return controller

    def controller_for(self, call: AgiSession) -> CallController | None:
        """The controller of the Asterisk box a call comes from (None without AMI). With
        one box, that one; with several, the one named by the call's ``asterisk``
        AGI variable."""
        if len(self.asterisks) == 1:
            return next(iter(self.asterisks.values()))
        return self.asterisks.get(call.env.get("asterisk") or "")

    async def close(self) -> None:
        for controller in self.asterisks.values():
            await controller.close()
        self.asterisks.clear()
        await self.charging.aclose()
        await self.trace.close()
        clients, self._operator_clients = self._operator_clients, {}
        for client in clients.values():
            close = getattr(client, "aclose", None)
            if close is not None:
                await close()

    def revalue_operators(self) -> OperatorInterfaces:
        """The operators reached directly (``revalue_operators``), read on first use;
        ConfigError when the setting is wrong."""
        if self._revalue_operators is None:
            from .revalue.direct import operators_from_settings

            self._revalue_operators = operators_from_settings(self.settings)
        return self._revalue_operators

    def number_lookup(self) -> NumberLookup:
        """Which operator a number is with (``revalue_lookup``), made on first use."""
        if self._number_lookup is None:
            from .revalue.lookup import lookup_from_settings

            self._number_lookup = lookup_from_settings(self.settings, self.db)
        return self._number_lookup

    def operator_client(self, interface: OperatorInterface) -> DirectRecharge:
        """The operator's direct-recharge client, made on first use and kept (closed by
        :meth:`close`)."""
        key = interface.operator.casefold()
        client = self._operator_clients.get(key)
        if client is None:
            client = self._operator_clients[key] = interface.client(self)
        return client

    def dispose(self) -> None:
        self.db.dispose()

    # ------------------------------------------------------------------ routes

    def routes(self, routes: Mapping[str, Route] | None = None) -> dict[str, Handler]:
        """The FastAGI routes, each bound to this application."""
        if routes is None:
            from .flows import ROUTES

            routes = ROUTES
        return {name: self._bound(route, name) for name, route in routes.items()}

    def _bound(self, route: Route, name: str = "") -> Handler:
        async def handler(call: AgiSession) -> None:
            uniqueid = call.env.uniqueid
            if uniqueid and name not in UNTRACED_ROUTES:
                call.watcher = self.trace.watcher(uniqueid)
                self.trace.event(uniqueid, "start", route=name, channel=call.env.channel)
            await route(call, self)

        handler.__name__ = getattr(route, "__name__", "route")
        return handler

    # ------------------------------------------------------------------ outgoing legs

    async def dial_target(self, number: str) -> str:
        """Where a paid call to ``number`` (E.164 digits) is dialled: the SIP trunk marked
        outbound (``ivr sip trunks add --outbound``, with its strip and prefix), else the
        ``trunk_dial`` setting. The trunk is read at most every OUTBOUND_TTL seconds, so
        a change made with the command reaches a running server within that."""
        loop = asyncio.get_running_loop()
        cached = self._outbound
        if cached is None or loop.time() - cached[0] > OUTBOUND_TTL:
            trunk = await self.db.run(_read_outbound, self.db)
            cached = self._outbound = (loop.time(), trunk)
        if cached[1] is not None:
            return cached[1].dial(number)
        if not number.isdigit():  # nothing but digits ever reaches a dial string
            raise ValueError(f"not a number to dial: {number!r}")
        return self.settings.trunk_dial.format(number=number)

    # ------------------------------------------------------------------ hooks

    def notice_senders(self, ami: AmiClient | None) -> tuple[Sender | None, Sender | None]:
        """The e-mail and SMS senders the settings name (ivr.money.notify)."""
        from .money.notify import senders_from_settings

        return senders_from_settings(self.settings, ami=ami)

    async def _low_balance_notice(self, account_id: int,
                                  controller: CallController | None) -> None:
        from .money.notify import check_low_balance

        try:
            email, sms = self.notice_senders(controller.ami if controller else None)
        except ValueError as exc:
            log.warning("low-balance notice of account %s not sent: %s", account_id, exc)
            return
        if email is None and sms is None:
            return
        await check_low_balance(self.db, account_id, email=email, sms=sms)

    async def _auto_recharge(self, call: LiveCall) -> bool:
        from .payments import recharge

        return await recharge(self.db, self.gateway, account_id=call.account_id,
                              call_key=str(call.key), uniqueid=call.uniqueid)


def _read_outbound(db: Database) -> Outbound | None:
    with db.reading() as s:
        return outbound_trunk(s)


def open_database(settings: Settings) -> Database:
    """The database the settings name, its steps bounded by ``db_timeout``; an SQLite
    file's schema is brought to head (PostgreSQL wants ``ivr db upgrade``) and the
    default file's data directory kept private (0700)."""
    from .db.engine import private_path
    from .db.migrate import ensure_schema

    if not settings.database_url:
        settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        private_path(settings.data_dir)
    db = Database(settings.effective_database_url, timeout=settings.db_timeout)
    ensure_schema(db.engine, auto=db.is_sqlite)
    return db


def default_voice(settings: Settings) -> Voice:
    """The catalogue and the prompt store of the Asterisk instance the settings name."""
    from .asterisk import instance_for
    from .prompts import PromptStore, Voice, load_catalogue

    store = PromptStore.for_instance(instance_for(settings, build=False))
    return Voice(load_catalogue(), store)
