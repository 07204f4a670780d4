"""A simulated mobile operator for tests and demonstrations: the direct-recharge HTTP API
of :mod:`ivr.revalue.direct` on loopback, with behaviours chosen per number or for all.

Behaviours (``name`` or ``name:MS``, MS in milliseconds):

- ``approve``: COMPLETED after the answer time (``answer_ms``, the operator's own speed);
- ``decline``: DECLINED ("subscriber barred");
- ``delay:MS``: COMPLETED, MS later than usual;
- ``timeout:MS``: the recharge is done at once (status says COMPLETED, a callback says so)
  but the answer to the request is held MS (default 30000) ms, past the client's timeout;
- ``unknown``: answers UNKNOWN and keeps it so until settled (``/_control`` settle);
- ``pending:MS``: answers CREATED, completes MS (default 100) ms later, with a callback;
- ``reverse:MS``: COMPLETED, then REVERSED MS (default 100) ms later, with a callback;
- ``callback-twice``: COMPLETED, and the COMPLETED callback is sent twice.

Requests are kept by ``request_id``: the same id again returns the state it has now and
never recharges twice (the same id with another number, amount or currency: 409).
Callbacks go to ``callback_url`` signed with ``callback_secret`` (tried 3 times).

Control, loopback only: ``POST /_control`` with ``{"behaviour": "decline"}`` (for all),
``{"behaviour": "delay:200", "msisdn": "+15551230001"}`` (one number; ``"behaviour":
null`` clears it), ``{"settle": "REQUEST_ID", "state": "COMPLETED"}`` (sets a request's
state, with a callback) or ``{"reset": true}``; ``GET /_control`` shows the behaviours and
counts. ``ivr operator-sim`` runs one (ivr.cli.simulator); tests use
:meth:`SimulatedOperator.serving`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import itertools
import json
import logging
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .callbacks import LoopbackServer, error, read_body
from .direct import (
    SIGNATURE_HEADER,
    RechargeAnswer,
    RechargeRequest,
    RechargeState,
    answer_json,
    check_request_id,
    request_from_json,
    sign,
)

log = logging.getLogger("ivr.revalue.simulator")

BEHAVIOURS = ("approve", "decline", "delay", "timeout", "unknown", "pending", "reverse",
              "callback-twice")
# Milliseconds a behaviour takes when none is given (those that need one).
_DEFAULT_MS = {"delay": 200, "timeout": 30_000, "pending": 100, "reverse": 100}


@dataclass(frozen=True)
class Behaviour:
    name: str
    ms: int = 0

    @classmethod
    def parse(cls, spec: str) -> Behaviour:
        """``name`` or ``name:MS``; ValueError naming the known behaviours."""
        name, _, ms = spec.strip().lower().partition(":")
        if name not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {spec!r} (known: {', '.join(BEHAVIOURS)})")
        if ms and (not ms.isascii() or not ms.isdigit() or len(ms) > 7):
            raise ValueError(f"behaviour {spec!r}: {ms!r} is not milliseconds")
        return cls(name, int(ms) if ms else _DEFAULT_MS.get(name, 0))

    def __str__(self) -> str:
        return f"{self.name}:{self.ms}" if self.name in _DEFAULT_MS else self.name


@dataclass
class _Record:
    request: RechargeRequest
    answer: RechargeAnswer


class SimulatedOperator:
    """The simulated operator's state and its Starlette :attr:`app`.

    ``answer_ms`` is how long every answer takes (50 ms for the bench; 0 in unit tests).
    ``token``, when set, must come as a bearer token. :attr:`recharges` counts the
    recharges carried out (each request id once), :attr:`requests` the requests seen."""

    def __init__(self, behaviour: str = "approve", *, per_msisdn: dict[str, str] | None = None,
                 answer_ms: int = 0, token: str = "", callback_url: str = "",
                 callback_secret: bytes = b"", name: str = "Simulated") -> None:
        self.behaviour = Behaviour.parse(behaviour)
        self.per_msisdn = {k: Behaviour.parse(v) for k, v in (per_msisdn or {}).items()}
        if answer_ms < 0:
            raise ValueError("answer_ms: must be 0 or more")
        self.answer_ms = answer_ms
        self.name = name
        self._token = token
        self.callback_url = callback_url
        self._secret = callback_secret
        self._records: dict[str, _Record] = {}
        self._refs = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = asyncio.Event()
        self._http: httpx.AsyncClient | None = None
        self.recharges = 0
        self.requests = 0
        self.callbacks_sent = 0
        self.app = Starlette(routes=[
            Route("/recharges", self._post, methods=["POST"]),
            Route("/recharges/{request_id}", self._get, methods=["GET"]),
            Route("/_control", self._control, methods=["GET", "POST"]),
        ])

    # ------------------------------------------------------------------ for tests

    def set_behaviour(self, spec: str | None, msisdn: str | None = None) -> None:
        """For every number (``msisdn`` None), or for one (``spec`` None: as the rest)."""
        if msisdn is None:
            self.behaviour = Behaviour.parse(spec or "approve")
        elif spec is None:
            self.per_msisdn.pop(msisdn, None)
        else:
            self.per_msisdn[msisdn] = Behaviour.parse(spec)

    def behaviour_for(self, msisdn: str) -> Behaviour:
        return self.per_msisdn.get(msisdn, self.behaviour)

    def answer(self, request_id: str) -> RechargeAnswer | None:
        """The request's state now, as status would say it (None: never seen)."""
        record = self._records.get(request_id)
        return None if record is None else record.answer

    def recharged(self, msisdn: str) -> Decimal:
        """The amount recharged to a number (completed, not reversed)."""
        return sum((r.request.amount for r in self._records.values()
                    if r.request.msisdn == msisdn
                    and r.answer.state is RechargeState.COMPLETED), Decimal(0))

    def settle(self, request_id: str, state: RechargeState) -> RechargeAnswer:
        """Set a request's state (for tests of reconciliation), with a callback."""
        record = self._records.get(request_id)
        if record is None:
            raise KeyError(request_id)
        return self._set(record, state, "settled by control")

    def reset(self) -> None:
        """Forget every request and behaviour; stop the timers and callbacks pending."""
        for task in list(self._tasks):
            task.cancel()
        self.behaviour = Behaviour("approve")
        self.per_msisdn.clear()
        self._records.clear()
        self.recharges = self.requests = self.callbacks_sent = 0

    @contextlib.asynccontextmanager
    async def serving(self, host: str = "127.0.0.1", port: int = 0
                      ) -> AsyncIterator[LoopbackServer]:
        """Serve the simulator (port 0: a free one) for the block; the server's ``url``
        is the API's base URL."""
        server = LoopbackServer(self.app, host, port, name="operator-sim")
        self._closing = asyncio.Event()
        await server.start()
        try:
            yield server
        finally:
            await self.aclose()
            await server.stop()

    async def aclose(self) -> None:
        """Release held answers, stop timers and callbacks in flight."""
        self._closing.set()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # ------------------------------------------------------------------ the API

    def _authorised(self, request: Request) -> bool:
        if not self._token:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self._token}".encode())

    async def _post(self, request: Request) -> Response:
        if not self._authorised(request):
            return error(401, "unauthorized")
        body = await read_body(request)
        if body is None:
            return error(413, "body too large")
        try:
            req = request_from_json(json.loads(body), self.name)
        except ValueError as exc:
            return error(400, str(exc)[:200])
        key = request.headers.get("idempotency-key")
        if key is not None and key != req.request_id:
            return error(400, "Idempotency-Key differs from request_id")
        self.requests += 1
        record = self._records.get(req.request_id)
        if record is not None:  # a repeat: the state now, nothing done again
            if (record.request.msisdn, record.request.amount, record.request.currency) != \
                    (req.msisdn, req.amount, req.currency):
                return error(409, "request_id already used for another recharge")
            await self._pause(self.answer_ms)
            return JSONResponse(answer_json(record.answer))
        ref = f"SIM{next(self._refs):08d}"
        record = _Record(req, RechargeAnswer(req.request_id, RechargeState.CREATED, ref))
        self._records[req.request_id] = record
        behaviour = self.behaviour_for(req.msisdn)
        await self._pause(self.answer_ms)
        name, ms = behaviour.name, behaviour.ms
        if name == "decline":
            self._set(record, RechargeState.DECLINED, "subscriber barred", callback=False)
        elif name == "unknown":
            self._set(record, RechargeState.UNKNOWN, "no answer from the charging system",
                      callback=False)
        elif name == "pending":
            self._later(ms, record, RechargeState.COMPLETED)
        elif name == "timeout":
            self._set(record, RechargeState.COMPLETED)  # done, but the answer is late
            await self._pause(ms)
        else:
            if name == "delay":
                await self._pause(ms)
            self._set(record, RechargeState.COMPLETED, callback=False)
            if name == "reverse":
                self._later(ms, record, RechargeState.REVERSED)
            elif name == "callback-twice":
                self._spawn(self._callback(record.answer, times=2))
        return JSONResponse(answer_json(record.answer))

    async def _get(self, request: Request) -> Response:
        if not self._authorised(request):
            return error(401, "unauthorized")
        try:
            request_id = check_request_id(request.path_params["request_id"])
        except ValueError as exc:
            return error(400, str(exc)[:200])
        record = self._records.get(request_id)
        if record is None:
            return error(404, "no such recharge")
        await self._pause(self.answer_ms)
        return JSONResponse(answer_json(record.answer))

    async def _control(self, request: Request) -> Response:
        client = request.client.host if request.client else ""
        try:
            loopback = ipaddress.ip_address(client).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            return error(403, "control from loopback only")
        if request.method == "POST":
            try:
                self._apply_control(json.loads(await request.body()))
            except (ValueError, KeyError) as exc:
                return error(400, str(exc)[:200])
        return JSONResponse({
            "behaviour": str(self.behaviour),
            "per_msisdn": {k: str(v) for k, v in self.per_msisdn.items()},
            "answer_ms": self.answer_ms, "recharges": self.recharges,
            "requests": self.requests, "callbacks_sent": self.callbacks_sent,
        })

    def _apply_control(self, data: object) -> None:
        if not isinstance(data, dict):
            raise ValueError("the body is not a JSON object")
        if data.get("reset"):
            self.reset()
        if "behaviour" in data:
            spec, msisdn = data["behaviour"], data.get("msisdn")
            if not (spec is None or isinstance(spec, str)) or not (
                    msisdn is None or isinstance(msisdn, str)):
                raise ValueError("behaviour and msisdn are strings")
            if spec is None and msisdn is None:
                raise ValueError("behaviour null clears one number's: give msisdn")
            self.set_behaviour(spec, msisdn)
        if "settle" in data:
            state = str(data.get("state", "")).upper()
            if state not in RechargeState.__members__:
                raise ValueError(f"state: one of {', '.join(RechargeState.__members__)}")
            try:
                self.settle(str(data["settle"]), RechargeState[state])
            except KeyError:
                raise ValueError(f"no such request: {data['settle']!r}") from None

    # ------------------------------------------------------------------ inside

    def _set(self, record: _Record, state: RechargeState, reason: str = "",
             callback: bool = True) -> RechargeAnswer:
        was = record.answer.state
        record.answer = replace(record.answer, state=state, reason=reason)
        if state is RechargeState.COMPLETED and was is not RechargeState.COMPLETED:
            self.recharges += 1
        elif was is RechargeState.COMPLETED and state is not RechargeState.COMPLETED:
            self.recharges -= 1
        if callback:
            self._spawn(self._callback(record.answer))
        return record.answer

    def _later(self, ms: int, record: _Record, state: RechargeState) -> None:
        async def run() -> None:
            await asyncio.sleep(ms / 1000)
            self._set(record, state, "reversed by the operator"
                      if state is RechargeState.REVERSED else "")

        self._spawn(run())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _pause(self, ms: int) -> None:
        """Wait ``ms`` milliseconds, or less when the simulator is closing."""
        if ms > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ms / 1000):
                    await self._closing.wait()

    async def _callback(self, answer: RechargeAnswer, times: int = 1) -> None:
        if not self.callback_url:
            return
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=5.0)
        body = json.dumps(answer_json(answer)).encode()
        for _ in range(times):
            for attempt in range(3):
                try:
                    response = await self._http.post(
                        self.callback_url, content=body,
                        headers={"Content-Type": "application/json",
                                 SIGNATURE_HEADER: sign(self._secret, body)})
                except httpx.HTTPError as exc:
                    log.warning("callback for %s: %s", answer.request_id, exc)
                else:
                    if response.is_success:
                        self.callbacks_sent += 1
                        break
                    log.warning("callback for %s: HTTP %d", answer.request_id,
                                response.status_code)
                    if response.status_code < 500:
                        break
                await asyncio.sleep(0.1 * 2**attempt)
