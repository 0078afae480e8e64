"""The Starlette application: its routes, middleware, templates, and the
dependencies its pages share (the context, the token signer, the responder).

Pages do their database work in the thread pool (``Web.read``/``Web.write``)
so the event loop that also runs the daemon never waits on the database.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import jinja2
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from csms.tokens import Signer
from daemon.config import signing_secret
from daemon.context import AppContext
from models.session import transaction

log = logging.getLogger("acedesk.web")

HERE = Path(__file__).parent
T = TypeVar("T")

#: Largest request body: forms are small; a subscriber CSV may be larger.
MAX_BODY = 16 * 1024
MAX_HEAD = 8 * 1024
MAX_UPLOAD = 20 * 1024 * 1024
UPLOAD_PATHS = ("/csms/subscribers/import",)

#: The console's own pages: its own scripts and styles only, nothing from elsewhere.
CONSOLE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
               "frame-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


class Cache:
    """Figures that are costly to count (queue counts, the dashboard), kept ``ttl`` seconds.

    Past that an answer is still served at once while a fresh one is computed in the
    background (stale-while-revalidate): only the very first request for a key waits.
    """

    def __init__(self, ttl: float, size: int = 128) -> None:
        self.ttl = ttl
        self.size = size
        self.values: dict[Any, tuple[float, Any]] = {}
        self.refreshing: dict[Any, asyncio.Task[None]] = {}

    async def get(self, key: Any, compute: Callable[[], Awaitable[T]]) -> tuple[T, float]:
        """``(value, when it was computed as a time.time())``."""
        hit = self.values.get(key)
        now = time.monotonic()
        if hit is not None and now - hit[0] >= self.ttl and key not in self.refreshing:
            self.refreshing[key] = asyncio.create_task(self._refresh(key, compute))
        if hit is not None:
            return hit[1], time.time() - (now - hit[0])
        await self._refresh(key, compute)
        return self.values[key][1], time.time()

    async def _refresh(self, key: Any, compute: Callable[[], Awaitable[Any]]) -> None:
        try:
            value = await compute()
            if len(self.values) >= self.size and key not in self.values:
                self.values.pop(next(iter(self.values)))
            self.values[key] = (time.monotonic(), value)
        except Exception:
            if key not in self.values:
                raise
            log.exception("web: refreshing cached figures failed; serving the previous ones")
        finally:
            self.refreshing.pop(key, None)


class Web:
    """What the pages share; one per app, on ``app.state.web``."""

    def __init__(self, ctx: AppContext, signer: Signer) -> None:
        self.ctx = ctx
        self.config = ctx.config
        self.signer = signer
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE / "templates")), autoescape=True,
                                 undefined=jinja2.StrictUndefined)
        self.templates = Jinja2Templates(env=env)
        self._responder: Any = None
        #: Queue counts per filter (10 s) and dashboard figures (60 s).
        self.counts = Cache(10.0)
        self.figures = Cache(60.0)
        #: This install's key for what the web app signs itself (SSO sessions' CSRF tokens).
        self.key = signing_secret(ctx.config, "web", "", "", "web.secret")

    async def read(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn`` with a read session in the thread pool."""
        def work() -> T:
            with self.ctx.sessions() as session:
                return fn(session)
        return await run_in_threadpool(work)

    async def write(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn`` in one transaction in the thread pool."""
        def work() -> T:
            with transaction(self.ctx.sessions) as session:
                return fn(session)
        return await run_in_threadpool(work)

    def responder(self) -> Any:
        """The responders' reply machinery (templates, secret), built on first use."""
        if self._responder is None:
            from daemon.stages.respond import make_responder
            self._responder = make_responder(self.config)
        return self._responder

    def page(self, request: Request, template: str, status: int = 200, **context: Any) -> Response:
        context.setdefault("who", getattr(request.state, "who", None))
        context.setdefault("msg", request.query_params.get("msg", ""))
        return self.templates.TemplateResponse(request, template, context, status_code=status)


def web_of(request: Request) -> Web:
    return request.app.state.web  # type: ignore[no-any-return]


class Guard:
    """Pure ASGI middleware: refuses oversized bodies before reading them, and adds the
    security headers every response carries."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if sum(len(k) + len(v) for k, v in scope["headers"]) > MAX_HEAD:
            await PlainTextResponse("request headers too large\n", 431)(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"0")
        limit = MAX_UPLOAD if scope["path"] in UPLOAD_PATHS else MAX_BODY
        if not length.isdigit() or int(length) > limit:
            status = 400 if not length.isdigit() else 413
            text = "bad Content-Length" if status == 400 else f"body larger than {limit} bytes"
            await PlainTextResponse(text + "\n", status)(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                         (b"x-frame-options", b"SAMEORIGIN"), (b"content-security-policy", CONSOLE_CSP.encode()),
                         (b"cache-control", b"no-store")]
                message["headers"] = list(message.get("headers", [])) + [(k, v) for k, v in extra if k not in have]
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code in (302, 303) and exc.headers:
        return RedirectResponse(exc.headers["location"], exc.status_code)
    return PlainTextResponse(f"{exc.detail}\n", exc.status_code, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("web: unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return PlainTextResponse("internal error; nothing was changed\n", 500)


def build_app(ctx: AppContext, signer: Signer) -> Starlette:
    """The whole web app for this context."""
    from daemon.web import articles, auth, console, csms_pages, incidents, numbers, ops, public

    web = Web(ctx, signer)
    archive = ctx.config.path(ctx.config.daemon.state_dir) / ctx.config.csms.archive_dir
    # The archive is written after the first publish; until then it is an empty folder, not an error.
    archive.mkdir(parents=True, exist_ok=True)
    routes = [
        *public.routes(),
        Mount("/archive", app=StaticFiles(directory=str(archive), html=True), name="archive"),
        Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"),
        *ops.routes(),
        *auth.routes(),
        *console.routes(),
        *csms_pages.routes(),
        *numbers.routes(),
        *articles.routes(),
        *incidents.routes(),
    ]
    app = Starlette(routes=routes, middleware=[], exception_handlers={HTTPException: _http_error,
                                                                       Exception: _server_error})
    app.state.web = web
    app.add_middleware(Guard)
    return app


def allowed_methods(*methods: str) -> list[str]:
    return list(methods)


__all__ = ["Route", "Web", "build_app", "web_of", "allowed_methods"]
