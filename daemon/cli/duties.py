"""Command-line subcommands of the desk's duties.

* ``acedesk articles import|list|show|retire`` -- knowledge articles (CSV
  ``key,language,title,url,labels,last_reviewed``);
* ``acedesk users inactivate|restore USERID --reason R`` and ``users status
  USERID`` -- account status, audited;
* ``acedesk incidents list|show|open|close`` -- outage incidents (War Room);
* ``acedesk escalate`` -- one escalation sweep now (the daemon runs it on a clock).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sqlalchemy import select

from classifiers.labels import LABELS, LANGUAGES
from daemon.cli import identity
from daemon.errors import CommandError, read_text_file
from models.analysts import ADMIN


def _subcommands(parser: argparse.ArgumentParser) -> Any:
    """Return the sub-command table of ``parser`` (to add actions to a command another module owns)."""
    for action in parser._actions:  # noqa: SLF001 - argparse offers no public accessor
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return action
    raise LookupError(parser.prog)


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add this area's subcommands to ``acedesk`` (after ``cli.responders``, which owns ``users``)."""
    a = subparsers.add_parser("articles", help="knowledge articles that replies link")
    asub = a.add_subparsers(dest="articles_command", metavar="ACTION")
    asub.required = True
    p = asub.add_parser("import", help="add or update articles from a CSV file "
                        "(key,language,title,url,labels,last_reviewed; labels ';'-separated)")
    p.add_argument("file", metavar="FILE.csv")
    p.set_defaults(handler=cmd_articles_import)
    p = asub.add_parser("list", help="articles in force (with --all, retired ones too)")
    p.add_argument("--label", choices=LABELS)
    p.add_argument("--language", choices=LANGUAGES)
    p.add_argument("--all", action="store_true")
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.set_defaults(handler=cmd_articles_list)
    p = asub.add_parser("show", help="one article, in each language")
    p.add_argument("key")
    p.set_defaults(handler=cmd_articles_show)
    p = asub.add_parser("retire", help="remove an article from every reply (no template change)")
    p.add_argument("key")
    p.add_argument("--language", choices=LANGUAGES, help="only this language (default: all)")
    identity.add_option(p)
    p.set_defaults(handler=cmd_articles_retire)

    users = _subcommands(subparsers.choices["users"])
    p = users.add_parser("inactivate", help="inactivate an account (or suspend it for security), audited")
    p.add_argument("user_id", metavar="USERID")
    p.add_argument("--reason", required=True)
    p.add_argument("--suspend", action="store_true", help="suspended by security rather than inactive")
    identity.add_option(p)
    p.set_defaults(handler=cmd_users_inactivate)
    p = users.add_parser("restore", help="make an inactive or suspended account active again, audited")
    p.add_argument("user_id", metavar="USERID")
    p.add_argument("--reason", required=True)
    identity.add_option(p)
    p.set_defaults(handler=cmd_users_restore)
    p = users.add_parser("status", help="a user's account status and its history")
    p.add_argument("user_id", metavar="USERID")
    p.set_defaults(handler=cmd_users_status)

    i = subparsers.add_parser("incidents", help="outage incidents (War Room)")
    isub = i.add_subparsers(dest="incidents_command", metavar="ACTION")
    isub.required = True
    p = isub.add_parser("list", help="open incidents (with --all, closed ones too)")
    p.add_argument("--all", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_incidents_list)
    p = isub.add_parser("show", help="one incident: what opened it, the alert, the CSMS draft, its reports")
    p.add_argument("incident", metavar="NUMBER")
    p.set_defaults(handler=cmd_incidents_show)
    p = isub.add_parser("open", help="open an incident by hand (alerts on-call, drafts a CSMS notice)")
    p.add_argument("--title", required=True)
    identity.add_option(p)
    p.set_defaults(handler=cmd_incidents_open)
    p = isub.add_parser("close", help="close an incident and send one follow-up to everyone attached")
    p.add_argument("incident", metavar="NUMBER")
    p.add_argument("--resolution", default="", help="a sentence for the follow-up (e.g. what was fixed)")
    p.add_argument("--no-follow-up", action="store_true", help="close without writing to anyone")
    identity.add_option(p)
    p.set_defaults(handler=cmd_incidents_close)

    p = subparsers.add_parser("escalate", help="escalate tickets near their target now (the daemon does it "
                              "every [escalation] interval)")
    p.set_defaults(handler=cmd_escalate)


# --- articles ---------------------------------------------------------------------------


def _seeded(session: Any) -> None:
    from responders.articles import seed_shipped

    seed_shipped(session)


def cmd_articles_import(args: argparse.Namespace, lazy: Any) -> int:
    from models.session import transaction
    from responders.articles import parse_articles_csv, upsert_articles

    rows, errors = parse_articles_csv(read_text_file(args.file))
    for error in errors:
        print(f"{args.file}:{error.line}: {error.message}", file=sys.stderr)
    with transaction(lazy.ctx.sessions) as session:
        _seeded(session)
        created, updated = upsert_articles(session, rows)
    print(f"articles: {created} created, {updated} updated, {len(rows) - created - updated} unchanged, "
          f"{len(errors)} rejected")
    return 1 if errors else 0


def _article_dict(a: Any) -> dict[str, Any]:
    return {"key": a.key, "language": a.language, "title": a.title, "url": a.url, "labels": list(a.labels),
            "last_reviewed": a.last_reviewed.isoformat() if a.last_reviewed else None, "source": a.source,
            "retired_at": a.retired_at.isoformat() if a.retired_at else None, "retired_by": a.retired_by}


def cmd_articles_list(args: argparse.Namespace, lazy: Any) -> int:
    from models.duties import Article
    from models.session import transaction

    with transaction(lazy.ctx.sessions) as session:
        _seeded(session)
        query = select(Article).order_by(Article.key, Article.language)
        if not args.all:
            query = query.where(Article.retired_at.is_(None))
        if args.language:
            query = query.where(Article.language == args.language)
        rows = [a for a in session.scalars(query) if not args.label or args.label in (a.labels or [])]
        data = [_article_dict(a) for a in rows]
    for d in data:
        if args.json:
            print(json.dumps(d, ensure_ascii=False))
            continue
        state = f" RETIRED {d['retired_at'][:10]}" if d["retired_at"] else ""
        print(f"{d['key']:<30} {d['language']}  {','.join(d['labels']):<40} {d['last_reviewed'] or '-':<10}"
              f"{state}  {d['title'][:60]}")
    if not data and not args.json:
        print("no articles")
    return 0


def cmd_articles_show(args: argparse.Namespace, lazy: Any) -> int:
    from models.session import transaction
    from responders.articles import find

    with transaction(lazy.ctx.sessions) as session:
        _seeded(session)
        rows = [_article_dict(a) for a in find(session, args.key)]
    if not rows:
        raise CommandError(f"no article {args.key!r} (see 'acedesk articles list --all')")
    for d in rows:
        print(f"{d['key']} ({d['language']}): {d['title']}")
        print(f"  url:           {d['url']}")
        print(f"  labels:        {', '.join(d['labels'])}")
        print(f"  last reviewed: {d['last_reviewed'] or '-'}   source: {d['source']}")
        if d["retired_at"]:
            print(f"  retired:       {d['retired_at']} by {d['retired_by']}")
    return 0


def cmd_articles_retire(args: argparse.Namespace, lazy: Any) -> int:
    from models.core import AuditEntry
    from models.session import transaction
    from responders.articles import find, retire

    by = identity.acting(lazy, args, ADMIN)
    with transaction(lazy.ctx.sessions) as session:
        _seeded(session)
        if not find(session, args.key, args.language):
            raise CommandError(f"no article {args.key!r}{' in ' + args.language if args.language else ''}")
        done = retire(session, args.key, by, args.language)
        if done:
            session.add(AuditEntry(actor=by, action="article.retire", subject_type="article", subject_id=args.key,
                                   detail={"languages": [a.language for a in done]}))
        languages = [a.language for a in done]
    if not languages:
        print(f"article {args.key} was already retired")
    else:
        print(f"article {args.key} ({', '.join(languages)}) retired: replies no longer link it")
    return 0


# --- users: account status -----------------------------------------------------------------


def _set_status(args: argparse.Namespace, lazy: Any, status: str) -> int:
    from models.session import transaction
    from responders.accounts import AccountError, set_status

    by = identity.acting(lazy, args)
    try:
        with transaction(lazy.ctx.sessions) as session:
            user, before = set_status(session, args.user_id, status, args.reason, by)
            name = user.user_id
    except AccountError as exc:
        raise CommandError(str(exc)) from None
    print(f"user {name}: {before} -> {status} (by {by}: {args.reason.strip()})")
    return 0


def cmd_users_inactivate(args: argparse.Namespace, lazy: Any) -> int:
    from models.responders import USER_INACTIVE, USER_SUSPENDED

    return _set_status(args, lazy, USER_SUSPENDED if args.suspend else USER_INACTIVE)


def cmd_users_restore(args: argparse.Namespace, lazy: Any) -> int:
    from models.responders import USER_ACTIVE

    return _set_status(args, lazy, USER_ACTIVE)


def cmd_users_status(args: argparse.Namespace, lazy: Any) -> int:
    from models.responders import User
    from responders.accounts import history

    with lazy.ctx.sessions() as session:
        key = args.user_id
        user = session.scalars(select(User).where(User.user_id.in_({key, key.lower(), key.upper()}))).first()
        if user is None:
            raise CommandError(f"no user {key!r} on file")
        print(f"user {user.user_id} <{user.email}>: {user.status}"
              + (f" since {user.status_at:%Y-%m-%d %H:%M} UTC by {user.status_by}: {user.status_reason}"
                 if user.status_at else ""))
        for entry in history(session, user.user_id):
            detail = entry.detail or {}
            print(f"  {entry.at:%Y-%m-%d %H:%M} {entry.actor}: {detail.get('from')} -> {detail.get('to')}: "
                  f"{detail.get('reason', '')}")
    return 0


# --- incidents ---------------------------------------------------------------------------------


def _incident_dict(session: Any, incident: Any) -> dict[str, Any]:
    from responders.incidents import report_count

    return {"number": incident.number, "status": incident.status, "title": incident.title,
            "label": incident.label, "opened_at": incident.opened_at.isoformat(), "opened_by": incident.opened_by,
            "trigger": incident.trigger, "reports": report_count(session, incident.id),
            "alert_outbox_id": incident.alert_outbox_id, "csms_notice_id": incident.csms_notice_id,
            "closed_at": incident.closed_at.isoformat() if incident.closed_at else None,
            "closed_by": incident.closed_by, "followups_sent": incident.followups_sent}


def cmd_incidents_list(args: argparse.Namespace, lazy: Any) -> int:
    from models.duties import INCIDENT_OPEN, Incident

    with lazy.ctx.sessions() as session:
        query = select(Incident).order_by(Incident.id.desc())
        if not args.all:
            query = query.where(Incident.status == INCIDENT_OPEN)
        data = [_incident_dict(session, i) for i in session.scalars(query)]
    for d in data:
        if args.json:
            print(json.dumps(d))
        else:
            print(f"{d['number']:<14} {d['status']:<7} {d['opened_at'][:16]}  {d['reports']:>5} reports  "
                  f"{d['title']}")
    if not data and not args.json:
        print("no open incidents" if not args.all else "no incidents")
    return 0


def _find(session: Any, ref: str) -> Any:
    from responders.incidents import find_incident

    try:
        return find_incident(session, ref)
    except LookupError as exc:
        raise CommandError(str(exc)) from None


def cmd_incidents_show(args: argparse.Namespace, lazy: Any) -> int:
    with lazy.ctx.sessions() as session:
        d = _incident_dict(session, _find(session, args.incident))
    print(f"incident {d['number']}: {d['title']} ({d['status']})")
    print(f"  opened:     {d['opened_at']} by {d['opened_by']}"
          + (f", {d['trigger']['reports']} reports in the window (usual {d['trigger']['usual_per_window']})"
             if d["trigger"] else ""))
    print(f"  reports:    {d['reports']} attached")
    print(f"  alert:      outbox {d['alert_outbox_id'] or '-'}")
    print(f"  CSMS draft: {d['csms_notice_id'] or '-'}"
          + (f" (acedesk csms preview {d['csms_notice_id']})" if d["csms_notice_id"] else ""))
    if d["closed_at"]:
        print(f"  closed:     {d['closed_at']} by {d['closed_by']}, {d['followups_sent']} follow-up(s)")
    return 0


def cmd_incidents_open(args: argparse.Namespace, lazy: Any) -> int:
    from daemon.stages.respond import make_responder
    from models.base import utcnow
    from models.session import transaction
    from responders.incidents import open_incident, open_incident_for

    responder = make_responder(lazy.config)
    by = identity.acting(lazy, args)
    with transaction(lazy.ctx.sessions) as session:
        if open_incident_for(session, responder.incidents.label) is not None:
            raise CommandError("an incident is already open (acedesk incidents list)")
        incident = open_incident(session, responder, title=args.title, by=by, now=utcnow())
        number, notice = incident.number, incident.csms_notice_id
    print(f"incident {number} opened; on-call alerted; CSMS draft {notice or '-'}")
    return 0


def cmd_incidents_close(args: argparse.Namespace, lazy: Any) -> int:
    from daemon.stages.respond import make_responder
    from models.core import AuditEntry
    from models.session import transaction
    from responders.incidents import close_incident

    responder = make_responder(lazy.config)
    by = identity.acting(lazy, args)
    with transaction(lazy.ctx.sessions) as session:
        incident = _find(session, args.incident)
        try:
            sent = close_incident(session, responder, incident, by=by, resolution=args.resolution,
                                  follow_up=not args.no_follow_up)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        session.add(AuditEntry(actor=by, action="incident.close", subject_type="incident",
                               subject_id=str(incident.number), detail={"followups": sent}))
        number = incident.number
    print(f"incident {number} closed; {sent} follow-up(s) queued")
    return 0


# --- escalation ----------------------------------------------------------------------------------


def cmd_escalate(args: argparse.Namespace, lazy: Any) -> int:
    from daemon.duties import sweep_once
    from daemon.stages.respond import make_responder

    n = sweep_once(lazy.ctx, make_responder(lazy.config))
    print(f"{n} ticket(s) escalated")
    return 0
