"""The ``acedesk`` command line: the one entry point that imports ``daemon``.

``acedesk [--config PATH] COMMAND``; ``ACEDESK_CONFIG`` names the config
when ``--config`` is absent.  Errors a user can fix (config, database,
arguments) print one line and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from daemon.cli import classify as cli_classify
from daemon.cli import console as cli_console
from daemon.cli import csms as cli_csms
from daemon.cli import duties as cli_duties
from daemon.cli import responders as cli_responders
from daemon.config import Config, ConfigError, load_config
from daemon.context import AppContext, make_context
from daemon.errors import CommandError
from daemon.logs import setup_logging
from models.session import DatabaseMissing

log = logging.getLogger("acedesk.cli")


#: A command handler: gets the parsed arguments and a lazily built context.
Handler = Callable[[argparse.Namespace, "Lazy"], int]


class Lazy:
    """Loads the config and opens the database only for commands that need them."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._config: Config | None = None
        self._ctx: AppContext | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.args.config)
            setup_logging(self._config.logging, self.args.log_level)
        return self._config

    @property
    def ctx(self) -> AppContext:
        if self._ctx is None:
            # Only 'db upgrade' creates a database: any other command (a read-only one above
            # all) meeting a missing SQLite file says so instead of leaving an empty one behind.
            self._ctx = make_context(self.config, create=getattr(self.args, "creates_database", False))
        return self._ctx

    def close(self) -> None:
        if self._ctx is not None:
            self._ctx.dispose()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="acedesk",
        description="Mail daemon of the ACE help desk: ingests the desk's mail, classifies it, "
                    "verifies senders, answers or opens tickets, and publishes CSMS notices.",
    )
    parser.add_argument("--config", metavar="PATH",
                        help="config file (default: $ACEDESK_CONFIG, else ./config.toml)")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="override [logging] level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("run", help="run the daemon in the foreground until SIGTERM")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("check-config", help="validate the configuration and print it")
    p.set_defaults(handler=cmd_check_config)

    db = sub.add_parser("db", help="create, migrate or inspect the database")
    dbsub = db.add_subparsers(dest="db_command", metavar="ACTION")
    dbsub.required = True
    p = dbsub.add_parser("upgrade", help="create the database or migrate it to this version")
    p.add_argument("revision", nargs="?", default="heads")
    p.set_defaults(handler=cmd_db_upgrade)
    p.set_defaults(creates_database=True)
    p = dbsub.add_parser("downgrade", help="migrate the database down to REVISION ('base' drops every table)")
    p.add_argument("revision", help="the revision to go down to (see 'acedesk db current'), or 'base'")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation (scripts)")
    p.set_defaults(handler=cmd_db_downgrade)
    p = dbsub.add_parser("current", help="show the database's revision")
    p.set_defaults(handler=cmd_db_current)

    p = sub.add_parser("ingest", help="store .eml files as if they had arrived (then the daemon processes them)")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--desk", help="desk address they arrived at (default: the first help-desk address)")
    p.add_argument("--process", action="store_true", help="also run the pipeline over them now")
    p.set_defaults(handler=cmd_ingest)

    p = sub.add_parser("process", help="run the pipeline once over everything waiting, then exit")
    p.set_defaults(handler=cmd_process)

    p = sub.add_parser("messages", help="list inbound messages and their states")
    p.add_argument("--state", help="only this state (new, parsed, classified, done, quarantined, failed)")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.set_defaults(handler=cmd_messages)

    p = sub.add_parser("stats", help="operator metrics: messages by state, backlog age, quarantine")
    p.add_argument("--json", action="store_true", help="one JSON object (for monitoring)")
    p.set_defaults(handler=cmd_stats)

    q = sub.add_parser("quarantine", help="messages that could not be processed")
    qsub = q.add_subparsers(dest="q_command", metavar="ACTION")
    qsub.required = True
    p = qsub.add_parser("list", help="list open quarantine records")
    p.add_argument("--all", action="store_true", help="include resolved records")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_quarantine_list)
    p = qsub.add_parser("show", help="show one quarantined message and why")
    p.add_argument("id", type=int, help="quarantine record id")
    p.add_argument("--raw", action="store_true", help="print the raw message bytes")
    p.set_defaults(handler=cmd_quarantine_show)
    p = qsub.add_parser("retry", help="run quarantined messages through the pipeline again")
    p.add_argument("ids", type=int, nargs="*", help="record ids (default: with --all, every open one)")
    p.add_argument("--all", action="store_true")
    p.set_defaults(handler=cmd_quarantine_retry)

    for module in (cli_classify, cli_responders, cli_csms, cli_duties, cli_console):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    lazy = Lazy(args)
    try:
        handler: Handler = args.handler
        return handler(args, lazy)
    except ConfigError as exc:
        print(f"acedesk: config error: {exc}", file=sys.stderr)
        return 2
    except (CommandError, DatabaseMissing) as exc:
        print(f"acedesk: {exc}", file=sys.stderr)
        return 2
    except OperationalError as exc:
        if _missing_table(exc):
            print(f"acedesk: the database has no such table ({_first_line(exc)}): "
                  "create or migrate it with 'acedesk db upgrade'", file=sys.stderr)
        else:
            print(f"acedesk: database unavailable: {_first_line(exc)}", file=sys.stderr)
        return 2
    except SQLAlchemyError as exc:
        print(f"acedesk: database error: {_first_line(exc)} (is the schema current? 'acedesk db upgrade')",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    finally:
        lazy.close()


def _missing_table(exc: OperationalError) -> bool:
    # SQLite says "no such table"; PostgreSQL's UndefinedTable is a ProgrammingError.
    return "no such table" in str(exc.orig)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.strip().splitlines()[0] if text.strip() else exc.__class__.__name__


# --- commands -----------------------------------------------------------------


def cmd_run(args: argparse.Namespace, lazy: Lazy) -> int:
    from daemon.signals import EarlyStop

    # Before the slow start (imports, database, model, workers): a stop meanwhile must be a clean one.
    early = EarlyStop().install()
    from daemon.app import check_schema, run_daemon
    from daemon.instance import AlreadyRunning

    ctx = lazy.ctx
    problem = check_schema(ctx)
    if problem:
        raise CommandError(problem)
    try:
        return asyncio.run(run_daemon(ctx, early))
    except AlreadyRunning as exc:
        raise CommandError(str(exc)) from None


def cmd_check_config(args: argparse.Namespace, lazy: Lazy) -> int:
    import dataclasses

    print(json.dumps(dataclasses.asdict(lazy.config), indent=2, default=str))
    return 0


def cmd_db_upgrade(args: argparse.Namespace, lazy: Lazy) -> int:
    from models.migrate import current_revisions, upgrade

    upgrade(lazy.ctx.engine, args.revision)
    print(f"{_database_name(lazy)} is at revision(s) {', '.join(sorted(current_revisions(lazy.ctx.engine))) or 'base'}")
    return 0


def cmd_db_downgrade(args: argparse.Namespace, lazy: Lazy) -> int:
    from models.migrate import current_revisions, downgrade

    what = "DROP EVERY TABLE of" if args.revision == "base" else f"migrate down to {args.revision}"
    if not args.yes:
        if not sys.stdin.isatty():
            raise CommandError(f"'db downgrade' would {what} {_database_name(lazy)}: add --yes to confirm")
        answer = input(f"This will {what} {_database_name(lazy)}; data may be lost. Type 'yes' to go on: ")
        if answer.strip().lower() != "yes":
            print("nothing changed")
            return 1
    downgrade(lazy.ctx.engine, args.revision)
    print(f"{_database_name(lazy)} is at revision(s) {', '.join(sorted(current_revisions(lazy.ctx.engine))) or 'base'}")
    return 0


def _database_name(lazy: Lazy) -> str:
    """The database as an operator knows it: its URL without a password."""
    return lazy.ctx.engine.url.render_as_string(hide_password=True)


def cmd_db_current(args: argparse.Namespace, lazy: Lazy) -> int:
    from models.migrate import current_revisions, head_revisions

    current = sorted(current_revisions(lazy.ctx.engine))
    heads = sorted(head_revisions(lazy.ctx.engine))
    print(f"current: {', '.join(current) or 'base (empty)'}")
    print(f"code:    {', '.join(heads)}")
    return 0 if current == heads else 1


def cmd_ingest(args: argparse.Namespace, lazy: Lazy) -> int:
    from daemon.intake.store import NewMessage, insert_messages
    from models.session import transaction

    desk = (args.desk or lazy.config.desk.helpdesk_addresses[0]).lower()
    items = []
    for name in args.files:
        try:
            items.append(NewMessage(desk=desk, source="cli", raw=Path(name).read_bytes()))
        except OSError as exc:
            raise CommandError(f"{name}: {exc.strerror}") from None
    with transaction(lazy.ctx.sessions) as session:
        new = insert_messages(session, items)
    print(f"stored {new} new message(s) of {len(items)} for {desk}")
    if args.process:
        return cmd_process(args, lazy)
    return 0


def cmd_process(args: argparse.Namespace, lazy: Lazy) -> int:
    from daemon.pipeline import build_stages
    from daemon.worker import drain

    handled = drain(lazy.ctx.sessions, build_stages(lazy.ctx), lazy.config.pipeline)
    print(f"processed {handled} stage step(s)")
    return 0


def cmd_messages(args: argparse.Namespace, lazy: Lazy) -> int:
    from sqlalchemy.orm import undefer

    from models.core import STATES, InboundMessage
    from models.responders import ResponseRecord, Ticket

    if args.state and args.state not in STATES:
        raise CommandError(f"--state must be one of {', '.join(STATES)}")
    with lazy.ctx.sessions() as session:
        query = (select(InboundMessage, ResponseRecord.action, Ticket.number)
                 .outerjoin(ResponseRecord, ResponseRecord.inbound_message_id == InboundMessage.id)
                 .outerjoin(Ticket, Ticket.id == ResponseRecord.ticket_id)
                 .options(undefer(InboundMessage.parsed))
                 .order_by(InboundMessage.id.desc()).limit(args.limit))
        if args.state:
            query = query.where(InboundMessage.state == args.state)
        rows = [(r, action, number, *_sender_subject(r.parsed)) for r, action, number in session.execute(query)]
        counts = dict(session.execute(
            select(InboundMessage.state, func.count()).group_by(InboundMessage.state)).all())
    if args.json:
        for r, action, number, sender, subject in rows:
            print(json.dumps({"id": r.id, "desk": r.desk, "source": r.source, "state": r.state,
                              "sender": sender, "subject": subject, "action": action, "ticket": number,
                              "message_id": r.message_id, "label": r.label, "confidence": r.confidence,
                              "language": r.language, "error": r.error,
                              "received_at": r.received_at.isoformat()}))
        return 0
    print("  ".join(f"{s}: {counts.get(s, 0)}" for s in STATES))
    print(f"{'ID':>8}  {'STATE':<11} {'RECEIVED':<16}  {'SENDER':<32} {'ACTION':<7} {'TICKET':<16} SUBJECT")
    for r, action, number, sender, subject in rows:
        print(f"{r.id:>8}  {r.state:<11} {r.received_at:%Y-%m-%d %H:%M}  {(sender or '-')[:32]:<32} "
              f"{action or '-':<7} {number or '-':<16} {(subject or '')[:60]}")
    return 0


def _sender_subject(parsed: dict | None) -> tuple[str | None, str | None]:
    """The sender and subject a parsed message shows (None before parsing)."""
    if not parsed:
        return None, None
    return parsed.get("sender"), parsed.get("subject")


def cmd_stats(args: argparse.Namespace, lazy: Lazy) -> int:
    from models.base import utcnow
    from models.core import DONE, FAILED, QUARANTINED, STATES, InboundMessage, QuarantineRecord

    with lazy.ctx.sessions() as session:
        counts = dict(session.execute(
            select(InboundMessage.state, func.count()).group_by(InboundMessage.state)).all())
        waiting = [s for s in STATES if s not in (DONE, FAILED, QUARANTINED)]
        oldest = session.scalar(select(func.min(InboundMessage.received_at))
                                .where(InboundMessage.state.in_(waiting)))
        open_quarantine = session.scalar(select(func.count()).select_from(QuarantineRecord)
                                         .where(QuarantineRecord.resolved_at.is_(None)))
    if oldest is not None and oldest.tzinfo is None:
        from datetime import timezone
        oldest = oldest.replace(tzinfo=timezone.utc)
    backlog_age = (utcnow() - oldest).total_seconds() if oldest else 0.0
    data: dict[str, Any] = {"messages": {s: counts.get(s, 0) for s in STATES},
            "backlog": sum(counts.get(s, 0) for s in waiting),
            "oldest_waiting_seconds": round(backlog_age, 1),
            "quarantine_open": open_quarantine}
    if args.json:
        print(json.dumps(data))
        return 0
    print("messages:  " + "  ".join(f"{k} {v}" for k, v in data["messages"].items()))
    print(f"backlog:   {data['backlog']} waiting, oldest {backlog_age:.0f} s")
    print(f"quarantine: {open_quarantine} open")
    return 0


def cmd_quarantine_list(args: argparse.Namespace, lazy: Lazy) -> int:
    from models.core import InboundMessage, QuarantineRecord

    with lazy.ctx.sessions() as session:
        query = (select(QuarantineRecord, InboundMessage)
                 .join(InboundMessage, InboundMessage.id == QuarantineRecord.message_id)
                 .order_by(QuarantineRecord.id))
        if not args.all:
            query = query.where(QuarantineRecord.resolved_at.is_(None))
        rows = session.execute(query).all()
    if args.json:
        for q, m in rows:
            print(json.dumps({"id": q.id, "message": m.id, "reason": q.reason, "detail": q.detail,
                              "created_at": q.created_at.isoformat(), "size": m.size,
                              "resolved": q.resolved_at is not None}))
        return 0
    if not rows:
        print("no quarantined messages")
        return 0
    for q, m in rows:
        status = "resolved" if q.resolved_at else "open"
        print(f"{q.id:>6}  msg {m.id:<7} {status:<8} {q.created_at:%Y-%m-%d %H:%M}  {q.reason:<20} "
              f"{m.size:>8} B  {q.detail[:70]}")
    return 0


def cmd_quarantine_show(args: argparse.Namespace, lazy: Lazy) -> int:
    from sqlalchemy.orm import undefer

    from models.core import InboundMessage, QuarantineRecord

    with lazy.ctx.sessions() as session:
        q = session.get(QuarantineRecord, args.id)
        if q is None:
            raise CommandError(f"no quarantine record {args.id}")
        m = session.scalars(select(InboundMessage).where(InboundMessage.id == q.message_id)
                            .options(undefer(InboundMessage.raw))).one()
    if args.raw:
        sys.stdout.buffer.write(m.raw)
        return 0
    print(f"quarantine {q.id}: {q.reason}")
    print(f"  detail:     {q.detail}")
    print(f"  message:    {m.id} ({m.size} bytes, sha256 {m.sha256[:16]}...) from {m.source} to {m.desk}")
    print(f"  Message-ID: {m.message_id or '(none)'}")
    print(f"  created:    {q.created_at:%Y-%m-%d %H:%M:%S} UTC")
    if q.resolved_at:
        print(f"  resolved:   {q.resolved_at:%Y-%m-%d %H:%M:%S} UTC by {q.resolved_by}")
    head = m.raw[:1200].decode("utf-8", "replace")
    print("  first bytes:")
    for line in head.splitlines()[:20]:
        print(f"    {line[:120]}")
    return 0


def cmd_quarantine_retry(args: argparse.Namespace, lazy: Lazy) -> int:
    from daemon.pipeline import build_stages
    from daemon.intake.quarantine import retry
    from daemon.worker import drain
    from models.session import transaction

    if not args.ids and not args.all:
        raise CommandError("name quarantine record ids, or --all")
    with transaction(lazy.ctx.sessions) as session:
        count = retry(session, args.ids or None, actor="cli")
    drain(lazy.ctx.sessions, build_stages(lazy.ctx), lazy.config.pipeline)
    with lazy.ctx.sessions() as session:
        from daemon.intake.quarantine import still_quarantined
        left = still_quarantined(session, args.ids or None)
    print(f"retried {count} message(s); {count - left} went through, {left} quarantined again")
    return 0


if __name__ == "__main__":
    sys.exit(main())
