"""Log-in, log-out, one-time downloads and the audit log."""

from __future__ import annotations

import secrets

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from .. import audit, downloads, users
from ..http import (
    COOKIE,
    CSRF_FIELD,
    LOGIN_CSRF_COOKIE,
    actor,
    address,
    console,
    form,
    page,
    render,
    set_session_cookie,
)
from ..users import LoginRefused, Role, Who


def _next(request: Request, value: str | None) -> str:
    # Only a path of ours: never an open redirect.
    if value and value.startswith("/") and not value.startswith("//"):
        return value
    return "/"


async def login_form(request: Request) -> Response:
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(24)
    response = render(request, "login.html", next=_next(request, request.query_params.get(
        "next")), login_csrf=token, error=None, name="")
    response.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path="/login")
    return response


async def login(request: Request) -> Response:
    """The log-in form is CSRF-protected too (a token in a cookie and in the form), so
    another site cannot log a browser in as someone else."""
    data = await form(request)
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not users.csrf_ok(cookie, str(data.get(CSRF_FIELD) or "")):
        raise HTTPException(403, "this form has expired: reload the page and try again")
    name, password = str(data.get("name") or ""), str(data.get("password") or "")
    target = _next(request, str(data.get("next") or ""))
    c = console(request)
    try:
        token, _ = await c.run(users.log_in, c.db, name, password, address(request))
    except LoginRefused as exc:
        return render(request, "login.html", next=target, login_csrf=cookie, error=str(exc),
                      name=name[:64], status=429 if exc.throttled else 401)
    response = RedirectResponse(target, 303)
    set_session_cookie(response, request, token)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@page()
async def logout(request: Request, who: Who) -> Response:
    c = console(request)
    await c.run(users.log_out, c.db, who.session_id)
    response = RedirectResponse("/login", 303)
    response.delete_cookie(COOKIE, path="/")
    return response


@page()
async def audit_page(request: Request, who: Who) -> Response:
    c = console(request)
    before = request.query_params.get("before")
    rows = await c.run(audit.recent, c.db, limit=100,
                       before=int(before) if before and before.isdigit() else None)
    return render(request, "audit.html", who, rows=rows,
                  more=rows[-1].id if len(rows) == 100 else None)


@page(Role.SUPPORT)
async def download(request: Request, who: Who) -> Response:
    """A one-time file (a batch's PINs): given once, to the user it was made for."""
    c = console(request)
    found = await c.run(downloads.take, c.db, c.app.secret_key, who.user_id,
                        request.path_params["token"])
    if found is None:
        raise HTTPException(410, "this file has already been downloaded or has expired; "
                                 "it is given only once")
    filename, content = found
    return Response(content, media_type="text/csv", headers={
        "content-disposition": f'attachment; filename="{filename}"',
        "cache-control": "no-store"})


@page(Role.ADMIN)
async def web_users(request: Request, who: Who) -> Response:
    c = console(request)
    rows = await c.run(users.list_users, c.db)
    return render(request, "web_users.html", who, rows=rows, roles=[r.value for r in Role],
                  errors={}, shown=None)


@page(Role.ADMIN)
async def web_users_change(request: Request, who: Who) -> Response:
    """Add a user, reset a password or change a role (admin; audited)."""
    c = console(request)
    data = await form(request)
    action = request.path_params["action"]
    name = str(data.get("name") or "").strip().lower()
    role = str(data.get("role") or "")
    reason = str(data.get("reason") or "").strip()
    errors: dict[str, str] = {}
    if not reason:
        errors["reason"] = "say why (kept in the audit log)"
    if action in ("add", "role") and role not in {r.value for r in Role}:
        errors["role"] = "choose a role"
    shown = None
    if not errors:
        try:
            if action == "add":
                shown = await c.run(users.add_user, c.db, name, role)
            elif action == "reset":
                shown = await c.run(users.reset_password, c.db, name)
            else:
                await c.run(users.set_role, c.db, name, role)
        except users.UserError as exc:
            errors["name"] = str(exc)
    if not errors:
        def write_audit() -> None:
            with c.db.transaction() as s:
                audit.record(s, actor(request, who), f"web-user.{action}", name,
                             detail={"role": role} if role else {}, reason=reason)

        await c.run(write_audit)
    rows = await c.run(users.list_users, c.db)
    return render(request, "web_users.html", who, rows=rows, roles=[r.value for r in Role],
                  errors=errors, shown=shown, action=action, name=name,
                  status=400 if errors else 200)


routes = [
    Route("/login", login_form, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/audit", audit_page, methods=["GET"]),
    Route("/downloads/{token}", download, methods=["GET"]),
    Route("/web-users", web_users, methods=["GET"]),
    Route("/web-users/{action:str}", web_users_change, methods=["POST"]),
]
