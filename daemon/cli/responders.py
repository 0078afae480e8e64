"""Command-line subcommands of the responders: users on file, the analysts'
triage queue, and the dry run of the whole pipeline.

* ``acedesk users import FILE.csv`` -- upsert users by UserID; bad rows are
  reported with their line numbers (exit 1 if any, the good rows still imported).
* ``acedesk queue list|show|claim|assign|note|approve|relabel|reply|close|reopen`` -- the triage
  queue; the actions act as an analyst account (``--as``, see :mod:`daemon.cli.identity`).
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
from daemon.cli import identity
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

    p = usub.add_parser("list", help="users on file")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.set_defaults(handler=cmd_users_list)
    p = usub.add_parser("show", help="one user: by UserID or e-mail address")
    p.add_argument("who", metavar="USERID|EMAIL")
    p.set_defaults(handler=cmd_users_show)

    q = subparsers.add_parser("queue", help="the analysts' triage queue")
    qsub = q.add_subparsers(dest="queue_command", metavar="ACTION")
    qsub.required = True
    p = qsub.add_parser("list", help="open items, oldest first, with their clocks")
    p.add_argument("--all", action="store_true", help="include resolved items")
    p.add_argument("--security", action="store_true", help="only items flagged for security")
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.set_defaults(handler=cmd_queue_list)
    item = "triage item id, or a ticket number (ACE-2026-000123)"
    p = qsub.add_parser("show", help="one item: the ticket, the message, why it is here")
    p.add_argument("ref", metavar="ID|TICKET", help=item)
    p.set_defaults(handler=cmd_queue_show)
    for name, handler, text in (("claim", cmd_queue_claim, "take the item for yourself"),
                                ("approve", cmd_queue_approve, "send the answer of the item's label and resolve it")):
        p = qsub.add_parser(name, help=text)
        p.add_argument("ref", metavar="ID|TICKET", help=item)
        identity.add_option(p)
        p.set_defaults(handler=handler)
    p = qsub.add_parser("assign", help="give the item to an analyst")
    p.add_argument("ref", metavar="ID|TICKET", help=item)
    p.add_argument("to", metavar="ANALYST")
    identity.add_option(p)
    p.set_defaults(handler=cmd_queue_assign)
    p = qsub.add_parser("note", help="an internal note on the item's ticket (never sent)")
    p.add_argument("ref", metavar="ID|TICKET", help=item)
    p.add_argument("text")
    identity.add_option(p)
    p.set_defaults(handler=cmd_queue_note)
    p = qsub.add_parser("relabel", help="correct the label (kept for 'acedesk train')")
    p.add_argument("ref", metavar="ID|TICKET", help=item)
    p.add_argument("label", choices=LABELS)
    identity.add_option(p)
    p.set_defaults(handler=cmd_queue_relabel)
    p = qsub.add_parser("reply", help="answer the requester: a template, or your own text")
    p.add_argument("ref", metavar="ID|TICKET", help=item)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--template", help="a reply template name (e.g. password_reset)")
    g.add_argument("--text", help="your own words")
    g.add_argument("--text-file", help="a file with your own words ('-' = stdin)")
    p.add_argument("--article", action="append", default=[], metavar="KEY",
                   help="also link this knowledge article (acedesk articles list); repeatable")
    identity.add_option(p)
    p.set_defaults(handler=cmd_queue_reply)
    p = qsub.add_parser("reopen", help="put a resolved item back in the queue and reopen its ticket")
    p.add_argument("ref", metavar="ID|TICKET", help=item)
    identity.add_option(p)
    p.set_defaults(handler=cmd_queue_reopen)
    p = qsub.add_parser("close", help="close the item's ticket (resolving the item)")
    p.add_argument("ref", metavar="ID|TICKET", help=item)
    p.add_argument("--note", default="", help="a note kept on the ticket")
    identity.add_option(p)
    p.set_defaults(handler=cmd_queue_close)

    tk = subparsers.add_parser("tickets", help="every ticket, whichever action opened it")
    tsub = tk.add_subparsers(dest="tickets_command", metavar="ACTION")
    tsub.required = True
    for name, text in (("list", "tickets, newest first"), ("search", "tickets whose subject, number, "
                                                            "requester, UserID or messages contain TEXT")):
        p = tsub.add_parser(name, help=text)
        if name == "search":
            p.add_argument("text")
        p.add_argument("--status", choices=["open", "answered", "closed"])
        p.add_argument("--requester", help="only this requester's address")
        p.add_argument("--label")
        p.add_argument("--limit", type=int, default=50)
        p.add_argument("--json", action="store_true", help="one JSON object a line")
        p.set_defaults(handler=cmd_tickets_list)
    p = tsub.add_parser("show", help="one ticket: its messages, replies, notes and triage items")
    p.add_argument("number", metavar="TICKET")
    p.set_defaults(handler=cmd_tickets_show)

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


def cmd_users_list(args: argparse.Namespace, lazy: Any) -> int:
    from models.responders import User

    with lazy.ctx.sessions() as session:
        users = list(session.scalars(select(User).order_by(User.user_id).limit(args.limit)))
    if args.json:
        for u in users:
            print(json.dumps({"user_id": u.user_id, "email": u.email, "name": u.name, "role": u.role,
                              "identifier": u.identifier, "account_owner_email": u.account_owner_email,
                              "language": u.language}))
        return 0
    if not users:
        print("no users on file: 'acedesk users import FILE.csv'")
        return 0
    print(f"{'USERID':<14} {'EMAIL':<36} {'ROLE':<10} {'IDENTIFIER':<12} {'LANG':<4} NAME")
    for u in users:
        print(f"{u.user_id:<14} {u.email[:36]:<36} {u.role[:10]:<10} {u.identifier[:12]:<12} {u.language:<4} {u.name}")
    return 0


def cmd_users_show(args: argparse.Namespace, lazy: Any) -> int:
    from models.responders import Ticket, User

    who = args.who.strip()
    with lazy.ctx.sessions() as session:
        user = session.scalars(select(User).where(User.user_id == who.upper())).first() or \
            session.scalars(select(User).where(User.email == who.lower()).order_by(User.user_id)).first()
        if user is None:
            raise CommandError(f"no user {who!r} on file (give a UserID or an e-mail address)")
        tickets = list(session.scalars(select(Ticket).where(Ticket.user_id == user.user_id)
                                       .order_by(Ticket.id.desc()).limit(10)))
    print(f"user {user.user_id}: {user.name} <{user.email}>")
    print(f"  role:          {user.role or '-'} {user.identifier or ''}")
    print(f"  account owner: {user.account_owner_email or '-'}")
    print(f"  language:      {user.language}")
    print(f"  tickets:       {', '.join(f'{t.number} ({t.status})' for t in tickets) or 'none'}")
    return 0


# --- queue ----------------------------------------------------------------------------


def _refused(exc: Exception) -> CommandError:
    return CommandError(str(exc))


def _queue_call(lazy: Any, operation: Any) -> Any:
    """Run ``operation(session)`` (a :mod:`responders.queue` call) in one transaction."""
    from models.session import transaction
    from responders.queue import QueueError

    try:
        with transaction(lazy.ctx.sessions) as session:
            return operation(session)
    except QueueError as exc:
        raise _refused(exc) from None


def _responder(lazy: Any) -> Any:
    from daemon.stages.respond import make_responder

    return make_responder(lazy.config)


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
                "verification": ticket.verification, "subject": ticket.subject, "assigned_to": item.assigned_to,
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
    from responders.queue import QueueError
    from responders.queue import item as find_item
    from responders.tickets import clock

    with lazy.ctx.sessions() as session:
        try:
            item = find_item(session, args.ref)
        except QueueError as exc:
            raise _refused(exc) from None
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
    print(f"triage item {item.id}: {item.reason}{' (SECURITY)' if item.security else ''}, {item.status}"
          f"{', with ' + item.assigned_to if item.assigned_to else ''}")
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
    if inbound is not None and inbound.top_labels:
        print("  likeliest:    " + ", ".join(f"{label} {p:.2f}" for label, p in inbound.top_labels))
    if inbound is not None and inbound.parsed:
        msg = ParsedMessage.from_dict(inbound.parsed)
        print(f"  message:      {inbound.id} from {msg.sender_name!r} <{msg.sender}>, subject {msg.subject!r}")
        for line in (msg.new_text or "").splitlines()[:40]:
            print(f"    | {line[:120]}")
    _print_history(history)
    return 0


def _print_history(history: list[Any]) -> None:
    print("  history:")
    for m in history:
        print(f"    {m.created_at:%Y-%m-%d %H:%M} {m.direction:<4} {m.author:<32} {m.text[:80]!r}")


def cmd_queue_claim(args: argparse.Namespace, lazy: Any) -> int:
    from responders import queue

    by = identity.acting(lazy, args)
    _queue_call(lazy, lambda s: queue.claim(s, args.ref, by))
    print(f"{args.ref}: yours, {by}")
    return 0


def cmd_queue_assign(args: argparse.Namespace, lazy: Any) -> int:
    from responders import queue

    by = identity.acting(lazy, args)
    to = identity.check_assignee(lazy, args.to)
    _queue_call(lazy, lambda s: queue.assign(s, args.ref, to, by))
    print(f"{args.ref}: assigned to {to}")
    return 0


def cmd_queue_note(args: argparse.Namespace, lazy: Any) -> int:
    from responders import queue

    by = identity.acting(lazy, args)
    _queue_call(lazy, lambda s: queue.note(s, args.ref, args.text, by))
    print(f"{args.ref}: note kept on the ticket")
    return 0


def cmd_queue_approve(args: argparse.Namespace, lazy: Any) -> int:
    from responders import queue

    by = identity.acting(lazy, args)
    responder = _responder(lazy)
    sent = _queue_call(lazy, lambda s: queue.approve(s, responder, args.ref, by))
    print(f"approved {args.ref}: {sent.template} answer queued to {sent.to}")
    return 0


def cmd_queue_relabel(args: argparse.Namespace, lazy: Any) -> int:
    from responders import queue

    by = identity.acting(lazy, args)
    previous = _queue_call(lazy, lambda s: queue.relabel(s, args.ref, args.label, by))
    print(f"{args.ref}: label {previous} -> {args.label} (kept for 'acedesk train'); "
          f"'acedesk queue approve {args.ref}' sends its answer")
    return 0


def cmd_queue_reply(args: argparse.Namespace, lazy: Any) -> int:
    from responders import queue

    by = identity.acting(lazy, args)
    text = read_text_file(args.text_file) if args.text_file else (args.text or "")
    responder = _responder(lazy)
    sent = _queue_call(lazy, lambda s: queue.reply(s, responder, args.ref, by, template=args.template or "",
                                                   text=text, articles=args.article))
    print(f"reply queued to {sent.to}")
    return 0


def cmd_queue_close(args: argparse.Namespace, lazy: Any) -> int:
    from responders import queue

    by = identity.acting(lazy, args)
    _queue_call(lazy, lambda s: queue.close(s, args.ref, by, args.note))
    print(f"{args.ref}: ticket closed")
    return 0


def cmd_queue_reopen(args: argparse.Namespace, lazy: Any) -> int:
    from responders import queue

    by = identity.acting(lazy, args)
    _queue_call(lazy, lambda s: queue.reopen(s, args.ref, by))
    print(f"{args.ref}: back in the queue, ticket reopened")
    return 0


# --- tickets ---------------------------------------------------------------------------


def cmd_tickets_list(args: argparse.Namespace, lazy: Any) -> int:
    from responders.threads import search

    with lazy.ctx.sessions() as session:
        found = search(session, text=getattr(args, "text", "") or args.requester or "", state=args.status or "",
                       label=args.label or "", limit=args.limit)
    if args.json:
        for t in found:
            print(json.dumps({"number": t.number, "status": t.status, "priority": t.priority, "label": t.label,
                              "requester": t.requester, "user_id": t.user_id, "security": t.security,
                              "subject": t.subject, "created_at": t.created_at.isoformat()}))
        return 0
    if not found:
        print("no tickets")
        return 0
    print(f"{'TICKET':<16} {'STATUS':<9} {'PRIO':<6} {'LABEL':<22} {'REQUESTER':<32} {'OPENED':<16} SUBJECT")
    for t in found:
        print(f"{t.number or '-':<16} {t.status:<9} {t.priority:<6} {(t.label or '-')[:22]:<22} "
              f"{t.requester[:32]:<32} {t.created_at:%Y-%m-%d %H:%M} {'SEC ' if t.security else ''}{t.subject[:60]}")
    return 0


def cmd_tickets_show(args: argparse.Namespace, lazy: Any) -> int:
    from models.responders import TriageItem
    from responders.threads import find_ticket, thread

    with lazy.ctx.sessions() as session:
        t = find_ticket(session, args.number)
        if t is None:
            raise CommandError(f"no ticket {args.number!r} (ticket numbers look like ACE-2026-000123)")
        entries = thread(session, t)
        items = list(session.scalars(select(TriageItem).where(TriageItem.ticket_id == t.id).order_by(TriageItem.id)))
    print(f"ticket {t.number}: {t.status}, priority {t.priority}{', SECURITY' if t.security else ''}")
    print(f"  requester:    {t.requester} (verification: {t.verification}, user {t.user_id or '-'})")
    print(f"  label:        {t.label or '-'}   language: {t.language}")
    print(f"  subject:      {t.subject}")
    print(f"  opened:       {t.created_at:%Y-%m-%d %H:%M}   first response: "
          f"{t.first_response_at.strftime('%Y-%m-%d %H:%M') if t.first_response_at else '-'}   resolved: "
          f"{t.resolved_at.strftime('%Y-%m-%d %H:%M') if t.resolved_at else '-'}")
    if t.last_error:
        print(f"  last error:   {t.last_error}")
    for i in items:
        print(f"  triage item {i.id}: {i.reason}, {i.status}{' (' + i.resolution + ')' if i.resolution else ''}")
    print("  history:")
    for e in entries:
        print(f"    {e.at:%Y-%m-%d %H:%M} {e.direction:<4} {e.author:<32} {e.text[:80]!r}")
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
