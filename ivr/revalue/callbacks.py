"""The operators' callbacks: a small HTTP endpoint on loopback where an operator posts
what became of a direct recharge (COMPLETED after CREATED or a timeout, DECLINED, a later
REVERSED).

``POST /callbacks/{operator}`` with the answer's JSON (as ``POST /recharges`` returns it)
and the ``X-Recharge-Signature`` header: an HMAC-SHA256 of the exact body under the
secret shared with that operator (:func:`ivr.revalue.direct.sign`). Answers: 204 taken,
403 bad or missing signature (or signed too long ago), 400 malformed body, 404 an operator
not configured, 413 a body over 16 KiB, 500 the handler failed (the operator should
retry).

Each valid callback is handed to ``on_answer`` (an ``async def on_answer(answer)``), with
``answer.operator`` set from the URL. Operators retry and sometimes repeat themselves: a
callback may come twice, and late (after :meth:`status` already told the same), and it is
then handed over twice: ``on_answer`` must be idempotent (apply a state once, ignore one
already applied, refuse an impossible transition such as DECLINED after COMPLETED).

:class:`LoopbackServer` serves an ASGI app (this one, or the simulated operator) with
uvicorn inside the running event loop, as a task started and stopped with the server; it
leaves the process's signal handlers alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Generator, Mapping
from types import TracebackType

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .direct import SIGNATURE_HEADER, SIGNATURE_TOLERANCE, RechargeAnswer, answer_from_json, verify

log = logging.getLogger("ivr.revalue.callbacks")
# uvicorn's own "Started server process" lines mean nothing inside ivr's process (the
# start is logged here): its warnings and errors still show.
_UVICORN_LOG = logging.getLogger("uvicorn.error")

MAX_BODY = 16 * 1024
AnswerHandler = Callable[[RechargeAnswer], Awaitable[None]]


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes | None:
    """The request's body, or None when it is longer than ``limit`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return body


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def callback_app(secrets: Mapping[str, bytes], on_answer: AnswerHandler,
                 tolerance: float = SIGNATURE_TOLERANCE) -> Starlette:
    """The callbacks endpoint for the operators in ``secrets`` (name -> shared secret;
    names match ignoring case)."""
    by_key = {name.casefold(): (name, secret) for name, secret in secrets.items()}

    async def callback(request: Request) -> Response:
        found = by_key.get(request.path_params["operator"].casefold())
        if found is None:
            return error(404, "no such operator")
        operator, secret = found
        body = await read_body(request)
        if body is None:
            return error(413, "body too large")
        if not verify(secret, body, request.headers.get(SIGNATURE_HEADER),
                      tolerance=tolerance):
            log.warning("callback for %s refused: bad or missing signature", operator)
            return error(403, "bad signature")
        try:
            answer = answer_from_json(json.loads(body), operator)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            return error(400, f"bad body: {exc}"[:200])
        log.info("callback from %s: request %s %s", operator, answer.request_id,
                 answer.state.name)
        try:
            await on_answer(answer)
        except Exception:
            log.exception("callback from %s for request %s: the handler failed", operator,
                          answer.request_id)
            return error(500, "not taken, send it again")
        return Response(status_code=204)

    return Starlette(routes=[Route("/callbacks/{operator}", callback, methods=["POST"])])


# --------------------------------------------------------------------------- serving


class _EmbeddedServer(uvicorn.Server):
    """uvicorn's server without its signal handling: the process (ivr serve, a test)
    decides when to stop it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class LoopbackServer:
    """Serve ``app`` on ``host:port`` (port 0: any free one; see :attr:`port`) in this event
    loop: ``await start()`` binds the socket (an OSError if it cannot) and serves as a
    task; ``await stop()`` lets requests in progress finish (at most ``grace`` seconds)
    and returns. Also an async context manager."""

    def __init__(self, app: Starlette, host: str = "127.0.0.1", port: int = 0, *,
                 name: str = "http", grace: int = 5) -> None:
        self.app, self.host, self.name = app, host, name
        self._port = port
        self._config = uvicorn.Config(
            app, host=host, port=port, http="h11", ws="none", lifespan="off",
            log_config=None, access_log=False, server_header=False,
            timeout_graceful_shutdown=grace)
        self._server: _EmbeddedServer | None = None
        if _UVICORN_LOG.level == logging.NOTSET:
            _UVICORN_LOG.setLevel(logging.WARNING)
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    async def start(self, timeout: float = 10.0) -> None:
        if self._task is not None:
            raise RuntimeError(f"{self.name} server already started")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP named: the accepted sockets inherit it, and asyncio sets TCP_NODELAY
        # only on sockets whose proto says TCP; without it an answer's body waits for
        # the client's delayed ACK of its headers (40 ms on Linux).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self._port))
            sock.listen(self._config.backlog)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"{self.name}: cannot listen on "
                                     f"{self.host}:{self._port}: {exc.strerror}") from None
        self._port = sock.getsockname()[1]
        server = self._server = _EmbeddedServer(self._config)
        self._task = asyncio.create_task(server.serve(sockets=[sock]),
                                         name=f"{self.name}-server")
        # Connections are queued from now on (the socket listens); wait until uvicorn
        # takes them, to report a failure to start here rather than later.
        async with asyncio.timeout(timeout):
            while not server.started:
                if self._task.done():
                    sock.close()
                    self._task.result()  # its exception, if any
                    raise RuntimeError(f"{self.name} server stopped while starting")
                await asyncio.sleep(0.005)
        log.info("%s server on %s", self.name, self.url)

    async def stop(self) -> None:
        """Stop taking connections, let those in progress finish, return."""
        task, server = self._task, self._server
        if task is None or server is None:
            return
        server.should_exit = True
        try:
            await task
        finally:
            self._task = self._server = None

    async def __aenter__(self) -> LoopbackServer:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()


def callback_server(secrets: Mapping[str, bytes], on_answer: AnswerHandler, bind: str
                    ) -> LoopbackServer:
    """The callbacks endpoint served on ``bind`` (the ``revalue_callback_bind`` setting,
    loopback only), not started yet."""
    from .direct import parse_bind

    host, port = parse_bind(bind, "revalue_callback_bind", loopback_only=True)
    return LoopbackServer(callback_app(secrets, on_answer), host, port, name="callbacks")
