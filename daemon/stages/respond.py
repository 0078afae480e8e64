"""The respond stage (classified -> done): screen, verify, decide, act.

The pure steps live in ``responders``; this module builds the responder from
the configuration (the Message-ID secret, the optional local DKIM check, which
does DNS and so belongs here), and runs the respond step in two parts: the
plans (``responders.service.plan_rows``: screen, verify, decide -- reads
only) on a read snapshot before the write lock, and then
``act_on_plans`` inside the worker's claiming transaction: tickets, triage
items, records and outbox rows commit together with the rows' move to
``done``.  (Where the worker has no snapshot step -- PostgreSQL, whose row
claims do not block each other -- both run in the transaction:
``respond_rows``.)  After that commit it wakes the outbox sender.
"""

from __future__ import annotations

import logging

from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session, object_session

from daemon.config import Config, ConfigError, signing_secret
from daemon.context import AppContext
from daemon.intake.quarantine import quarantine
from daemon.worker import Stage
from models.core import CLASSIFIED, InboundMessage
from models.session import transaction
from responders.articles import seed_shipped
from responders.hours import DeskHours
from responders.render import Renderer
from responders.service import BatchStats, DeskInfo, Planned, Responder, act_on_plans, plan_rows, respond_rows
from responders.trust import organisational_domain

log = logging.getLogger("acedesk.respond")

SECRET_FILE = "responders.secret"


def load_secret(config: Config) -> bytes:
    """Return the Message-ID signing secret (``[responders] secret_env``/``secret_file``,
    else generated once in ``[daemon] state_dir``)."""
    cfg = config.responders
    return signing_secret(config, "responders", cfg.secret_env, cfg.secret_file, SECRET_FILE)


def desk_info(config: Config) -> DeskInfo:
    desk = config.desk
    return DeskInfo(reply_from=desk.reply_from_address.lower(), own_addresses=frozenset(desk.all_own_addresses()),
                    spanish_addresses=frozenset(a.lower() for a in desk.spanish_addresses),
                    csms_address=desk.csms_request_address)


def dkim_check(raw: bytes, from_domain: str, dnsfunc: Any = None) -> bool | None:
    """Verify every DKIM signature with dkimpy: True when one aligned with From verifies,
    False when aligned ones exist and none verifies, None when no signature is aligned."""
    import dkim

    from responders.trust import aligned

    try:
        verifier = dkim.DKIM(raw)
        count = sum(1 for name, _value in verifier.headers if name.lower() == b"dkim-signature")
    except Exception:  # noqa: BLE001 - unparseable: no result, not a crash
        return None
    result: bool | None = None
    for idx in range(min(count, 10)):
        try:
            ok = verifier.verify(idx=idx, **({"dnsfunc": dnsfunc} if dnsfunc else {}))
        except Exception:  # noqa: BLE001 - DNS and signature errors: this signature does not verify
            ok = False
        domain = (verifier.domain or b"").decode("ascii", "replace").lower()
        if not aligned(domain, from_domain):
            continue
        if ok:
            return True
        result = False
    return result


def check_rules(config: Config, renderer: Renderer) -> None:
    """Refuse a policy table naming a template that does not exist in English and Spanish.

    (Actions, targets, labels and verification outcomes are checked when the config loads.)
    """
    for i, rule in enumerate(config.responders.rules):
        if rule.template and not all(renderer.has(rule.template, lang) for lang in ("en", "es")):
            raise ConfigError(f"[[responders.rules]] #{i + 1}: no template {rule.template!r} in en and es")


def make_responder(config: Config) -> Responder:
    cfg = config.responders
    renderer = Renderer(config.path(cfg.templates_dir) if cfg.templates_dir else None)
    check_rules(config, renderer)
    organisational_domain(config.desk.reply_from_address.rpartition("@")[2])  # loads the Public Suffix List now
    return Responder(cfg=cfg, desk=desk_info(config), secret=load_secret(config), renderer=renderer,
                     dkim_check=dkim_check if cfg.verify_dkim else None, hours=DeskHours(config.hours),
                     incidents=config.incidents, escalation=config.escalation,
                     extra_border_hosts=ingress_border(config))


def ingress_border(config: Config) -> tuple[str, ...]:
    """Return the ingress's own name when it is the border (``[ingress] border``): nothing below its line counts."""
    return (config.ingress.hostname.lower(),) if config.ingress.enabled and config.ingress.border else ()


def session_of(row: InboundMessage) -> Session:
    session = object_session(row)
    assert session is not None
    return session


def make_stage(ctx: AppContext) -> Stage:
    responder = make_responder(ctx.config)
    wake_outbox = ctx.waker("outbox")
    with transaction(ctx.sessions) as session:
        # The shipped knowledge articles, once (a retired one is never brought back).
        seed_shipped(session)

    def set_aside(row: InboundMessage, reason: str, detail: str) -> None:
        quarantine(session_of(row), row, reason, detail)
        log.warning("message %s (Message-ID %s) quarantined: %s: %s", row.id, row.message_id, reason, detail)

    budget = ctx.config.pipeline.message_seconds

    def woken(session: Session, stats: BatchStats) -> None:
        if stats.replies or stats.tickets or stats.triage:
            # Wake the sender only once the outbox rows are committed.
            event.listen(session, "after_commit", wake_outbox, once=True)

    def process(session: Session, rows: list[InboundMessage]) -> None:
        woken(session, respond_rows(session, responder, rows, raw_of=raw_of, on_error=set_aside,
                                    message_seconds=budget))

    def compute(session: Session, rows: list[InboundMessage]) -> dict[int, Planned]:
        # ``session`` is the worker's read snapshot: the plans' lookups read what the rows were read from.
        return plan_rows(session, responder, rows, raw_of=raw_of, message_seconds=budget)

    def apply(session: Session, rows: list[InboundMessage], planned: dict[int, Planned]) -> None:
        woken(session, act_on_plans(session, responder, rows, planned, on_error=set_aside, raw_of=raw_of))

    def reload() -> None:
        responder.renderer = Renderer(ctx.config.path(ctx.config.responders.templates_dir)
                                      if ctx.config.responders.templates_dir else None)

    ctx.reload_hooks.append(reload)
    return Stage(name="respond", consumes=CLASSIFIED, process=process, needs_raw=ctx.config.responders.verify_dkim,
                 batch_size=200, compute=compute, apply=apply)


def raw_of(row: InboundMessage) -> bytes:
    return row.raw
