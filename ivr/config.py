"""Settings: built-in defaults, then a TOML file, then ``IVR_*`` environment variables.

The file is the first of: the ``--config`` option, ``$IVR_CONFIG``, ``./ivr.toml``,
``$XDG_CONFIG_HOME/ivr/ivr.toml``. Every key may be given flat (``agi_port = 4573``) or
grouped in a table whose name is the key's prefix (``[agi] port = 4573``). An environment
variable is the key in upper case: ``IVR_AGI_PORT=4600``.
"""

from __future__ import annotations

import dataclasses
import importlib
import ipaddress
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "IVR_"


class ConfigError(ValueError):
    """A setting is missing, unknown or of the wrong type."""


def _xdg(var: str, fallback: str) -> Path:
    return Path(os.environ.get(var) or Path.home() / fallback)


def default_data_dir() -> Path:
    return _xdg("XDG_DATA_HOME", ".local/share") / "ivr"


def default_cache_dir() -> Path:
    return _xdg("XDG_CACHE_HOME", ".cache") / "ivr"


@dataclass(frozen=True)
class Settings:
    # Where the SQLite database, logs and the Asterisk instance state live.
    data_dir: Path = field(default_factory=default_data_dir)
    # SQLAlchemy URL; empty means an SQLite file in data_dir.
    database_url: str = ""
    # Seconds a call waits for the database at each step (a locked SQLite file, a stopped
    # or overloaded PostgreSQL) before the caller hears "service unavailable".
    db_timeout: float = 5.0

    # FastAGI server.
    agi_host: str = "127.0.0.1"
    agi_port: int = 4573
    agi_header_timeout: float = 5.0  # seconds to receive the agi_* block
    agi_command_timeout: float = 3600.0  # the most any one AGI reply may take (Dial: a call)
    # Open FastAGI connections at most (a live call holds one for its whole length, a
    # top-up menu another); beyond it a connection is closed at once. 200: twice the live
    # calls the call-setup bench runs on 2 cores; a flood at the limit costs ~20 MB.
    agi_max_connections: int = 200
    # Who may connect (Asterisk): addresses or networks, comma-separated; others are
    # closed before anything is read.
    agi_allowed_hosts: str = "127.0.0.0/8,::1"
    shutdown_grace: float = 30.0  # seconds running calls get on SIGTERM

    # Asterisk Manager Interface. Loopback only. The secret of the server's AMI user:
    # empty means a random one kept in data_dir/ami.secret (0600), made on first use.
    ami_host: str = "127.0.0.1"
    ami_port: int = 5038
    ami_user: str = "ivr"
    ami_secret: str = ""

    # Which Asterisk `ivr asterisk up` runs: auto (system if installed, else sandbox),
    # system, or sandbox (Debian sid's Asterisk in a debootstrap root).
    asterisk_mode: str = "auto"
    asterisk_sandbox_dir: Path = field(default_factory=lambda: default_cache_dir() / "asterisk-sid")
    # Name of the Asterisk instance (its own run/log/spool dirs), so a test instance can
    # run beside the operator's.
    asterisk_instance: str = "main"
    # SIP (PJSIP). Where the UDP and TCP transports listen, host:port; loopback by default
    # so nothing outside the machine can reach the IVR until the operator opens it.
    sip_bind: str = "127.0.0.1:5060"
    # The public address behind NAT, advertised in SIP headers and SDP; empty: the bind
    # address is the one the far end sees.
    sip_external_address: str = ""
    # UDP ports RTP media may use (rtp.conf); give each instance its own range.
    rtp_start: int = 10000
    rtp_end: int = 20000
    # Dialled numbers (a trunk's DIDs, a phone's short numbers) and the line each reaches:
    # "number=line,..." with lines access, revalue and operator. Any other number is
    # refused (404).
    sip_lines: str = "100=access,200=revalue,300=operator"
    # Failed SIP attempts (unknown address or user, wrong password, as Asterisk's security
    # events report them) from one source address that block it: sip_block_failures
    # within sip_block_window seconds block it for sip_block_seconds (ivr.sipguard);
    # 0 failures: no blocking.
    sip_block_failures: int = 10
    sip_block_window: float = 60.0
    sip_block_seconds: float = 600.0
    # The dial string for destinations; {number} is the filtered, normalised number.
    # The default is the sandbox test trunk.
    trunk_dial: str = "Local/{number}@ivr-test-callee"

    # The access-number line (calling-card calls).
    # Region for numbers dialled without an international prefix (ISO 3166 code).
    default_region: str = "US"
    # Languages offered at the start of a call; empty: every catalogue language.
    access_languages: str = ""
    # Consecutive wrong PINs that lock a card.
    pin_max_failures: int = 5
    # Wrong PINs or card numbers from one caller ID, across cards, within the window,
    # after which that caller ID is refused until the window passes.
    callerid_max_failures: int = 10
    callerid_failure_window: int = 3600
    # Seconds the destination may ring before NOANSWER.
    dial_timeout: int = 60
    # Mid-call warnings: the caller hears one when the time left falls below
    # low_balance_warning seconds, and a last one final_warning seconds before the cut.
    low_balance_warning: int = 60
    final_warning: int = 10
    # A call holds at most this many seconds of its account's balance at a time; the
    # call controller renews the hold before it runs out. Cards sharing one account can
    # so call at the same time (the first call no longer holds the whole balance), and a
    # call outliving this server ends within one hold. 0: hold all the balance buys.
    reservation_hold: int = 300
    # Settle calls that ended while the server was down, every this many seconds.
    recovery_interval: float = 5.0
    # One ivr serve per database: the running server renews its lease every this many
    # seconds; a lease not renewed for 5 heartbeats has expired (ivr.live.servers).
    server_heartbeat: float = 1.0

    # Mid-call top-up by payment card (ivr.payments).
    # The gateway: "sandbox" (test card numbers only, nothing is charged), or
    # "package.module:factory" naming a callable that takes the Settings and returns a
    # PaymentGateway backed by a real processor.
    payment_gateway: str = "sandbox"
    # Seconds a charge may take before it counts as timed out (nothing is credited).
    payment_timeout: float = 20.0
    # Payments left pending or timed out are settled with the gateway (credited when it
    # charged, else closed) once this many seconds old, checked every interval (0: off).
    payment_reconcile_after: float = 300.0
    payment_reconcile_interval: float = 60.0
    # Key the sandbox derives its card tokens from; any value works, but keep it stable,
    # or tokens saved earlier are no longer recognised.
    payment_sandbox_secret: str = "ivr-sandbox-token-secret"
    # Key of the keyed hashes (HMAC-SHA256) that stand for recharge codes in the
    # database. Empty: a random key kept in data_dir/secret.key, made on first use.
    # Back it up with the database: without it no code can be redeemed.
    secret_key: str = ""
    # The card PINs' key ring (HMAC-SHA256, ivr.secrets.PinKeys): `id:hex` entries,
    # newest first, or one bare hex key. Empty: data_dir/pin.key (mode 0600), made on
    # first use. Keep it apart from the database (docs/design.md, "Card PIN keys").
    pin_key: str = ""
    # Amounts offered in the top-up menu, comma-separated, in the account's currency.
    topup_amounts: str = "5,10,20"
    # While the caller is in the mid-call top-up menu the call is kept open at least this
    # many seconds (the held party's time beyond the grant is not charged).
    topup_grace: int = 90

    # Low-balance notices outside calls (ivr.money.notify). E-mail: empty smtp_host means off.
    smtp_host: str = ""
    smtp_port: int = 25
    smtp_from: str = "ivr@localhost"
    # SMS: "ami" (Asterisk MessageSend to sms_ami_uri), "http" (POST JSON to
    # sms_http_url, with sms_http_token as a bearer token if set) or "" (off).
    sms_mode: str = ""
    sms_http_url: str = ""
    sms_http_token: str = ""
    # {number} is the account's SMS number.
    sms_ami_uri: str = "pjsip:{number}"

    # Revalue-line customers (ivr.revalue.customers). Digits of a customer's first code
    # (4 to 12), and the plan (its currency) of the account made for a customer added
    # without --account; empty: --plan must be given.
    revalue_code_length: int = 6
    revalue_plan: str = ""
    # Which operator a number is with (ivr.revalue.lookup): "" for the local lookup (the
    # ported-numbers table, else phonenumbers' carrier data; unverified), or
    # "package.module:factory" naming a callable that takes the Settings and returns a
    # NumberLookup backed by an HLR / number-portability provider.
    revalue_lookup: str = ""

    # The revalue line's recharge-code pools (ivr.revalue.codes): when an issue leaves a
    # pool (an operator's codes of one value) with this many codes or fewer, a low-stock
    # notice is e-mailed to operator_email, once until an import lifts it above the level.
    code_low_stock: int = 20
    # Where notices meant for whoever runs this service go (e-mail); empty: none is sent.
    operator_email: str = ""

    # Direct recharges through the operators' own interfaces (ivr.revalue.direct). Which
    # operator is reached how: the path of a TOML file (ending in .toml), or inline
    # entries "NAME=http:URL@TOKEN" separated by ";"; empty: none. Seconds a recharge or
    # status request may take before its outcome counts as unknown (money kept held).
    revalue_operators: str = ""
    revalue_timeout: float = 10.0
    # Where the operators' signed callbacks are taken (ivr.revalue.callbacks), host:port
    # on loopback (a reverse proxy in front takes them from outside).
    revalue_callback_bind: str = "127.0.0.1:8091"
    # The web console (ivr.web): host:port it serves on, inside `ivr serve` / `ivr run`
    # and as `ivr web` (empty: not served by `ivr serve`). Loopback by default: put a
    # TLS reverse proxy in front to reach it from elsewhere.
    web_bind: str = "127.0.0.1:8080"
    # Days each call's trace (ivr.live.trace: prompts, keys, grants, warnings, the
    # charge) is kept; older events are deleted by the server.
    call_trace_days: int = 7
    # Revaluations (ivr.revalue.service) left unsettled (no answer from the operator, or
    # a process that stopped mid-way) are settled from the operator's status once this
    # many seconds old (keep it above revalue_timeout), checked every interval (0: off).
    revalue_reconcile_after: float = 120.0
    revalue_reconcile_interval: float = 60.0
    # Loyalty points (ivr.revalue.loyalty): points per 1.00 of a recharge's currency
    # (0: none), per operator "NAME=RATE;NAME=RATE" overriding it, and what a point is
    # worth when redeemed (credit in the account's currency).
    loyalty_points_per_unit: str = "0"
    loyalty_operator_points: str = ""
    loyalty_point_value: str = "0.01"
    # The revalue line's flow (ivr.flows.revalue). The amounts offered per operator,
    # "NAME=5,10,20;*=5,10" ("*": any other operator; empty: none offered), in the
    # customer's account's currency, at most 9 each; the default chosen by # when it is
    # one of them; the prompt ids played in turn while a recharge is made; and the
    # seconds the caller waits for it before being told it is pending (confirmed by SMS).
    revalue_products: str = "*=5,10,20"
    revalue_default_amount: str = "10"
    revalue_wait_prompts: str = "recharge-in-progress,revalue-advert"
    revalue_wait_timeout: float = 20.0

    log_level: str = "INFO"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'ivr.sqlite3'}"

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (dataclasses.replace checks the names)."""
        return dataclasses.replace(self, **changes)


_FIELDS = {f.name: f for f in fields(Settings)}


def _coerce(name: str, raw: object) -> object:
    """Turn a file or environment value into the field's type, or raise ConfigError."""
    spec = _FIELDS[name]
    default: object = spec.default
    if spec.default_factory is not dataclasses.MISSING:
        default = spec.default_factory()
    kind = type(default)
    try:
        if isinstance(default, Path):
            return Path(str(raw)).expanduser()
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            return str(raw).strip().lower() in {"1", "true", "yes", "on"}
        if kind is int:
            if isinstance(raw, bool):
                raise TypeError("boolean given")
            value = int(str(raw))
            if name == "agi_max_connections" and value < 1:
                raise ValueError("must be at least 1")
            if name == "sip_block_failures" and value < 0:
                raise ValueError("must be 0 (off) or more")
            if name == "revalue_code_length" and not 4 <= value <= 12:
                raise ValueError("must be 4 to 12")
            if name == "code_low_stock" and value < 0:
                raise ValueError("must be 0 or more")
            return value
        if kind is float:
            number = float(str(raw))
            if name in ("sip_block_window", "sip_block_seconds", "revalue_timeout",
                        "revalue_wait_timeout") \
                    and not number > 0:
                raise ValueError("must be more than 0")
            return number
        if name == "agi_allowed_hosts":  # CIDRs, checked here for a one-line error
            for part in str(raw).split(","):
                if part.strip():
                    ipaddress.ip_network(part.strip(), strict=False)
            if not str(raw).strip(" ,"):
                raise ValueError("no address given")
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name!r}: cannot use {raw!r} ({exc})") from None


def _flatten(table: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}_"))
        else:
            flat[name] = value
    return flat


def find_config_file(
    explicit: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Path | None:
    environ = os.environ if environ is None else environ
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    env = environ.get("IVR_CONFIG")
    if env:
        return find_config_file(env, environ)
    for candidate in (Path("ivr.toml"), _xdg("XDG_CONFIG_HOME", ".config") / "ivr" / "ivr.toml"):
        if candidate.is_file():
            return candidate
    return None


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Defaults < file < environment."""
    environ = os.environ if environ is None else environ
    values: dict[str, object] = {}
    path = find_config_file(config_file, environ)
    if path is not None:
        try:
            table = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        for name, raw in _flatten(table).items():
            if name not in _FIELDS:
                raise ConfigError(f"{path}: unknown setting {name!r}")
            values[name] = _coerce(name, raw)
    for env_name, raw in environ.items():
        if not env_name.startswith(ENV_PREFIX) or env_name == "IVR_CONFIG":
            continue
        name = env_name[len(ENV_PREFIX) :].lower()
        if name in _FIELDS:
            values[name] = _coerce(name, raw)
    # Each value has its field's type (_coerce), which one dict's value type cannot say.
    return Settings(**values)  # type: ignore[arg-type]


def plugin_factory(setting: str, spec: str, default: str) -> Callable[[Settings], Any]:
    """The factory a plug-in setting names ("package.module:factory", a callable taking
    the settings): the payment gateway, the operator lookup. ``default`` says, for the
    error, what else the setting may be."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{setting}: {spec!r} is neither {default} nor "
                          "'package.module:factory'")
    try:
        factory: Callable[[Settings], Any] = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{setting} {spec!r}: {exc}") from None
    return factory

