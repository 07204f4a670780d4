"""Direct recharge through a mobile operator's own interface (mode b of the revalue line).

The line asks :class:`DirectRecharge` to recharge a number and gets a
:class:`RechargeAnswer` back, never an exception for a slow or absent operator:

- ``COMPLETED``: the operator recharged the number; ``DECLINED``: it refused (nothing was
  recharged); ``CREATED``: it accepted the request and will say later (a callback, or
  :meth:`DirectRecharge.status`); ``UNKNOWN``: no usable answer in time, or the operator
  itself does not know yet. An UNKNOWN request may have been carried out: the money stays
  held until :meth:`~DirectRecharge.status` settles it. A COMPLETED recharge may later be
  ``REVERSED`` by the operator (refund).
- ``request_id`` is ours, unique per revaluation, and the operator's idempotency key: the
  same id sent twice never recharges twice, so a request may be repeated safely.

:class:`HttpOperatorApi` speaks a small JSON API of this project's own definition (docs/
design.md, "Direct recharge over HTTP"): what the simulated operator
(:mod:`ivr.revalue.simulator`) serves, and what an adapter in front of a real operator's
interface maps to. Callbacks are signed with :func:`sign` and checked with :func:`verify`
(:mod:`ivr.revalue.callbacks`).

Which operator is reached how is the ``revalue_operators`` setting
(:func:`operators_from_settings`).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import logging
import re
import time
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from ..config import ConfigError, Settings

if TYPE_CHECKING:
    from ..app import App
    from .ivr_operator import IvrOperator

log = logging.getLogger("ivr.revalue.direct")

# The signature of a callback: "t=<unix seconds>,v1=<hex HMAC-SHA256 of 't.' + body>".
SIGNATURE_HEADER = "X-Recharge-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
# A callback signed longer ago than this (or this far in the future) is refused.
SIGNATURE_TOLERANCE = 300.0

_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_MSISDN = re.compile(r"\+[1-9][0-9]{6,14}")
_CURRENCY = re.compile(r"[A-Z]{3}")


class RechargeState(enum.StrEnum):
    CREATED = "created"  # accepted by the operator, outcome to follow
    COMPLETED = "completed"  # the number was recharged
    DECLINED = "declined"  # refused: nothing was recharged
    UNKNOWN = "unknown"  # no answer in time (or the operator does not know yet)
    REVERSED = "reversed"  # a completed recharge the operator took back

    @property
    def final(self) -> bool:
        """Whether the outcome is settled (REVERSED may still follow COMPLETED)."""
        return self in (RechargeState.COMPLETED, RechargeState.DECLINED,
                        RechargeState.REVERSED)


@dataclass(frozen=True)
class RechargeRequest:
    """One recharge: ``request_id`` (ours, the idempotency key: letters, digits and
    ``._:-``, at most 64), the E.164 ``msisdn``, the ``operator`` it is with, and the
    exact ``amount`` in ``currency``."""

    request_id: str
    msisdn: str
    operator: str
    amount: Decimal
    currency: str

    def __post_init__(self) -> None:
        check_request_id(self.request_id)
        if not _MSISDN.fullmatch(self.msisdn):
            raise ValueError(f"msisdn: not an E.164 number: {self.msisdn!r}")
        if not self.operator.strip():
            raise ValueError("operator: empty")
        if not isinstance(self.amount, Decimal) or not self.amount.is_finite() \
                or self.amount <= 0:
            raise ValueError(f"amount: must be a positive Decimal, not {self.amount!r}")
        if not _CURRENCY.fullmatch(self.currency):
            raise ValueError(f"currency: not a 3-letter code: {self.currency!r}")


@dataclass(frozen=True)
class RechargeAnswer:
    """What became of a request. ``operator_ref`` is the operator's id for it ("" if none),
    ``reason`` a short text for people (why it was declined or is unknown). ``operator``
    is the operator that answered, when known (the callbacks endpoint fills it from the
    URL the callback came to)."""

    request_id: str
    state: RechargeState
    operator_ref: str = ""
    reason: str = ""
    operator: str = ""


def check_request_id(request_id: str) -> str:
    if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
        raise ValueError(f"request_id: {request_id!r} is not 1 to 64 letters, digits or "
                         "'._:-' (starting with a letter or digit)")
    return request_id


class DirectRecharge(Protocol):
    """An operator's direct-recharge interface. Neither method raises for a timeout or an
    unreachable operator: the answer is then UNKNOWN."""

    async def recharge(self, req: RechargeRequest) -> RechargeAnswer:
        """Ask for the recharge (idempotent per ``req.request_id``)."""
        ...

    async def status(self, request_id: str) -> RechargeAnswer:
        """What the operator says of an earlier request now."""
        ...


# --------------------------------------------------------------------------- wire format


def request_json(req: RechargeRequest) -> dict[str, str]:
    """The body of ``POST /recharges`` (the amount as a decimal string, never a float)."""
    return {"request_id": req.request_id, "msisdn": req.msisdn,
            "amount": format(req.amount, "f"), "currency": req.currency}


def request_from_json(data: object, operator: str) -> RechargeRequest:
    """The request a ``POST /recharges`` body stands for; ValueError when malformed."""
    if not isinstance(data, Mapping):
        raise ValueError("the body is not a JSON object")
    fields_ = {}
    for name in ("request_id", "msisdn", "amount", "currency"):
        value = data.get(name)
        if not isinstance(value, str):
            raise ValueError(f"{name}: missing or not a string")
        fields_[name] = value
    try:
        amount = Decimal(fields_["amount"])
    except InvalidOperation:
        raise ValueError(f"amount: not a decimal: {fields_['amount']!r}") from None
    return RechargeRequest(fields_["request_id"], fields_["msisdn"], operator, amount,
                           fields_["currency"])


def answer_json(answer: RechargeAnswer) -> dict[str, str]:
    """The JSON object of an answer, as the operator sends it (and in callbacks)."""
    return {"request_id": answer.request_id, "state": answer.state.name,
            "operator_ref": answer.operator_ref, "reason": answer.reason}


def answer_from_json(data: object, operator: str = "") -> RechargeAnswer:
    """The answer a JSON object stands for (state names in any case); ValueError when it
    is malformed."""
    if not isinstance(data, Mapping):
        raise ValueError("the body is not a JSON object")
    request_id = data.get("request_id")
    if not isinstance(request_id, str):
        raise ValueError("request_id: missing or not a string")
    check_request_id(request_id)
    state = data.get("state")
    if not isinstance(state, str) or state.upper() not in RechargeState.__members__:
        raise ValueError(f"state: not one of {', '.join(RechargeState.__members__)}: "
                         f"{state!r}")
    texts = []
    for name in ("operator_ref", "reason"):
        value = data.get(name, "")
        if value is None:
            value = ""
        if not isinstance(value, str) or len(value) > 200:
            raise ValueError(f"{name}: not a string of at most 200 characters")
        texts.append(value)
    return RechargeAnswer(request_id, RechargeState[state.upper()], texts[0], texts[1],
                          operator)


# --------------------------------------------------------------------------- signatures


def sign(secret: bytes, body: bytes, timestamp: float | None = None) -> str:
    """The signature header of a callback ``body``: the time it was signed and an
    HMAC-SHA256 under the shared ``secret`` of that time and the exact body bytes."""
    t = int(time.time() if timestamp is None else timestamp)
    mac = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(secret: bytes, body: bytes, header: str | None, now: float | None = None,
           tolerance: float = SIGNATURE_TOLERANCE) -> bool:
    """Whether ``header`` is a valid signature of ``body`` under ``secret``, made within
    ``tolerance`` seconds of ``now`` (compared in constant time)."""
    if not secret or not header:
        return False
    parts = dict(part.strip().partition("=")[::2] for part in header.split(","))
    stamp, given = parts.get("t", ""), parts.get("v1", "")
    if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12 or not given:
        return False
    now = time.time() if now is None else now
    if abs(now - int(stamp)) > tolerance:
        return False
    expected = hmac.new(secret, f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, given)


# --------------------------------------------------------------------------- HTTP client

# Refusals of a request as malformed: it was not (and never will be) carried out, however
# often it is sent. Any other failure (401/403: a token changed since an earlier attempt;
# 409: the id was used for another request; 5xx; no answer) leaves the outcome UNKNOWN.
_REFUSED = frozenset({400, 422})


class HttpOperatorApi:
    """:class:`DirectRecharge` over the project's JSON API (see the module docstring), with
    one pooled async HTTP client (httpx). ``timeout`` bounds each call as a whole.
    ``token``, when set, is sent as a bearer token. Close it with :meth:`aclose` (or use
    ``async with``)."""

    def __init__(self, base_url: str, token: str = "", timeout: float = 10.0, *,
                 operator: str = "", max_connections: int = 100) -> None:
        if not timeout > 0:
            raise ValueError("timeout: must be more than 0")
        self.base_url = check_url(base_url).rstrip("/")
        self.timeout = timeout
        self.operator = operator
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.AsyncClient(
            headers=headers, timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=max_connections,
                                max_keepalive_connections=max_connections),
            follow_redirects=False)

    def __repr__(self) -> str:
        return f"HttpOperatorApi({self.operator or '?'} at {self.base_url})"

    async def __aenter__(self) -> HttpOperatorApi:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def recharge(self, req: RechargeRequest) -> RechargeAnswer:
        return await self._call(
            "POST", "/recharges", req.request_id, json=request_json(req),
            headers={IDEMPOTENCY_HEADER: req.request_id})

    async def status(self, request_id: str) -> RechargeAnswer:
        check_request_id(request_id)
        return await self._call("GET", f"/recharges/{request_id}", request_id)

    async def _call(self, method: str, path: str, request_id: str, **kwargs: Any
                    ) -> RechargeAnswer:
        def unknown(reason: str) -> RechargeAnswer:
            log.warning("%s %s%s (request %s): %s: outcome unknown", method, self.base_url,
                        path, request_id, reason)
            return RechargeAnswer(request_id, RechargeState.UNKNOWN, "", reason,
                                  self.operator)

        try:
            async with asyncio.timeout(self.timeout):
                response = await self._client.request(method, self.base_url + path,
                                                       **kwargs)
        except (TimeoutError, httpx.TimeoutException):
            return unknown(f"no answer within {self.timeout:g} s")
        except httpx.HTTPError as exc:
            return unknown(f"unreachable ({type(exc).__name__})")
        status = response.status_code
        if method == "GET" and status == 404 and _error_text(response, "") != "":
            # The operator has no record of it (its own JSON error, not a proxy's page):
            # the request never reached it, and nothing was recharged (ask only once the
            # request's own timeout has passed).
            return RechargeAnswer(request_id, RechargeState.DECLINED, "",
                                  "the operator has no record of this request",
                                  self.operator)
        if method == "POST" and status in _REFUSED:
            reason = f"refused by the operator (HTTP {status}): {_error_text(response)}"
            log.warning("recharge %s %s", request_id, reason)
            return RechargeAnswer(request_id, RechargeState.DECLINED, "", reason[:200],
                                  self.operator)
        if status in (401, 403):
            log.error("%s: HTTP %d: check the operator's token", self, status)
        if not 200 <= status < 300:
            return unknown(f"HTTP {status}: {_error_text(response)}"[:200])
        try:
            answer = answer_from_json(response.json(), self.operator)
        except ValueError as exc:  # JSONDecodeError is a ValueError
            return unknown(f"unreadable answer ({exc})"[:200])
        if answer.request_id != request_id:
            return unknown(f"answer for another request ({answer.request_id})"[:200])
        return answer


def _error_text(response: httpx.Response, otherwise: str | None = None) -> str:
    """The ``{"error": "..."}`` text of an answer, else ``otherwise`` (by default the
    HTTP reason phrase)."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, Mapping) and isinstance(data.get("error"), str):
        return str(data["error"])[:150]
    if otherwise is not None:
        return otherwise
    return response.reason_phrase or "error"


def check_url(url: str) -> str:
    """An http(s) URL with a host, or ValueError."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise ValueError(f"not a URL: {url!r} ({exc})") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"not an http(s) URL with a host: {url!r}")
    return url


# --------------------------------------------------------------------------- settings

INTERFACES = ("http", "ivr")
# The number an "ivr" operator is dialled at: digits (E.164 without "+", or whatever the
# trunk expects), as App.dial_target takes them.
_IVR_NUMBER = re.compile(r"[0-9]{2,20}")
# The second code (PIN) an "ivr" operator gave us: keypad digits, sent as DTMF.
_IVR_CODE = re.compile(r"[0-9*]{0,32}")


@dataclass(frozen=True)
class OperatorInterface:
    """How one operator is reached for direct recharges. ``callback_secret`` signs its
    callbacks (by default its token). An ``ivr`` operator has a ``number`` (its own
    revalue line, dialled through the trunk) and a ``code`` sent with each request
    instead of a URL and a token."""

    operator: str
    kind: str
    url: str
    token: str = field(default="", repr=False)
    timeout: float = 10.0
    callback_secret: bytes = field(default=b"", repr=False)
    number: str = ""
    code: str = field(default="", repr=False)

    def client(self, app: App | None = None) -> HttpOperatorApi | IvrOperator:
        """The :class:`DirectRecharge` for this operator (close it after use). An ``ivr``
        operator places calls through ``app`` (its outbound trunk and Asterisk
        connection); without one it can only answer :meth:`~DirectRecharge.status`
        (UNKNOWN), as ``ivr revaluations reconcile`` needs."""
        if self.kind == "ivr":
            from .ivr_operator import IvrOperator

            return IvrOperator(app, self.number, self.code, self.timeout,
                               operator=self.operator)
        return HttpOperatorApi(self.url, self.token, self.timeout, operator=self.operator)


class OperatorInterfaces(Mapping[str, OperatorInterface]):
    """The configured operators by name; looking one up ignores case (``Vodafone`` and
    ``vodafone`` are one operator)."""

    def __init__(self, interfaces: list[OperatorInterface] | None = None) -> None:
        self._by_key: dict[str, OperatorInterface] = {}
        for iface in interfaces or []:
            key = iface.operator.casefold()
            if key in self._by_key:
                raise ConfigError(f"revalue_operators: operator {iface.operator!r} is "
                                  "given twice")
            self._by_key[key] = iface

    def __getitem__(self, operator: str) -> OperatorInterface:
        return self._by_key[operator.strip().casefold()]

    def __iter__(self) -> Iterator[str]:
        return iter(iface.operator for iface in self._by_key.values())

    def __len__(self) -> int:
        return len(self._by_key)

    def callback_secrets(self) -> dict[str, bytes]:
        """Operator name -> the secret its callbacks are signed with."""
        return {iface.operator: iface.callback_secret for iface in self._by_key.values()}


def _interface(operator: str, kind: str, url: str, token: str, timeout: float,
               callback_secret: str | None, where: str) -> OperatorInterface:
    if not operator.strip() or len(operator.strip()) > 64:
        raise ConfigError(f"{where}: the operator's name must be 1 to 64 characters")
    if kind not in INTERFACES:
        raise ConfigError(f"{where}: unknown interface {kind!r} (known: "
                          f"{', '.join(INTERFACES)})")
    try:
        check_url(url)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if not timeout > 0:
        raise ConfigError(f"{where}: timeout must be more than 0 seconds")
    secret = token if callback_secret is None else callback_secret
    return OperatorInterface(operator.strip(), kind, url, token, timeout, secret.encode())


def _ivr_interface(operator: str, number: str, code: str, timeout: float,
                   where: str) -> OperatorInterface:
    if not operator.strip() or len(operator.strip()) > 64:
        raise ConfigError(f"{where}: the operator's name must be 1 to 64 characters")
    number = number.strip().removeprefix("+")
    if not _IVR_NUMBER.fullmatch(number):
        raise ConfigError(f"{where}: the operator's IVR number must be 2 to 20 digits")
    if not _IVR_CODE.fullmatch(code.strip()):
        raise ConfigError(f"{where}: the code must be at most 32 keypad digits (0-9, *)")
    if not timeout > 0:
        raise ConfigError(f"{where}: timeout must be more than 0 seconds")
    return OperatorInterface(operator.strip(), "ivr", "", timeout=timeout, number=number,
                             code=code.strip())


def parse_operators(text: str, timeout: float = 10.0) -> OperatorInterfaces:
    """The inline form of ``revalue_operators``: entries ``NAME=http:URL@TOKEN`` separated
    by ``;`` or new lines (the token after the last ``@``, empty for none; it also signs
    the operator's callbacks), or ``NAME=ivr:NUMBER`` (``NAME=ivr:NUMBER@CODE`` with the
    code the operator gave us). ConfigError names the bad entry."""
    found = []
    for number, entry in enumerate(re.split(r"[;\n]", text), 1):
        entry = entry.strip()
        if not entry:
            continue
        where = f"revalue_operators entry {number} ({entry.partition('=')[0].strip()!r})"
        name, eq, spec = entry.partition("=")
        kind, colon, rest = spec.partition(":")
        if not eq or not colon:
            raise ConfigError(f"{where}: write NAME=http:URL@TOKEN or NAME=ivr:NUMBER")
        if kind.strip() == "ivr":
            ivr_number, _, code = rest.partition("@")
            found.append(_ivr_interface(name, ivr_number, code, timeout, where))
            continue
        url, at, token = rest.rpartition("@")
        if not at:
            raise ConfigError(f"{where}: no @TOKEN after the URL (write URL@ for none)")
        found.append(_interface(name, kind.strip(), url.strip(), token.strip(), timeout,
                                None, where))
    return OperatorInterfaces(found)


def load_operators_file(path: Path, timeout: float = 10.0) -> OperatorInterfaces:
    """The TOML form: one table per operator, ``[operators."NAME"]`` with ``interface``
    ("http"), ``url``, and optionally ``token``, ``timeout`` (seconds) and
    ``callback_secret`` (default: the token); or ``interface = "ivr"`` with ``number``
    and optionally ``code`` and ``timeout`` (the whole call, from dialling to the
    acknowledgement)."""
    try:
        table = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"revalue_operators: cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"revalue_operators: {path}: {exc}") from None
    unknown = set(table) - {"operators"}
    if unknown:
        raise ConfigError(f"{path}: unknown table or key {sorted(unknown)[0]!r} (only "
                          "[operators.\"NAME\"] tables)")
    operators = table.get("operators", {})
    if not isinstance(operators, dict):
        raise ConfigError(f"{path}: operators must be tables: [operators.\"NAME\"]")
    found = []
    allowed = {"interface", "url", "token", "timeout", "callback_secret"}
    allowed_ivr = {"interface", "number", "code", "timeout"}
    for name, spec in operators.items():
        where = f"{path}: [operators.{name!r}]"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: not a table")
        if spec.get("interface") == "ivr":
            found.append(_ivr_from_table(name, spec, allowed_ivr, timeout, where))
            continue
        extra = set(spec) - allowed
        if extra:
            raise ConfigError(f"{where}: unknown key {sorted(extra)[0]!r} (known: "
                              f"{', '.join(sorted(allowed))})")
        kind, url = spec.get("interface", "http"), spec.get("url")
        token, secret = spec.get("token", ""), spec.get("callback_secret")
        each = spec.get("timeout", timeout)
        if not isinstance(url, str):
            raise ConfigError(f"{where}: url missing or not a string")
        if not all(isinstance(v, str) for v in (kind, token)) or not (
                secret is None or isinstance(secret, str)):
            raise ConfigError(f"{where}: interface, token and callback_secret are strings")
        if isinstance(each, bool) or not isinstance(each, int | float):
            raise ConfigError(f"{where}: timeout must be a number of seconds")
        found.append(_interface(name, kind, url, token, float(each), secret, where))
    return OperatorInterfaces(found)


def _ivr_from_table(name: str, spec: dict[str, Any], allowed: set[str], timeout: float,
                    where: str) -> OperatorInterface:
    extra = set(spec) - allowed
    if extra:
        raise ConfigError(f"{where}: unknown key {sorted(extra)[0]!r} (known for "
                          f"interface \"ivr\": {', '.join(sorted(allowed))})")
    number, code = spec.get("number"), spec.get("code", "")
    each = spec.get("timeout", timeout)
    if not isinstance(number, str):
        raise ConfigError(f"{where}: number missing or not a string")
    if not isinstance(code, str):
        raise ConfigError(f"{where}: code must be a string (quote it: digits may start "
                          "with 0)")
    if isinstance(each, bool) or not isinstance(each, int | float):
        raise ConfigError(f"{where}: timeout must be a number of seconds")
    return _ivr_interface(name, number, code, float(each), where)


def operators_from_settings(settings: Settings) -> OperatorInterfaces:
    """The operators reached directly: ``revalue_operators`` is either the path of a TOML
    file (ending in ``.toml``) or inline entries (:func:`parse_operators`); empty: none.
    ``revalue_timeout`` is each call's limit unless the file gives the operator its own."""
    text = settings.revalue_operators.strip()
    if not text:
        return OperatorInterfaces()
    if text.endswith(".toml"):
        return load_operators_file(Path(text).expanduser(), settings.revalue_timeout)
    return parse_operators(text, settings.revalue_timeout)


def parse_bind(text: str, what: str, loopback_only: bool = False) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) -> (host, port); ConfigError if malformed,
    or not a loopback address when ``loopback_only``."""
    import ipaddress

    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isascii() or not port.isdigit() \
            or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what}: {text!r} is not host:port")
    if loopback_only:
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ConfigError(f"{what}: {host} is not a loopback address (put a reverse "
                              "proxy in front to take the operators' callbacks)")
    return host, int(port)
