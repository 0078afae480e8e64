"""The CSMS web endpoint: one-click unsubscribe (RFC 8058), the preferences
page (topics and language; CSRF-safe POST, a GET changes nothing), double
opt-in confirmation links -- each page in the subscriber's language, English
or Spanish, with a link to the other (:mod:`csms.pages`) -- and the archive
the scheduler writes, served at ``<base_url>/archive/`` where its feed and
pages say it is, with a search by number, title and text.

The scheduler's sibling at the edge: it turns signed tokens from the notices'
links into subscription changes.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from sqlalchemy import select

from csms import archive, pages, service, subscribers
from csms.tokens import CONFIRM, UNSUBSCRIBE, BadToken, Signer
from daemon.context import AppContext
from daemon.notices.keys import KeyRing
from models.base import utcnow
from models.csms import UNSUBSCRIBED, PendingConfirmation, Subscriber
from models.session import transaction

log = logging.getLogger("acedesk.csms")


# --- one-click unsubscribe over HTTP (RFC 8058) -------------------------------------------
#
# A deliberately small HTTP/1.1 server on asyncio streams: one request per
# connection, a bounded head and body, a deadline for reading them, no
# chunked bodies, nothing served but these routes.  TLS and the public
# name belong to the reverse proxy in front of it (``[csms] base_url``).
#
#   GET  /u/<token>   a page with a button (a GET never unsubscribes: mail scanners follow links);
#                     with ?manage=1, the subscriber's topics as checkboxes
#   POST /u/<token>   body List-Unsubscribe=One-Click: unsubscribe from everything, 200;
#                     body action=update&topic=...: the topics chosen on the preferences page
#   GET  /c/<token>   a page with a button to confirm a subscription request
#   POST /c/<token>   confirm it
#   GET  /archive/, /archive/<page>, /archive/atom.xml, /archive/search?q=   the archive
#   (every page takes ?lang=en|es)

MAX_HEAD = 8192
MAX_BODY = 16384
READ_TIMEOUT = 10.0
MAX_CONNECTIONS = 64

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
            411: "Length Required", 413: "Content Too Large", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
            505: "HTTP Version Not Supported"}


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Response:
    status: int
    body: str
    content_type: str = "text/plain; charset=utf-8"
    extra: tuple[tuple[str, str], ...] = ()

    def encode(self) -> bytes:
        payload = self.body.encode("utf-8")
        head = [f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Error')}",
                f"Content-Type: {self.content_type}", f"Content-Length: {len(payload)}",
                "Connection: close", "Cache-Control: no-store", "X-Content-Type-Options: nosniff",
                "Referrer-Policy: no-referrer",
                "Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
                *(f"{k}: {v}" for k, v in self.extra)]
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload


_TOKEN_PATH = re.compile(r"^/([uc])/([A-Za-z0-9_-]{1,200}\.[A-Za-z0-9_-]{1,100})$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


async def read_request(reader: asyncio.StreamReader) -> Request:
    """Read one request strictly: request line, headers, a Content-Length body (no chunking)."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise HttpError(431, "request head too large") from None
    except asyncio.IncompleteReadError:
        raise HttpError(400, "incomplete request") from None
    lines = head[:-4].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0].isalpha() or not parts[1].startswith("/"):
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HttpError(505, "only HTTP/1.1 is spoken here")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not _HEADER_NAME.match(name):
            # Also refuses obsolete line folding (a line starting with white space).
            raise HttpError(400, "malformed header line")
        key = name.lower()
        if key in headers and key in ("content-length", "host", "content-type"):
            raise HttpError(400, f"duplicate {name} header")
        headers[key] = value.strip()
    if "transfer-encoding" in headers:
        raise HttpError(501, "Transfer-Encoding is not supported; send Content-Length")
    body = b""
    if "content-length" in headers:
        text = headers["content-length"]
        if not text.isdigit():
            raise HttpError(400, "bad Content-Length")
        length = int(text)
        if length > MAX_BODY:
            raise HttpError(413, f"body larger than {MAX_BODY} bytes")
        try:
            body = await reader.readexactly(length)
        except asyncio.IncompleteReadError:
            raise HttpError(400, "body shorter than its Content-Length") from None
    elif method == "POST":
        raise HttpError(411, "a POST needs a Content-Length")
    path, _, query = target.partition("?")
    return Request(method.upper(), path, parse_qs(query, keep_blank_values=True), headers, body)


def form_fields(request: Request) -> dict[str, list[str]]:
    """The fields of a form POST: ``application/x-www-form-urlencoded`` or ``multipart/form-data``
    (RFC 8058 allows either for ``List-Unsubscribe=One-Click``)."""
    content_type = request.headers.get("content-type", "application/x-www-form-urlencoded").lower()
    if content_type.startswith("multipart/form-data"):
        head = f"Content-Type: {request.headers['content-type']}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
        msg = email.message_from_bytes(head + request.body, policy=email.policy.HTTP)
        fields: dict[str, list[str]] = {}
        if msg.is_multipart():
            for part in msg.iter_parts():
                name = part.get_param("name", header="content-disposition")
                if isinstance(name, str):
                    payload = part.get_payload(decode=True) or b""
                    fields.setdefault(name, []).append(payload.decode("utf-8", "replace").strip())
        return fields
    try:
        return parse_qs(request.body.decode("ascii"), keep_blank_values=True)
    except UnicodeDecodeError:
        raise HttpError(400, "the form is not ASCII url-encoded") from None


def _html(text: str, status: int = 200) -> Response:
    return Response(status, text, "text/html; charset=utf-8")


def _switch_url(request: Request, lang: str) -> str:
    """This page in the other language (the path and ``manage`` kept)."""
    other = "es" if lang == "en" else "en"
    query = "?manage=1&lang=" + other if "manage" in request.query else "?lang=" + other
    return request.path + query


class PageError(Exception):
    """A refusal shown as a page in the visitor's language (nothing was changed)."""

    def __init__(self, status: int, key: str, lang: str | None = None, **values: str) -> None:
        super().__init__(key)
        self.status = status
        self.key = key
        #: The visitor's language when known (the subscriber's).
        self.lang = lang
        self.values = values


_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".xml": "application/atom+xml; charset=utf-8",
                  ".json": "application/json; charset=utf-8"}
_ARCHIVE_PATH = re.compile(r"^/archive/((?:notices/)?[A-Za-z0-9_-]+\.(?:html|xml|json))$")


class UnsubscribeServer:
    """Serves one-click unsubscribe and subscription confirmation on ``[csms] http_host:http_port``."""

    name = "csms-http"

    def __init__(self, ctx: AppContext, keys: KeyRing | Signer) -> None:
        self.ctx = ctx
        # A KeyRing follows rotations of the secret file; a Signer (tests) is fixed.
        self.signer: Callable[[], Signer] = keys.signer if isinstance(keys, KeyRing) else (lambda: keys)
        self.slots = asyncio.Semaphore(MAX_CONNECTIONS)

    async def run(self, stop: asyncio.Event) -> None:
        cfg = self.ctx.config.csms
        # The preferences page lists every topic: the configured ones exist first.
        from daemon.notices.scheduler import ensure_default_topics  # the scheduler imports this module
        await asyncio.to_thread(ensure_default_topics, self.ctx)
        while True:
            try:
                server = await asyncio.start_server(self._connection, cfg.http_host, cfg.http_port,
                                                    limit=MAX_HEAD)
                break
            except OSError as exc:
                # A busy port is an operator's problem to name, not a crash to restart in a loop.
                log.error("CSMS unsubscribe endpoint cannot listen on %s:%d: %s (set [csms] http_port, or "
                          "http_host = \"\" to serve it elsewhere); retrying in 30 s",
                          cfg.http_host, cfg.http_port, exc.strerror or exc)
                try:
                    await asyncio.wait_for(stop.wait(), 30.0)
                    return
                except TimeoutError:
                    continue
        log.info("CSMS unsubscribe endpoint on http://%s:%d (public: %s)", cfg.http_host, cfg.http_port,
                 cfg.base_url)
        try:
            await stop.wait()
        finally:
            server.close()
            await server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.slots.locked():
                response = Response(503, "busy, try again\n")
            else:
                async with self.slots:
                    response = await self._answer(reader)
            writer.write(response.encode())
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT)
            if response.status >= 400:
                # Lingering close: read what the client is still sending, so closing with
                # unread data does not reset the connection before it reads our answer.
                await asyncio.wait_for(reader.read(4 * MAX_BODY), 1.0)
        except (ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def _answer(self, reader: asyncio.StreamReader) -> Response:
        try:
            request = await asyncio.wait_for(read_request(reader), READ_TIMEOUT)
            return await self.route(request)
        except HttpError as exc:
            return Response(exc.status, exc.message + "\n")
        except TimeoutError:
            return Response(408, "request not received in time\n")
        except Exception:
            log.exception("CSMS endpoint: unexpected error")
            return Response(500, "internal error; nothing was changed\n")

    async def route(self, request: Request) -> Response:
        if request.path == "/archive" or request.path.startswith("/archive/"):
            return await self._archive(request)
        match = _TOKEN_PATH.match(request.path)
        if match is None:
            raise HttpError(404, "not found")
        if request.method not in ("GET", "POST"):
            return Response(405, "only GET and POST\n", extra=(("Allow", "GET, POST"),))
        kind, token = match.groups()
        asked = (request.query.get("lang") or [""])[0]
        try:
            return await self._token_route(request, kind, token, asked)
        except PageError as exc:
            lang = pages.language(asked, exc.lang, request.headers.get("accept-language", ""))
            return _html(pages.render_page(lang, "error_title", [pages.text(lang, exc.key, **exc.values)],
                                           switch_url=_switch_url(request, lang)), exc.status)

    async def _token_route(self, request: Request, kind: str, token: str, asked: str) -> Response:
        purpose = UNSUBSCRIBE if kind == "u" else CONFIRM
        signer = self.signer()
        try:
            subject = signer.check(purpose, token)
        except BadToken as exc:
            log.info("CSMS endpoint: refused %s %s: %s", request.method, request.path[:3], exc)
            raise PageError(400, "bad_link", reason=str(exc)) from None
        if kind == "u":
            if request.method == "POST":
                return await self._unsubscribe(request, subject, token, asked)
            return await self._unsubscribe_page(request, subject, token, asked)
        if request.method == "POST":
            return await self._confirm(request, subject, asked)
        return await self._confirm_page(request, subject, asked)

    async def _unsubscribe_page(self, request: Request, subscriber_id: int, token: str, asked: str) -> Response:
        found = await asyncio.to_thread(_subscriber_state, self.ctx, subscriber_id)
        if found is None:
            lang = pages.language(asked, None, request.headers.get("accept-language", ""))
            return _html(pages.render_page(lang, "subscription_title", [pages.text(lang, "not_subscribed")],
                                           switch_url=_switch_url(request, lang)))
        address, topics, known, preferred = found
        lang = pages.language(asked, preferred)
        if "manage" in request.query:
            return _html(pages.render_preferences(lang, address=address, topics=topics, known=known,
                                                  subscriber_language=preferred,
                                                  csrf=self.signer().form_key(token),
                                                  switch_url=_switch_url(request, lang)))
        lines = [pages.text(lang, "receives", address=address, topics=", ".join(topics)) if topics
                 else pages.text(lang, "receives_nothing", address=address), pages.text(lang, "press_to_leave")]
        return _html(pages.render_page(lang, "unsubscribe_title", lines,
                                       button=pages.TEXT[lang]["unsubscribe_button"],
                                       hidden={"List-Unsubscribe": "One-Click"},
                                       links=[(f"{request.path}?manage=1&lang={lang}", pages.TEXT[lang]["or_choose"])],
                                       switch_url=_switch_url(request, lang)))

    async def _unsubscribe(self, request: Request, subscriber_id: int, token: str, asked: str) -> Response:
        fields = form_fields(request)
        if fields.get("action") == ["update"]:
            return await self._update(request, subscriber_id, token, fields, asked)
        if fields.get("List-Unsubscribe") != ["One-Click"]:
            raise HttpError(400, "expected the form field List-Unsubscribe=One-Click (RFC 8058); nothing was changed")
        found = await asyncio.to_thread(_one_click, self.ctx, subscriber_id)
        if found is None:
            lang = pages.language(asked, None, request.headers.get("accept-language", ""))
            return _html(pages.render_page(lang, "unsubscribed_title", [pages.text(lang, "not_subscribed")]))
        address, preferred = found
        lang = pages.language(asked, preferred)
        log.info("CSMS: %s unsubscribed by one-click (subscriber %s)", address, subscriber_id)
        return _html(pages.render_page(lang, "unsubscribed_title", [pages.text(lang, "unsubscribed", address=address)]))

    async def _update(self, request: Request, subscriber_id: int, token: str, fields: dict[str, list[str]],
                      asked: str) -> Response:
        # CSRF: the form's field is bound to this link, and a browser saying the post came from another
        # site is refused outright (the one-click POST above comes from mail providers, not browsers).
        csrf = (fields.get("csrf") or [""])[0]
        if not self.signer().check_form_key(token, csrf) or \
                request.headers.get("sec-fetch-site", "same-origin") == "cross-site":
            found = await asyncio.to_thread(_subscriber_state, self.ctx, subscriber_id)
            raise PageError(403, "stale_form", lang=found[3] if found else None)
        wanted_language = (fields.get("language") or [""])[0]
        found = await asyncio.to_thread(_set_preferences, self.ctx, subscriber_id, fields.get("topic", []),
                                        wanted_language if wanted_language in pages.LANGUAGES else None)
        if found is None:
            raise PageError(400, "unknown_address")
        address, topics, preferred = found
        lang = pages.language(None, preferred)
        log.info("CSMS: %s set their topics to %s, language %s (subscriber %s)", address,
                 ", ".join(topics) or "none", preferred, subscriber_id)
        line = (pages.text(lang, "saved", address=address, topics=", ".join(topics),
                           language=pages.LANGUAGE_NAMES[preferred]) if topics
                else pages.text(lang, "unsubscribed", address=address))
        return _html(pages.render_page(lang, "saved_title", [line], links=[(f"{request.path}?manage=1",
                                                                           pages.TEXT[lang]["preferences_title"])]))

    async def _confirm_page(self, request: Request, pending_id: int, asked: str) -> Response:
        pending = await asyncio.to_thread(_pending_state, self.ctx, pending_id)
        if pending is None:
            raise PageError(400, "unknown_confirmation")
        address, action, topics, preferred = pending
        lang = pages.language(asked, preferred)
        key = "confirm_subscribe" if action == "subscribe" else "confirm_unsubscribe"
        return _html(pages.render_page(lang, "confirm_title",
                                       [pages.text(lang, key, address=address, topics=pages.topic_list(lang, topics))],
                                       button=pages.TEXT[lang]["confirm_button"], hidden={"confirm": "1"},
                                       switch_url=_switch_url(request, lang)))

    async def _confirm(self, request: Request, pending_id: int, asked: str) -> Response:
        try:
            address, topics, preferred = await asyncio.to_thread(_confirm, self.ctx, pending_id)
        except service.CsmsError as exc:
            pending = await asyncio.to_thread(_pending_state, self.ctx, pending_id)
            raise PageError(400, "unusable_confirmation", lang=pending[3] if pending else None,
                            reason=str(exc)) from None
        lang = pages.language(asked, preferred)
        log.info("CSMS: %s confirmed request %s by link", address, pending_id)
        line = (pages.text(lang, "confirmed", address=address, topics=", ".join(topics)) if topics
                else pages.text(lang, "confirmed_nothing", address=address))
        return _html(pages.render_page(lang, "confirmed_title", [line]))

    # -- the archive: the static files the scheduler writes, and a search over them --

    async def _archive(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response(405, "only GET\n", extra=(("Allow", "GET, HEAD"),))
        root = archive_folder(self.ctx.config)
        if request.path in ("/archive", "/archive/"):
            name = "index.html"
        elif request.path == "/archive/search":
            query = (request.query.get("q") or [""])[0][:200]
            return await asyncio.to_thread(_search_page, root, query)
        else:
            match = _ARCHIVE_PATH.match(request.path)
            if match is None:
                raise HttpError(404, "not found")
            name = match.group(1)
        path = root / name
        try:
            body = await asyncio.to_thread(path.read_text, encoding="utf-8")
        except FileNotFoundError:
            raise HttpError(404, "not found") from None
        return Response(200, body, _CONTENT_TYPES[path.suffix])


def archive_folder(config: Any) -> Path:
    return config.path(config.daemon.state_dir) / config.csms.archive_dir


def _search_page(root: Path, query: str) -> Response:
    try:
        entries = json.loads((root / "index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        entries = []
    found = archive.search(entries, query) if query.strip() else []
    return Response(200, archive.search_page(query, found), "text/html; charset=utf-8")


def _subscriber_state(ctx: AppContext, subscriber_id: int) -> tuple[str, list[str], list[str], str] | None:
    """``(address, its topics, every topic, its language)``, or None for an unknown subscriber."""
    with ctx.sessions() as session:
        subscriber = session.get(Subscriber, subscriber_id)
        if subscriber is None:
            return None
        return (subscriber.email, subscribers.subscriber_topics(session, subscriber_id), service.topic_names(session),
                subscriber.language)


def _set_preferences(ctx: AppContext, subscriber_id: int, wanted: list[str],
                     language: str | None) -> tuple[str, list[str], str] | None:
    with transaction(ctx.sessions) as session:
        subscriber = session.get(Subscriber, subscriber_id, with_for_update=True)
        if subscriber is None:
            return None
        if language is not None:
            subscriber.language = language
        # Only topics that exist: a crafted form cannot create new ones.
        topics = [t for t in service.topic_names(session) if t in set(wanted)]
        subscribers.set_topics(session, subscriber, topics)
        return subscriber.email, subscribers.subscriber_topics(session, subscriber_id), subscriber.language


def _one_click(ctx: AppContext, subscriber_id: int) -> tuple[str, str] | None:
    with transaction(ctx.sessions) as session:
        subscriber = session.get(Subscriber, subscriber_id, with_for_update=True)
        if subscriber is None or subscriber.status == UNSUBSCRIBED:
            return None
        subscribers.unsubscribe(session, subscriber)
        return subscriber.email, subscriber.language


def _pending_state(ctx: AppContext, pending_id: int) -> tuple[str, str, list[str], str] | None:
    with ctx.sessions() as session:
        pending = session.get(PendingConfirmation, pending_id)
        if pending is None:
            return None
        return pending.email, pending.action, list(pending.topics), pending.language


def _confirm(ctx: AppContext, pending_id: int) -> tuple[str, list[str], str]:
    with transaction(ctx.sessions) as session:
        pending = subscribers.confirm_pending(session, pending_id, utcnow())
        subscriber = session.scalar(select(Subscriber).where(Subscriber.email == pending.email))
        topics = subscribers.subscriber_topics(session, subscriber.id) if subscriber else []
        return pending.email, topics, pending.language
