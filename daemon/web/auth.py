"""Who is asking: login and logout, the session cookie, CSRF on every POST,
login rate limiting, and optionally the name a trusted reverse proxy vouches
for (single sign-on).  Every console page starts with :func:`require`."""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import secrets
from urllib.parse import quote

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from daemon.web import accounts
from daemon.web.accounts import Who
from daemon.web.app import web_of
from models.analysts import ANALYST
from models.base import utcnow
from models.core import AuditEntry

log = logging.getLogger("acedesk.web")

COOKIE = "acedesk_session"
PRE_COOKIE = "acedesk_login"


def _cookie_args(request: Request) -> dict[str, object]:
    return {"httponly": True, "samesite": "strict", "secure": web_of(request).config.web.secure_cookies,
            "path": "/"}


def client_address(request: Request) -> str:
    return request.client.host if request.client else "-"


async def current(request: Request) -> Who | None:
    """The signed-in analyst, from the session cookie or a trusted proxy's header."""
    web = web_of(request)
    cfg = web.config.web
    token = request.cookies.get(COOKIE, "")
    if token:
        who = await web.write(lambda s: accounts.session_of(s, token, cfg.session_hours))
        if who is not None:
            return who
    if cfg.sso_header and client_address(request) in cfg.trusted_proxies:
        name = request.headers.get(cfg.sso_header, "").strip().lower()
        if name:
            analyst = await web.read(lambda s: accounts.enabled_analyst(s, name))
            if analyst is not None:
                # No cookie session: the proxy vouches on every request; the CSRF token is
                # derived from this install's key, so it survives restarts.
                csrf = hmac.new(web.key, f"csrf:{analyst.name}".encode(), "sha256").hexdigest()[:32]
                return Who(analyst.id, analyst.name, analyst.role, csrf)
    return None


async def require(request: Request, role: str = ANALYST) -> Who:
    """The analyst allowed ``role``; else a redirect to the login page (or 403).

    A POST must carry the session's CSRF token (form field ``csrf`` or header ``X-CSRF-Token``).
    """
    who = await current(request)
    if who is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise HTTPException(303, headers={"location": f"/login?next={quote(target)}"})
    request.state.who = who
    if request.method == "POST":
        sent = request.headers.get("x-csrf-token") or str((await request.form()).get("csrf", ""))
        if not hmac.compare_digest(sent.encode(), who.csrf.encode()):
            raise HTTPException(403, "This form is out of date or did not come from the console "
                                     "(missing CSRF token). Reload the page and try again. Nothing was changed.")
    if not who.may(role):
        raise HTTPException(403, f"This needs the {role} role; {who.name} is {who.role}. Nothing was changed.")
    return who


def audit(session, who: Who, action: str, subject_type: str, subject_id: object,  # type: ignore[no-untyped-def]
          detail: dict | None = None) -> None:
    """Record what an analyst did, under their name."""
    session.add(AuditEntry(at=utcnow(), actor=who.name, action=action, subject_type=subject_type,
                           subject_id=str(subject_id)[:64], detail=detail))


def _safe_next(value: str) -> str:
    # Only paths on this site: never an open redirect.
    return value if value.startswith("/") and not value.startswith("//") and "\\" not in value else "/queue"


async def login_page(request: Request, error: str = "", status: int = 200, name: str = "") -> Response:
    if error == "" and await current(request) is not None:
        return RedirectResponse(_safe_next(request.query_params.get("next", "/queue")), 303)
    pre = request.cookies.get(PRE_COOKIE) or secrets.token_urlsafe(16)
    response = web_of(request).page(request, "login.html", status=status, error=error, csrf=pre, name=name,
                                    next=_safe_next(request.query_params.get("next", "/queue")), who=None)
    response.set_cookie(PRE_COOKIE, pre, max_age=3600, **_cookie_args(request))  # type: ignore[arg-type]
    return response


async def login(request: Request) -> Response:
    web = web_of(request)
    cfg = web.config.web
    form = await request.form()
    name = str(form.get("name", "")).strip().lower()[:200]
    password = str(form.get("password", ""))
    sent, pre = str(form.get("csrf", "")), request.cookies.get(PRE_COOKIE, "")
    if not pre or not hmac.compare_digest(sent.encode(), pre.encode()):
        return await login_page(request, "The login form expired (missing CSRF token); please try again.", 403)
    client = client_address(request)
    since = utcnow() - dt.timedelta(minutes=cfg.login_window_minutes)

    def attempt(session):  # type: ignore[no-untyped-def]
        if accounts.recent_failures(session, name, client, since) >= cfg.login_attempts:
            return "limited"
        analyst = accounts.authenticate(session, name, password)
        if analyst is None:
            session.add(AuditEntry(at=utcnow(), actor=f"client:{client}"[:200], action="console.login_failed",
                                   subject_type="analyst", subject_id=name[:64], detail=None))
            return None
        session.add(AuditEntry(at=utcnow(), actor=analyst.name, action="console.login", subject_type="analyst",
                               subject_id=str(analyst.id), detail={"client": client}))
        return accounts.open_session(session, analyst, cfg.session_hours)

    result = await web.write(attempt)
    if result == "limited":
        log.warning("console: login for %r from %s refused: too many failed attempts", name, client)
        minutes = f"{cfg.login_window_minutes:g}"
        return await login_page(request, f"Too many failed logins for this name or from this address. "
                                         f"Wait {minutes} minutes and try again, or ask an admin.", 429, name)
    if result is None:
        return await login_page(request, "Wrong name or password.", 401, name)
    response = RedirectResponse(_safe_next(str(form.get("next", "/queue"))), 303)
    response.set_cookie(COOKIE, result, max_age=int(cfg.session_hours * 3600), **_cookie_args(request))  # type: ignore[arg-type]
    response.delete_cookie(PRE_COOKIE, path="/")
    return response


async def logout(request: Request) -> Response:
    who = await require(request)
    token = request.cookies.get(COOKIE, "")
    web = web_of(request)

    def close(session):  # type: ignore[no-untyped-def]
        accounts.close_session(session, token)
        audit(session, who, "console.logout", "analyst", who.id)

    await web.write(close)
    response = RedirectResponse("/login", 303)
    response.delete_cookie(COOKIE, path="/")
    return response


async def _login_get(request: Request) -> Response:
    return await login_page(request)


def routes() -> list[Route]:
    return [Route("/login", _login_get, methods=["GET"]), Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"])]
