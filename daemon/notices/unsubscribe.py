"""One-click unsubscribe over HTTP (RFC 8058), the preferences page, and double opt-in confirmation links.

The scheduler's sibling at the edge: it turns signed tokens from the notices'
links into subscription changes.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import html
import logging
import re
from dataclasses import dataclass
from urllib.parse import parse_qs

from sqlalchemy import select

from csms import service, subscribers
from csms.tokens import CONFIRM, UNSUBSCRIBE, BadToken, Signer
from daemon.context import AppContext
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
                    payload = part.get_payload(decode=True)
                    text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
                    fields.setdefault(name, []).append(text.strip())
        return fields
    try:
        return parse_qs(request.body.decode("ascii"), keep_blank_values=True)
    except UnicodeDecodeError:
        raise HttpError(400, "the form is not ASCII url-encoded") from None


def _page(title: str, paragraphs: list[str], button: str | None = None, hidden: dict[str, str] | None = None,
          status: int = 200) -> Response:
    inputs = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                     for k, v in (hidden or {}).items())
    form = (f'<form method="post" action="">{inputs}<button type="submit" style="font-size:16px;'
            f'padding:8px 16px">{html.escape(button)}</button></form>') if button else ""
    body = "".join(f"<p>{html.escape(p)}</p>" for p in paragraphs)
    text = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width"><title>{html.escape(title)}</title></head>'
            f'<body style="font-family:Arial,Helvetica,sans-serif;max-width:560px;margin:40px auto">'
            f"<h1 style=\"font-size:20px\">{html.escape(title)}</h1>{body}{form}</body></html>")
    return Response(status, text, "text/html; charset=utf-8")


def _manage_page(address: str, topics: list[str], known: list[str]) -> Response:
    boxes = "".join(f'<label style="display:block;margin:4px 0"><input type="checkbox" name="topic" '
                    f'value="{html.escape(t)}"{" checked" if t in topics else ""}> {html.escape(t)}</label>'
                    for t in known)
    page = _page("Your CSMS preferences", [f"Topics {address} receives CSMS notices about:"])
    form = (f'<form method="post" action=""><input type="hidden" name="action" value="update">{boxes}'
            '<p><button type="submit" style="font-size:16px;padding:8px 16px">Save</button></p></form>'
            '<form method="post" action=""><input type="hidden" name="List-Unsubscribe" value="One-Click">'
            '<button type="submit">Unsubscribe from everything</button></form>')
    return Response(200, page.body.replace("</body>", form + "</body>"), page.content_type)


class UnsubscribeServer:
    """Serves one-click unsubscribe and subscription confirmation on ``[csms] http_host:http_port``."""

    name = "csms-http"

    def __init__(self, ctx: AppContext, signer: Signer) -> None:
        self.ctx = ctx
        self.signer = signer
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
        match = _TOKEN_PATH.match(request.path)
        if match is None:
            raise HttpError(404, "not found")
        if request.method not in ("GET", "POST"):
            return Response(405, "only GET and POST\n", extra=(("Allow", "GET, POST"),))
        kind, token = match.groups()
        purpose = UNSUBSCRIBE if kind == "u" else CONFIRM
        try:
            subject = self.signer.check(purpose, token)
        except BadToken as exc:
            log.info("CSMS endpoint: refused %s %s: %s", request.method, request.path[:3], exc)
            raise HttpError(400, f"This link is not valid ({exc}). Nothing was changed.") from None
        if kind == "u":
            return await (self._unsubscribe(request, subject) if request.method == "POST"
                          else self._unsubscribe_page(subject, manage="manage" in request.query))
        return await (self._confirm(subject) if request.method == "POST" else self._confirm_page(subject))

    async def _unsubscribe_page(self, subscriber_id: int, manage: bool) -> Response:
        found = await asyncio.to_thread(_subscriber_state, self.ctx, subscriber_id)
        if found is None:
            return _page("CSMS subscription", ["This address is not subscribed to CSMS notices."])
        address, topics, known = found
        if manage:
            return _manage_page(address, topics, known)
        lines = [f"{address} receives CSMS notices about: {', '.join(topics)}." if topics
                 else f"{address} is not subscribed to any CSMS topic.",
                 "Press the button to stop receiving all CSMS notices."]
        return _page("Unsubscribe from CSMS notices", lines, "Unsubscribe", {"List-Unsubscribe": "One-Click"})

    async def _unsubscribe(self, request: Request, subscriber_id: int) -> Response:
        fields = form_fields(request)
        if fields.get("action") == ["update"]:
            return await self._update(subscriber_id, fields.get("topic", []))
        if fields.get("List-Unsubscribe") != ["One-Click"]:
            raise HttpError(400, "expected the form field List-Unsubscribe=One-Click (RFC 8058); nothing was changed")
        address = await asyncio.to_thread(_one_click, self.ctx, subscriber_id)
        if address is None:
            return _page("Unsubscribed", ["This address is not subscribed to CSMS notices."])
        log.info("CSMS: %s unsubscribed by one-click (subscriber %s)", address, subscriber_id)
        return _page("Unsubscribed", [f"{address} will receive no more CSMS notices."])

    async def _update(self, subscriber_id: int, wanted: list[str]) -> Response:
        found = await asyncio.to_thread(_set_topics, self.ctx, subscriber_id, wanted)
        if found is None:
            raise HttpError(400, "This address is not known here. Nothing was changed.")
        address, topics = found
        log.info("CSMS: %s set their topics to %s (subscriber %s)", address, ", ".join(topics) or "none",
                 subscriber_id)
        return _page("Preferences saved", [f"{address} now receives CSMS notices about: {', '.join(topics)}."
                                           if topics else f"{address} will receive no more CSMS notices."])

    async def _confirm_page(self, pending_id: int) -> Response:
        pending = await asyncio.to_thread(_pending_state, self.ctx, pending_id)
        if pending is None:
            raise HttpError(400, "This confirmation is unknown. Nothing was changed.")
        address, action, topics = pending
        what = "subscribe" if action == "subscribe" else "unsubscribe"
        return _page("Confirm your CSMS request",
                     [f"Confirm that {address} wants to {what}: {', '.join(topics) or 'all topics'}."],
                     "Confirm", {"confirm": "1"})

    async def _confirm(self, pending_id: int) -> Response:
        try:
            address, topics = await asyncio.to_thread(_confirm, self.ctx, pending_id)
        except service.CsmsError as exc:
            raise HttpError(400, f"This confirmation cannot be used: {exc}. Nothing was changed.") from None
        log.info("CSMS: %s confirmed request %s by link", address, pending_id)
        return _page("Confirmed", [f"{address} now receives CSMS notices about: {', '.join(topics)}." if topics
                                   else f"{address} receives no CSMS notices."])


def _subscriber_state(ctx: AppContext, subscriber_id: int) -> tuple[str, list[str], list[str]] | None:
    """``(address, its topics, every topic)``, or None for an unknown subscriber."""
    with ctx.sessions() as session:
        subscriber = session.get(Subscriber, subscriber_id)
        if subscriber is None:
            return None
        return subscriber.email, subscribers.subscriber_topics(session, subscriber_id), service.topic_names(session)


def _set_topics(ctx: AppContext, subscriber_id: int, wanted: list[str]) -> tuple[str, list[str]] | None:
    with transaction(ctx.sessions) as session:
        subscriber = session.get(Subscriber, subscriber_id, with_for_update=True)
        if subscriber is None:
            return None
        # Only topics that exist: a crafted form cannot create new ones.
        topics = [t for t in service.topic_names(session) if t in set(wanted)]
        subscribers.set_topics(session, subscriber, topics)
        return subscriber.email, subscribers.subscriber_topics(session, subscriber_id)


def _one_click(ctx: AppContext, subscriber_id: int) -> str | None:
    with transaction(ctx.sessions) as session:
        subscriber = session.get(Subscriber, subscriber_id, with_for_update=True)
        if subscriber is None or subscriber.status == UNSUBSCRIBED:
            return None
        subscribers.unsubscribe(session, subscriber)
        return subscriber.email


def _pending_state(ctx: AppContext, pending_id: int) -> tuple[str, str, list[str]] | None:
    with ctx.sessions() as session:
        pending = session.get(PendingConfirmation, pending_id)
        if pending is None:
            return None
        return pending.email, pending.action, list(pending.topics)


def _confirm(ctx: AppContext, pending_id: int) -> tuple[str, list[str]]:
    with transaction(ctx.sessions) as session:
        pending = subscribers.confirm_pending(session, pending_id, utcnow())
        subscriber = session.scalar(select(Subscriber).where(Subscriber.email == pending.email))
        topics = subscribers.subscriber_topics(session, subscriber.id) if subscriber else []
        return pending.email, topics
