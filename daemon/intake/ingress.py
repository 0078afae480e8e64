"""SMTP/LMTP ingress (aiosmtpd): accepts mail for the desk's own addresses
only, and answers ``250`` only after the message is committed.

The handler is the tiny aiosmtpd protocol (``handle_RCPT``, ``handle_DATA``);
the listener's life cycle is :class:`Ingress`.  Like every MTA it prepends
its own ``Received:`` line before it commits; with ``[ingress] border`` that
line is where trust ends (see ``responders.trust``).  Storage runs in a thread so
the event loop never blocks on the database; if the database cannot be
reached the client gets ``451`` and retries later, so nothing is lost.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import logging
import re
import secrets
from collections.abc import Callable
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session as SmtpSession
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from daemon.config import DeskConfig, IngressConfig
from daemon.context import AppContext
from daemon.intake.store import NewMessage, fingerprint, insert_messages
from models.session import transaction

log = logging.getLogger("acedesk.ingress")

# Reply codes (RFC 5321 with RFC 3463 enhanced status codes).
OK = "250 2.0.0 OK: queued"
RCPT_OK = "250 2.1.5 OK"
RELAY_DENIED = "550 5.7.1 Relaying denied: this server accepts mail for the help desk only"
BAD_ADDRESS = "553 5.1.3 Malformed recipient address"
TEMP_FAILURE = "451 4.3.0 Temporary failure storing the message, please try again later"
NO_RECIPIENTS = "554 5.5.1 No valid recipients"


def received_line(hostname: str, protocol: str, session: SmtpSession, envelope: Envelope) -> bytes:
    """Return the ``Received:`` field this server prepends, as every MTA does (RFC 5321 section 4.4).

    It marks where the message entered acedesk: with ``[ingress] border`` it
    is the border line, and nothing below it is trusted (RFC 8601 section 5).
    """
    peer = session.peer[0] if isinstance(session.peer, tuple) and session.peer else str(session.peer or "unknown")
    helo = re.sub(r"[^A-Za-z0-9.:\[\]_-]", "", str(session.host_name or "unknown"))[:100] or "unknown"
    with_ = "LMTP" if protocol == "lmtp" else ("ESMTP" if session.extended_smtp else "SMTP")
    recipients = envelope.rcpt_tos
    target = f"\r\n\tfor <{recipients[0]}>" if len(recipients) == 1 else ""
    date = email.utils.format_datetime(dt.datetime.now(dt.timezone.utc))
    return (f"Received: from {helo} ([{peer}])\r\n\tby {hostname} (acedesk) with {with_} "
            f"id {secrets.token_hex(6)}{target};\r\n\t{date}\r\n").encode("ascii", "replace")


class IngressHandler:
    """aiosmtpd handler: RCPT checks, DATA commits and then answers."""

    def __init__(self, desk: DeskConfig, sessions: sessionmaker[Session], source: str,
                 on_stored: Callable[[], None] = lambda: None, hostname: str = "acedesk") -> None:
        self.hostname = hostname
        self.desk = desk
        self.sessions = sessions
        self.source = source
        self.on_stored = on_stored

    async def handle_RCPT(self, server: SMTP, session: SmtpSession, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if "\r" in address or "\n" in address or "@" not in address:
            return BAD_ADDRESS
        if not self.desk.accepts(address):
            log.info("refused recipient %s from %s (not a desk address)", address, session.peer)
            return RELAY_DENIED
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return RCPT_OK

    async def handle_DATA(self, server: SMTP, session: SmtpSession, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        if isinstance(raw, str):  # decode_data=True would give str; we never ask for it
            raw = raw.encode("utf-8", "surrogateescape")
        desks = sorted({r.lower() for r in envelope.rcpt_tos})
        if not desks:
            return NO_RECIPIENTS
        key = fingerprint(raw)
        raw = received_line(self.hostname, self.source, session, envelope) + raw
        items = [
            NewMessage(desk=desk, source=self.source, raw=raw, envelope_from=envelope.mail_from or "",
                       envelope_to=tuple(envelope.rcpt_tos), key=key)
            for desk in desks
        ]
        try:
            new = await asyncio.to_thread(self._store, items)
        except SQLAlchemyError as exc:
            log.error("could not store a %d-byte message from %s: %s; answered 451",
                      len(raw), envelope.mail_from, exc.__class__.__name__ + ": " + str(exc).splitlines()[0])
            return self._status(TEMP_FAILURE, len(envelope.rcpt_tos))
        log.info("stored %d-byte message from %s for %s (%d new)", len(raw), envelope.mail_from,
                 ", ".join(desks), new)
        self.on_stored()
        return self._status(OK, len(envelope.rcpt_tos))

    def _store(self, items: list[NewMessage]) -> int:
        with transaction(self.sessions) as session:
            return insert_messages(session, items)

    def _status(self, status: str, recipients: int) -> str:
        # LMTP answers once per recipient (RFC 2033 section 4.2).
        return "\r\n".join([status] * recipients) if self.source == "lmtp" else status


class Ingress:
    """The listening SMTP/LMTP server, run until ``stop`` is set."""

    name = "ingress"

    def __init__(self, cfg: IngressConfig, handler: IngressHandler) -> None:
        self.cfg = cfg
        self.handler = handler
        self.port: int | None = None
        self.started = asyncio.Event()

    def _protocol(self) -> Any:
        cls = LMTP if self.cfg.protocol == "lmtp" else SMTP
        return cls(
            self.handler,
            data_size_limit=self.cfg.max_message_size,
            enable_SMTPUTF8=True,
            timeout=self.cfg.timeout,
            ident="acedesk",
        )

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(self._protocol, host=self.cfg.host, port=self.cfg.port)
        self.port = server.sockets[0].getsockname()[1]
        log.info("%s ingress listening on %s:%d", self.cfg.protocol.upper(), self.cfg.host, self.port)
        self.started.set()
        try:
            await stop.wait()
        finally:
            server.close()
            await server.wait_closed()
            log.info("ingress closed")


def make_components(ctx: AppContext) -> list[Ingress]:
    """Return the ingress component when it is enabled."""
    cfg = ctx.config.ingress
    if not cfg.enabled:
        return []
    handler = IngressHandler(ctx.config.desk, ctx.sessions, source=cfg.protocol,
                             on_stored=lambda: ctx.wake("pipeline"), hostname=cfg.hostname)
    return [Ingress(cfg, handler)]
