"""The console's HTTP layer (Starlette, Jinja2 templates, htmx served from our own static
files): log-in and sessions, roles, CSRF on every form, error pages. Pages live in
ivr.web.pages, one module per area, each a list of routes whose endpoints are wrapped
by :func:`page`; they call the same services as the CLI, through :class:`Console`.

Why the CSRF check is ours: a synchronizer token tied to the server-side session (one
compare per form) needs no library; the Starlette CSRF middlewares on PyPI use a
double-submit cookie, which a session table makes unnecessary.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from ..db import DatabaseUnavailable
from . import users
from .audit import Actor
from .users import Role, Who

if TYPE_CHECKING:
    from ..ami import AmiClient
    from ..app import App

log = logging.getLogger("ivr.web")

HERE = Path(__file__).parent
COOKIE = "ivr_session"
LOGIN_CSRF_COOKIE = "ivr_login_csrf"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"
MAX_FORM_BYTES = 20 * 1024 * 1024  # a rate deck upload at most

P = ParamSpec("P")
T = TypeVar("T")
Endpoint = Callable[[Request], Awaitable[Response]]
Handler = Callable[[Request, Who], Awaitable[Response]]


@dataclass
class Console:
    """What the pages need, handed in: the application (settings, database, ledger,
    charging, voice, gateway) and an AMI client for actions on live calls (the server's
    own when the console runs inside ``ivr serve``; else one of its own, or None)."""

    app: App
    ami: AmiClient | None = None
    templates: Environment = field(init=False)

    def __post_init__(self) -> None:
        self.templates = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)
        self.templates.filters["money"] = money
        self.templates.filters["urlq"] = lambda text: quote(str(text), safe="")
        self.templates.globals["Role"] = Role

    @property
    def db(self) -> Any:
        return self.app.db

    async def run(self, func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Database work on the database's worker threads, within its timeout."""
        return await self.app.db.run(func, *args, **kwargs)


def money(value: Decimal | int | None, places: int = 2) -> str:
    if value is None:
        return ""
    return f"{Decimal(value):,.{places}f}"


def console(request: Request) -> Console:
    found: Console = request.app.state.console
    return found


def address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def actor(request: Request, who: Who) -> Actor:
    return Actor(who, address(request))


class Forbidden(HTTPException):
    def __init__(self, detail: str = "your role cannot do this") -> None:
        super().__init__(403, detail)


def render(request: Request, template: str, who: Who | None = None, *, status: int = 200,
           **context: Any) -> HTMLResponse:
    """A page: ``template`` with ``context``, the user, their CSRF token and the nav."""
    html = console(request).templates.get_template(template).render(
        request=request, who=who, csrf=who.csrf if who else "", path=request.url.path,
        **context)
    return HTMLResponse(html, status_code=status)


async def form(request: Request) -> FormData:
    """The posted form (already CSRF-checked by :func:`page`)."""
    return await request.form(max_part_size=MAX_FORM_BYTES)


def page(role: Role = Role.VIEWER) -> Callable[[Handler], Endpoint]:
    """An endpoint for logged-in users of ``role`` or above. Others are sent to the log-in
    page (no session) or get 403. Every POST must carry the session's CSRF token (form
    field ``csrf`` or header X-CSRF-Token), else 403 and nothing is done."""

    def wrap(handler: Handler) -> Endpoint:
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            token = request.cookies.get(COOKIE, "")
            who = await console(request).run(users.session_user, console(request).db, token)
            if who is None:
                if request.method == "GET":
                    return RedirectResponse(f"/login?next={quote(request.url.path)}", 303)
                raise HTTPException(401, "log in first")
            if request.method == "POST":
                sent = request.headers.get(CSRF_HEADER)
                if sent is None:
                    sent = str((await form(request)).get(CSRF_FIELD) or "")
                if not users.csrf_ok(who.csrf, sent):
                    log.warning("web: %s from %s posted %s without a valid CSRF token",
                                who.name, address(request), request.url.path)
                    raise HTTPException(403, "this form has expired or did not come from "
                                             "this console: reload the page and try again")
            if not who.role.allows(role):
                log.warning("web: %s (%s) refused %s %s", who.name, who.role,
                            request.method, request.url.path)
                raise Forbidden(f"your role ({who.role}) cannot do this; it needs {role}")
            return await handler(request, who)

        return endpoint

    return wrap


# --------------------------------------------------------------------------- errors


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 401:
        return RedirectResponse("/login", 303)
    return _error_page(request, exc.status_code, str(exc.detail))


async def _database_down(request: Request, exc: Exception) -> Response:
    log.warning("web: %s %s: %s", request.method, request.url.path, exc)
    return _error_page(request, 503, "The database is not answering. Nothing was changed; "
                                     "try again in a moment.")


async def _bug(request: Request, exc: Exception) -> Response:
    log.exception("web: %s %s failed", request.method, request.url.path)
    return _error_page(request, 500, "Something went wrong on our side; it has been logged.")


def _error_page(request: Request, status: int, message: str) -> Response:
    try:
        html = console(request).templates.get_template("error.html").render(
            request=request, who=None, csrf="", path=request.url.path, status=status,
            message=message)
    except Exception:  # the template itself failing: plain text, never a traceback
        log.exception("web: error page")
        return Response(f"{status}: {message}\n", status_code=status, media_type="text/plain")
    return HTMLResponse(html, status_code=status)


# --------------------------------------------------------------------------- the app


def create_app(app: App, *, ami: AmiClient | None = None,
               routes: Iterable[BaseRoute] | None = None) -> Starlette:
    """The console as an ASGI app over ``app`` (see :class:`Console`)."""
    from .pages import all_routes

    web = Starlette(
        routes=[*(routes if routes is not None else all_routes()),
                Mount("/static", StaticFiles(directory=HERE / "static"), name="static")],
        exception_handlers={HTTPException: _http_error, DatabaseUnavailable: _database_down,
                            Exception: _bug})
    web.state.console = Console(app, ami)
    return web


def set_session_cookie(response: Response, request: Request, token: str) -> None:
    response.set_cookie(COOKIE, token, max_age=int(users.SESSION_LIFETIME.total_seconds()),
                        httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/")
