"""Command-line subcommands of the responders: users on file, the analysts'
triage queue, and the dry run of the whole pipeline.

* ``acedesk users import FILE.csv`` -- upsert users by UserID; bad rows are
  reported with their line numbers (exit 1 if any, the good rows still imported).
* ``acedesk queue list|show|approve|relabel|reply|close`` -- the triage queue.
* ``acedesk triage --json FILE...`` -- parse, screen, classify, verify and
  decide each file as the daemon would, and print one JSON object a line;
  nothing is sent or stored.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import undefer

from classifiers.labels import LABELS
from daemon.errors import CommandError, read_text_file


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add this area's subcommands to ``acedesk``."""
    users = subparsers.add_parser("users", help="users on file (trade and PGA)")
    usub = users.add_subparsers(dest="users_command", metavar="ACTION")
    usub.required = True
    p = usub.add_parser("import", help="import or update users from a CSV file "
                        "(user_id,email,name,role,identifier,account_owner_email,language)")
    p.add_argument("file", metavar="FILE.csv")
    p.set_defaults(handler=cmd_users_import)

    q = subparsers.add_parser("queue", help="the analysts' triage queue")
    qsub = q.add_subparsers(dest="queue_command", metavar="ACTION")
    qsub.required = True
    p = qsub.add_parser("list", help="open items, oldest first, with their clocks")
    p.add_argument("--all", action="store_true", help="include resolved items")
    p.add_argument("--security", action="store_true", help="only items flagged for security")
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.set_defaults(handler=cmd_queue_list)
    p = qsub.add_parser("show", help="one item: the ticket, the message, why it is here")
    p.add_argument("id", type=int)
    p.set_defaults(handler=cmd_queue_show)
    p = qsub.add_parser("approve", help="send the answer the label calls for and resolve the item")
    p.add_argument("id", type=int)
    p.add_argument("--by", default="analyst", help="who approves (audit log)")
    p.set_defaults(handler=cmd_queue_approve)
    p = qsub.add_parser("relabel", help="correct the label (kept for 'acedesk train')")
    p.add_argument("id", type=int)
    p.add_argument("label", choices=LABELS)
    p.add_argument("--by", default="analyst")
    p.set_defaults(handler=cmd_queue_relabel)
    p = qsub.add_parser("reply", help="answer the requester: a template, or your own text")
    p.add_argument("id", type=int)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--template", help="a reply template name (e.g. password_reset)")
    g.add_argument("--text", help="your own words")
    g.add_argument("--text-file", help="a file with your own words ('-' = stdin)")
    p.add_argument("--article", action="append", default=[], metavar="KEY",
                   help="also link this knowledge article (acedesk articles list); repeatable")
    p.add_argument("--by", default="analyst")
    p.set_defaults(handler=cmd_queue_reply)
    p = qsub.add_parser("close", help="resolve the item and close its ticket")
    p.add_argument("id", type=int)
    p.add_argument("--note", default="", help="a note kept on the ticket")
    p.add_argument("--by", default="analyst")
    p.set_defaults(handler=cmd_queue_close)

    p = subparsers.add_parser("triage", help="dry run of the whole pipeline over .eml files "
                              "(nothing sent or stored)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true", help="one JSON object a line (the only output format)")
    p.add_argument("--desk", help="desk address the files arrived at (default: the first help-desk address)")
    p.set_defaults(handler=cmd_triage)


# --- users ----------------------------------------------------------------------------


def cmd_users_import(args: argparse.Namespace, lazy: Any) -> int:
    from models.session import transaction
    from responders.users import parse_users_csv, upsert_users

    text = read_text_file(args.file)
    rows, errors = parse_users_csv(text)
    for error in errors:
        print(f"{args.file}:{error.line}: {error.message}", file=sys.stderr)
    with transaction(lazy.ctx.sessions) as session:
        created, updated = upsert_users(session, [r for _, r in rows])
    unchanged = len(rows) - created - updated
    print(f"users: {created} created, {updated} updated, {unchanged} unchanged, {len(errors)} rejected")
    return 1 if errors else 0


# --- queue ----------------------------------------------------------------------------


def _item(session: Any, item_id: int) -> Any:
    from models.responders import TriageItem

    item = session.get(TriageItem, item_id)
    if item is None:
        raise CommandError(f"no triage item {item_id}")
    return item


def cmd_queue_list(args: argparse.Namespace, lazy: Any) -> int:
    from models.base import utcnow
    from models.responders import TRIAGE_OPEN, Ticket, TriageItem
    from responders.tickets import clock

    target = lazy.config.responders.target_hours
    with lazy.ctx.sessions() as session:
        query = (select(TriageItem, Ticket).join(Ticket, Ticket.id == TriageItem.ticket_id)
                 .order_by(TriageItem.security.desc(), Ticket.priority, TriageItem.created_at, TriageItem.id))
        if not args.all:
            query = query.where(TriageItem.status == TRIAGE_OPEN)
        if args.security:
            query = query.where(TriageItem.security.is_(True))
        rows = session.execute(query).all()
    now = utcnow()
    if not rows and not args.json:
        print("the triage queue is empty")
        return 0
    for item, ticket in rows:
        c = clock(ticket.created_at, ticket.first_response_at, ticket.resolved_at, now, target, ticket.due_at)
        data = {"id": item.id, "ticket": ticket.number, "status": item.status, "reason": item.reason,
                "security": item.security, "priority": ticket.priority, "label": item.label,
                "confidence": item.confidence, "requester": ticket.requester,
                "verification": ticket.verification, "subject": ticket.subject,
                "age_hours": c.age_hours, "overdue": c.overdue, "created_at": item.created_at.isoformat()}
        if args.json:
            print(json.dumps(data))
            continue
        flags = ("SEC " if item.security else "    ") + ("HIGH " if ticket.priority == "high" else "     ") + \
            ("LATE" if c.overdue else "    ")
        label = f"{item.label or '-'} {item.confidence:.2f}" if item.confidence is not None else (item.label or "-")
        print(f"{item.id:>6}  {ticket.number:<16} {flags} {c.age_hours:>6.1f}h  {item.reason:<15} {label:<26} "
              f"{ticket.requester:<30} {ticket.subject[:50]}")
    return 0


def cmd_queue_show(args: argparse.Namespace, lazy: Any) -> int:
    from models.base import utcnow
    from models.core import InboundMessage
    from models.parsed import ParsedMessage
    from models.responders import ResponseRecord, Ticket, TicketMessage
    from responders.tickets import clock

    with lazy.ctx.sessions() as session:
        item = _item(session, args.id)
        ticket = session.get(Ticket, item.ticket_id)
        history = list(session.scalars(select(TicketMessage).where(TicketMessage.ticket_id == ticket.id)
                                       .order_by(TicketMessage.id)))
        record = session.scalars(select(ResponseRecord).where(
            ResponseRecord.inbound_message_id == item.inbound_message_id)).first() \
            if item.inbound_message_id else None
        inbound = session.scalars(select(InboundMessage).where(InboundMessage.id == item.inbound_message_id)
                                  .options(undefer(InboundMessage.parsed))).first() \
            if item.inbound_message_id else None
    c = clock(ticket.created_at, ticket.first_response_at, ticket.resolved_at, utcnow(),
              lazy.config.responders.target_hours, ticket.due_at)
    print(f"triage item {item.id}: {item.reason}{' (SECURITY)' if item.security else ''}, {item.status}")
    print(f"  ticket:       {ticket.number} {ticket.status}, priority {ticket.priority}, "
          f"age {c.age_hours:.1f} h of {lazy.config.responders.target_hours:g}{' OVERDUE' if c.overdue else ''}")
    print(f"  requester:    {ticket.requester} (verification: {ticket.verification}, user {ticket.user_id or '-'})")
    print(f"  label:        {item.label} {item.confidence if item.confidence is not None else ''}")
    print(f"  suggestion:   {json.dumps(item.suggestion)}")
    if ticket.last_error:
        print(f"  last error:   {ticket.last_error}")
    if record is not None:
        print(f"  screen:       {record.screen or '-'} {record.screen_reasons or ''}")
        print(f"  verification: {record.verification}: {'; '.join(record.verification_reasons or [])}")
        print(f"  decision:     {record.action} {record.template or ''}: {'; '.join(record.reasons or [])}")
    if inbound is not None and inbound.parsed:
        msg = ParsedMessage.from_dict(inbound.parsed)
        print(f"  message:      {inbound.id} from {msg.sender_name!r} <{msg.sender}>, subject {msg.subject!r}")
        for line in (msg.new_text or "").splitlines()[:40]:
            print(f"    | {line[:120]}")
    print("  history:")
    for m in history:
        print(f"    {m.created_at:%Y-%m-%d %H:%M} {m.direction:<4} {m.author:<32} {m.text[:80]!r}")
    return 0


def _send(session: Any, lazy: Any, ticket: Any, template: str, context: dict[str, Any], to: str,
          human: bool, articles: list[str] | None = None) -> Any:
    from daemon.stages.respond import make_responder
    from models.base import utcnow
    from responders.articles import load_library
    from responders.render import RenderError, build_reply
    from responders.service import duty_context, enqueue
    from responders.tickets import reply_subject

    responder = make_responder(lazy.config)
    library = load_library(session)
    unknown = [k for k in articles or [] if library.get(k, ticket.language) is None]
    if unknown:
        raise CommandError(f"no article {', '.join(unknown)} in force (see 'acedesk articles list')")
    # The articles of the ticket's label, the analyst's own picks, and the desk's hours.
    context = {**duty_context(responder, library, template, ticket.label or "other", ticket.language, utcnow(),
                              articles or []), **context}
    try:
        reply = build_reply(
            responder.renderer, template=template, language=ticket.language, to=to,
            from_address=responder.desk.reply_from, from_name=responder.cfg.from_name,
            subject=reply_subject(ticket.subject, ticket.number, responder.cfg.ticket_prefix, ticket.language),
            ticket=ticket.number, secret=responder.secret, in_reply_to=None, references=[],
            context={"name": "", "subject": ticket.subject[:200], "csms_address": responder.desk.csms_address,
                     "target_hours": f"{responder.cfg.target_hours:g}", **context}, auto=not human)
    except RenderError as exc:
        raise CommandError(str(exc)) from None
    return enqueue(session, reply, ticket, None, utcnow())[0]


def _resolve(session: Any, item: Any, resolution: str, by: str, detail: dict[str, Any]) -> None:
    from models.base import utcnow
    from models.core import AuditEntry
    from models.responders import TRIAGE_DONE

    now = utcnow()
    item.status = TRIAGE_DONE
    item.resolved_at = now
    item.resolved_by = by
    item.resolution = resolution
    session.add(AuditEntry(at=now, actor=by, action=f"queue.{resolution}", subject_type="triage_item",
                           subject_id=str(item.id), detail=detail))


def cmd_queue_approve(args: argparse.Namespace, lazy: Any) -> int:
    from models.responders import TICKET_ANSWERED, Ticket
    from models.session import transaction
    from responders.settings import ACCOUNT_LABELS
    from responders.verify import VERIFIED

    with transaction(lazy.ctx.sessions) as session:
        item = _item(session, args.id)
        if item.status != "open":
            raise CommandError(f"triage item {item.id} is already {item.status}")
        ticket = session.get(Ticket, item.ticket_id)
        label = item.label or "other"
        if label in ACCOUNT_LABELS and ticket.verification != VERIFIED:
            raise CommandError(f"{label} answers go only to verified users at the address on file; "
                            f"ticket {ticket.number} is {ticket.verification}: use 'queue reply' or 'queue close'")
        to = ticket.requester
        if label in ACCOUNT_LABELS:
            from models.responders import User
            user = session.scalars(select(User).where(User.user_id == ticket.user_id)).first()
            if user is None:
                raise CommandError(f"user {ticket.user_id} is no longer on file")
            if user.status != "active":
                raise CommandError(f"user {user.user_id} is {user.status}: no account help until "
                                   f"'acedesk users restore {user.user_id} --reason ...'")
            to = user.email
        out = _send(session, lazy, ticket, label, {}, to, human=False)
        ticket.status = TICKET_ANSWERED
        _resolve(session, item, "approved", args.by, {"template": label, "outbox": out.id})
    print(f"approved item {args.id}: {label} answer queued to {to} on ticket {ticket.number}")
    return 0


def cmd_queue_relabel(args: argparse.Namespace, lazy: Any) -> int:
    from models.core import AuditEntry
    from models.responders import Ticket
    from models.session import transaction

    with transaction(lazy.ctx.sessions) as session:
        item = _item(session, args.id)
        previous = item.label
        if item.inbound_message_id is not None:
            try:
                from models.classification import record_correction
            except ImportError:  # the classifier's corrections table is not there: keep it in the audit log
                record_correction = None
            if record_correction is not None:
                try:
                    record_correction(session, item.inbound_message_id, args.label, args.by)
                except ValueError as exc:
                    raise CommandError(str(exc)) from None
        item.label = args.label
        item.confidence = 1.0
        ticket = session.get(Ticket, item.ticket_id)
        ticket.label = args.label
        session.add(AuditEntry(actor=args.by, action="queue.relabel", subject_type="triage_item",
                               subject_id=str(item.id), detail={"from": previous, "to": args.label,
                                                                "message": item.inbound_message_id}))
    print(f"item {args.id}: label {previous} -> {args.label} (kept for 'acedesk train'); "
          f"'acedesk queue approve {args.id}' sends its answer")
    return 0


def cmd_queue_reply(args: argparse.Namespace, lazy: Any) -> int:
    from models.responders import Ticket
    from models.session import transaction
    from responders.settings import ACCOUNT_LABELS
    from responders.verify import VERIFIED

    if args.text_file:
        text = read_text_file(args.text_file)
    else:
        text = args.text
    with transaction(lazy.ctx.sessions) as session:
        item = _item(session, args.id)
        ticket = session.get(Ticket, item.ticket_id)
        if args.template:
            if args.template in ACCOUNT_LABELS and ticket.verification != VERIFIED:
                raise CommandError(f"the {args.template} answer goes only to verified users; ticket "
                                f"{ticket.number} is {ticket.verification}")
            if args.template in ACCOUNT_LABELS:
                from responders.accounts import held_status, load_held

                status = held_status(load_held(session, [ticket.requester], [ticket.user_id or ""]),
                                     ticket.requester, ticket.user_id)
                if status:
                    raise CommandError(f"the account of ticket {ticket.number} is {status}: no account help "
                                       "until it is restored (acedesk users restore)")
            out = _send(session, lazy, ticket, args.template, {}, ticket.requester, human=False,
                        articles=args.article)
        else:
            out = _send(session, lazy, ticket, "analyst_reply", {"text": text or ""}, ticket.requester, human=True,
                        articles=args.article)
        _resolve(session, item, "replied", args.by, {"template": args.template, "outbox": out.id})
    print(f"reply queued to {ticket.requester} on ticket {ticket.number}")
    return 0


def cmd_queue_close(args: argparse.Namespace, lazy: Any) -> int:
    from models.base import utcnow
    from models.responders import TICKET_CLOSED, Ticket, TicketMessage
    from models.session import transaction

    with transaction(lazy.ctx.sessions) as session:
        item = _item(session, args.id)
        ticket = session.get(Ticket, item.ticket_id)
        now = utcnow()
        ticket.status = TICKET_CLOSED
        ticket.resolved_at = ticket.resolved_at or now
        if args.note:
            session.add(TicketMessage(ticket_id=ticket.id, direction="note", author=args.by, text=args.note,
                                      created_at=now))
        _resolve(session, item, "closed", args.by, {"note": args.note})
    print(f"item {args.id} resolved; ticket {ticket.number} closed")
    return 0


# --- triage --json -----------------------------------------------------------------------


def _load_model(lazy: Any) -> tuple[Any, str | None]:
    try:
        from classifiers.store import load_newest, model_dir

        configured = lazy.config.classifier.model_dir
        directory = Path(configured) if configured else None
        if directory is not None and not directory.is_absolute():
            directory = Path(lazy.config.base_dir) / directory
        return load_newest(model_dir(str(directory) if directory else "")), None
    except Exception as exc:  # noqa: BLE001 - no model yet: say so, and go on with "other"
        return None, f"classifier unavailable ({type(exc).__name__}: {exc}); label 'other', confidence 0"


def _dry_secret(config: Any) -> bytes:
    """The configured or stored secret; a throwaway one when none exists (a dry run stores nothing)."""
    from daemon.stages.respond import SECRET_FILE, load_secret

    cfg = config.responders
    if cfg.secret_env or cfg.secret_file or (config.path(config.daemon.state_dir) / SECRET_FILE).exists():
        return load_secret(config)
    return secrets.token_hex(32).encode()


def cmd_triage(args: argparse.Namespace, lazy: Any) -> int:
    from daemon.cli.dry_run import dumps, triage
    from daemon.stages.respond import desk_info, ingress_border
    from models.responders import User
    from responders.hours import DeskHours
    from responders.render import Renderer
    from responders.service import Responder

    config = lazy.config
    cfg = config.responders
    responder = Responder(cfg=cfg, desk=desk_info(config), secret=_dry_secret(config),
                          renderer=Renderer(config.path(cfg.templates_dir) if cfg.templates_dir else None),
                          extra_border_hosts=ingress_border(config), hours=DeskHours(config.hours),
                          incidents=config.incidents, escalation=config.escalation)
    model, model_note = _load_model(lazy)
    session = None
    db_note = None
    try:
        session = lazy.ctx.sessions()
        session.execute(select(1).select_from(User).limit(1))
    except SQLAlchemyError as exc:
        if session is not None:
            session.rollback()
            session.close()
        session = None
        db_note = f"users on file unavailable ({str(exc).splitlines()[0][:120]}); verification sees no users"
    status = 0
    notes = [n for n in (model_note, db_note) if n]
    try:
        for record in triage(args.files, config, responder, model, session, args.desk, notes):
            if record["action"].get("reason") == "unreadable":
                status = 1
            print(dumps(record), flush=True)
    finally:
        if session is not None:
            session.rollback()
            session.close()
    return status
