"""Command-line subcommands of the console: analyst accounts, the web server
alone, and the desk's SLA report.

* ``acedesk analysts add NAME --role analyst|publisher|admin`` (password from a prompt,
  ``--password-file FILE`` or ``ACEDESK_ANALYST_PASSWORD``; ``--email`` for escalation
  digests), ``list``, ``email NAME ADDRESS``, ``disable NAME``, ``enable NAME``, ``passwd NAME``.
* ``acedesk web`` -- serve the console, subscribers' pages and /metrics without the daemon.
* ``acedesk report sla --since YYYY-MM-DD [--format csv|json]`` -- the dashboard's figures.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import getpass
import json
import os
import sys
from typing import Any

from daemon.errors import CommandError, read_text_file


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add this area's subcommands to ``acedesk``."""
    from models.analysts import ROLES

    a = subparsers.add_parser("analysts", help="analyst accounts of the web console")
    asub = a.add_subparsers(dest="analysts_command", metavar="ACTION")
    asub.required = True
    p = asub.add_parser("add", help="create an account (asks for the password)")
    p.add_argument("name")
    p.add_argument("--role", choices=ROLES, default="analyst",
                   help="analyst: the queue and tickets; publisher: also CSMS; admin: everything")
    p.add_argument("--password-file", help="read the password from this file ('-' = stdin) instead of a prompt")
    p.add_argument("--email", default="", help="where escalation digests of their tickets go")
    p.set_defaults(handler=cmd_analysts_add)
    p = asub.add_parser("email", help="set where an analyst's escalation digests go ('' clears it)")
    p.add_argument("name")
    p.add_argument("address")
    p.set_defaults(handler=cmd_analysts_email)
    p = asub.add_parser("list", help="accounts, roles, last login")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_analysts_list)
    p = asub.add_parser("disable", help="stop an account from logging in (signs it out everywhere)")
    p.add_argument("name")
    p.set_defaults(handler=cmd_analysts_disable)
    p = asub.add_parser("enable", help="let a disabled account log in again")
    p.add_argument("name")
    p.set_defaults(handler=cmd_analysts_enable)
    p = asub.add_parser("passwd", help="set a new password (signs the account out everywhere)")
    p.add_argument("name")
    p.add_argument("--password-file", help="read the password from this file ('-' = stdin)")
    p.set_defaults(handler=cmd_analysts_passwd)

    p = subparsers.add_parser("web", help="serve the web console alone (no mail processing) until SIGTERM")
    p.set_defaults(handler=cmd_web)

    r = subparsers.add_parser("report", help="the desk's figures")
    rsub = r.add_subparsers(dest="report_command", metavar="REPORT")
    rsub.required = True
    p = rsub.add_parser("sla", help="first response and resolution against the target, per label and week")
    p.add_argument("--since", required=True, help="first day (YYYY-MM-DD, UTC)")
    p.add_argument("--until", help="day after the last (default: now)")
    p.add_argument("--format", choices=["csv", "json"], default="csv")
    p.set_defaults(handler=cmd_report_sla)


def _password(args: argparse.Namespace) -> str:
    if args.password_file:
        return read_text_file(args.password_file).strip()
    env = os.environ.get("ACEDESK_ANALYST_PASSWORD")
    if env:
        return env
    if not sys.stdin.isatty():
        raise CommandError("no password: give --password-file FILE, set ACEDESK_ANALYST_PASSWORD, or run in a terminal")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Again: ") != first:
        raise CommandError("the passwords differ; nothing was changed")
    return first


def _accounts(fn: Any, lazy: Any) -> Any:
    from daemon.web.accounts import AccountError
    from models.session import transaction

    try:
        with transaction(lazy.ctx.sessions) as session:
            return fn(session)
    except AccountError as exc:
        raise CommandError(str(exc)) from None


def _audit(session: Any, action: str, name: str) -> None:
    from models.base import utcnow
    from models.core import AuditEntry
    session.add(AuditEntry(at=utcnow(), actor=f"cli:{getpass.getuser()}", action=action, subject_type="analyst",
                           subject_id=name[:64], detail=None))


def cmd_analysts_add(args: argparse.Namespace, lazy: Any) -> int:
    from daemon.web.accounts import add_analyst, set_email

    password = _password(args)

    def add(session: Any) -> Any:
        analyst = add_analyst(session, args.name, args.role, password)
        if args.email:
            set_email(session, analyst.name, args.email)
        _audit(session, "analysts.add", analyst.name)
        return analyst.name

    name = _accounts(add, lazy)
    host, port = lazy.config.web.host_port()
    print(f"analyst {name} ({args.role}) created; log in at http://{host}:{port}/login")
    return 0


def cmd_analysts_list(args: argparse.Namespace, lazy: Any) -> int:
    from daemon.web.accounts import list_analysts

    with lazy.ctx.sessions() as session:
        rows = [{"name": a.name, "role": a.role, "disabled": a.disabled, "email": a.email,
                 "last_login_at": a.last_login_at.isoformat() if a.last_login_at else None}
                for a in list_analysts(session)]
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    if not rows:
        print("no analysts yet: 'acedesk analysts add NAME --role admin'")
        return 0
    print(f"{'name':<24} {'role':<10} {'state':<9} {'e-mail':<32} last login")
    for row in rows:
        print(f"{row['name']:<24} {row['role']:<10} {'disabled' if row['disabled'] else 'active':<9} "
              f"{row['email'] or '-':<32} {row['last_login_at'] or '-'}")
    return 0


def cmd_analysts_email(args: argparse.Namespace, lazy: Any) -> int:
    from daemon.web.accounts import set_email

    kept = _accounts(lambda s: (set_email(s, args.name, args.address), _audit(s, "analysts.email", args.name))[0],
                     lazy)
    print(f"escalation digests of {args.name} go to {kept}" if kept else f"{args.name} gets no escalation digests")
    return 0


def cmd_analysts_disable(args: argparse.Namespace, lazy: Any) -> int:
    from daemon.web.accounts import set_disabled

    _accounts(lambda s: (set_disabled(s, args.name, True), _audit(s, "analysts.disable", args.name)), lazy)
    print(f"analyst {args.name} disabled and signed out")
    return 0


def cmd_analysts_enable(args: argparse.Namespace, lazy: Any) -> int:
    from daemon.web.accounts import set_disabled

    _accounts(lambda s: (set_disabled(s, args.name, False), _audit(s, "analysts.enable", args.name)), lazy)
    print(f"analyst {args.name} enabled")
    return 0


def cmd_analysts_passwd(args: argparse.Namespace, lazy: Any) -> int:
    from daemon.web.accounts import set_password

    password = _password(args)
    _accounts(lambda s: (set_password(s, args.name, password), _audit(s, "analysts.passwd", args.name)), lazy)
    print(f"password of {args.name} changed; their sessions were closed")
    return 0


def cmd_web(args: argparse.Namespace, lazy: Any) -> int:
    import asyncio

    from daemon.app import Supervisor, check_schema
    from daemon.web.server import make_components

    ctx = lazy.ctx
    problem = check_schema(ctx)
    if problem:
        raise CommandError(problem)
    components = make_components(ctx)
    if not components:
        raise CommandError("[web] enabled = false: nothing to serve")

    async def serve() -> int:
        supervisor = Supervisor(ctx, components)
        try:
            return await supervisor.run()
        finally:
            supervisor.notifier.close()

    return asyncio.run(serve())


def _day(text: str, flag: str) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc)
    except ValueError:
        raise CommandError(f"{flag}: expected a date like 2026-12-01, got {text!r}") from None


def cmd_report_sla(args: argparse.Namespace, lazy: Any) -> int:
    from models.base import utcnow
    from responders import report

    since = _day(args.since, "--since")
    until = _day(args.until, "--until") if args.until else utcnow()
    target = lazy.config.responders.target_hours
    with lazy.ctx.sessions() as session:
        figures = report.sla(session, since, until, target)
    if args.format == "json":
        print(json.dumps(figures.to_dict(), indent=2))
        return 0
    writer = csv.writer(sys.stdout)
    writer.writerow(["scope", "key", "tickets", "responded", "within_target", "share_within_target",
                     "mean_first_response_hours", "resolved", "mean_resolution_hours", "corrections",
                     "escalated"])
    for row in figures.rows():
        writer.writerow(row)
    return 0
