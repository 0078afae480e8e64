"""``acedesk csms ...``: compose, preview, schedule, publish and follow CSMS
notices; derive their reminders; import subscribers; list topics; write the
static archive.

Times are given and shown in US Eastern time, like the notices themselves
(``--at "2026-12-03 14:00"``); they are stored in UTC.  A notice is named by
its number (``67800001``, ``#67800001``, ``CSMS#67800001``) once it has one,
or by its id before.  ``publish`` sends in the foreground with a progress
bar (the daemon's scheduler would do the same; the notice's lease keeps the
two from sending it twice); ``--no-wait`` leaves it to the daemon.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import signal
import sys
from typing import Any

from sqlalchemy import func, select

from daemon.cli import identity
from daemon.errors import CommandError, read_text_file
from models.analysts import PUBLISHER

EPILOG_TIMES = "Times are US Eastern (ET), as 'YYYY-MM-DD HH:MM'."


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this area's subcommands to ``acedesk``."""
    csms = subparsers.add_parser(
        "csms", help="CSMS notices: create, preview, schedule, publish, list; subscribers; topics; archive",
        description="Compose and publish numbered CSMS notices to the subscribers of their topics.")
    sub = csms.add_subparsers(dest="csms_command", metavar="ACTION")
    sub.required = True
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("create", help="create a notice (a draft, or scheduled with --at)", formatter_class=fmt,
                       description="Create a notice from a Markdown body. It is a draft until scheduled\n"
                                   "(--at) or published; --support-call and --deadline also derive its\n"
                                   "REMINDER notices.",
                       epilog=EPILOG_TIMES + "\n\nExample:\n  acedesk csms create --title 'Support Call Today' "
                              "--type REMINDER \\\n    --tag Deadline --tag 'High Urgency' --topic ACE "
                              "--topic 'ACE Portal' --body call.md --at '2026-02-11 09:00'")
    _notice_fields(p)
    p.add_argument("--at", metavar="TIME", help="publish at this time (ET); without it the notice is a draft")
    p.add_argument("--late-ok", action="store_true",
                   help="accept an --at in the past (the notice goes out at once, flagged late)")
    p.add_argument("--with-translation", action="store_true",
                   help="hold it until its translation exists (then each subscriber gets one version)")
    p.add_argument("--support-call", metavar="TIME",
                   help="also derive a REMINDER sent the morning of a support call at TIME (ET)")
    p.add_argument("--deadline", metavar="TIME",
                   help="also derive REMINDERs before a deadline at TIME (ET); see --days-before")
    p.add_argument("--days-before", metavar="N[,N...]", default="7,1",
                   help="with --deadline: days before it to remind (default: 7,1)")
    identity.add_option(p)
    p.set_defaults(handler=cmd_create)

    p = sub.add_parser("edit", help="change a draft or scheduled notice (a published one cannot change)",
                       description="Change the title, type, tags, topics, body or language of a notice that is "
                                   "not published yet; what is not given stays. 'acedesk csms preview' shows "
                                   "the result. A notice publishing, published or cancelled is refused.")
    p.add_argument("notice", metavar="NOTICE", help="the id of the draft")
    p.add_argument("--title")
    p.add_argument("--type")
    p.add_argument("--tag", action="append", default=None, metavar="TAG",
                   help="the tags, replacing the old ones (repeatable, or ';'-separated; '' for none)")
    p.add_argument("--topic", action="append", default=None, metavar="TOPIC",
                   help="the topics, replacing the old ones (repeatable, or ';'-separated)")
    p.add_argument("--body", metavar="FILE", help="the new body in Markdown; '-' reads stdin")
    p.add_argument("--language", choices=["en", "es"])
    identity.add_option(p)
    p.set_defaults(handler=cmd_edit)

    p = sub.add_parser("reminder", help="derive REMINDER notices from a notice's event",
                       description="Derive reminders of a notice, each a scheduled REMINDER notice linked to it: "
                                   "the morning of a support call, or N days before a deadline.",
                       epilog=EPILOG_TIMES)
    p.add_argument("notice", metavar="NOTICE", help="the parent notice (number or id)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--support-call", metavar="TIME", help="the call's start (ET)")
    g.add_argument("--deadline", metavar="TIME", help="the deadline (ET)")
    p.add_argument("--days-before", metavar="N[,N...]", default="7,1",
                   help="with --deadline: days before it to remind (default: 7,1)")
    identity.add_option(p)
    p.set_defaults(handler=cmd_reminder)

    p = sub.add_parser("preview", help="render a notice as a sample subscriber would read it",
                       description="Render a notice (a draft by its id, a published one by its number) with the "
                                   "date it will carry, and say what the HTML sanitiser removes from its body.")
    p.add_argument("notice", metavar="NOTICE", help="number, or the id of a draft")
    p.add_argument("--html", action="store_true", help="print the HTML part instead of the text")
    p.add_argument("--email", default="subscriber@example.com", help="the sample recipient's address")
    p.set_defaults(handler=cmd_preview)

    p = sub.add_parser("schedule", help="set (or move) the time a notice is published", epilog=EPILOG_TIMES)
    p.add_argument("notice", metavar="NOTICE", help="number or id")
    p.add_argument("--at", metavar="TIME", required=True, help="publication time (ET)")
    p.add_argument("--late-ok", action="store_true", help="accept a time in the past (goes out at once, late)")
    p.add_argument("--with-translation", action="store_true", help="hold it until its translation exists")
    identity.add_option(p)
    p.set_defaults(handler=cmd_schedule)

    p = sub.add_parser("publish", help="publish a notice now, with a progress bar",
                       description="Show the number the notice will take, its topics and its recipients per "
                                   "language, ask for confirmation, then allocate the number, plan one delivery "
                                   "per subscriber of its topics (with its translation, each subscriber gets the "
                                   "version in their language) and send them now, showing progress. A notice "
                                   "nobody would receive is refused. Interrupting (Ctrl-C) stops cleanly; the "
                                   "daemon (or publish again) finishes what is left.")
    p.add_argument("notice", metavar="NOTICE", help="number or id")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation (scripts)")
    p.add_argument("--no-wait", action="store_true", help="only start it: the daemon sends it")
    identity.add_option(p)
    p.set_defaults(handler=cmd_publish)

    p = sub.add_parser("cancel", help="cancel a draft or scheduled notice (and its reminders)")
    p.add_argument("notice", metavar="NOTICE", help="number or id")
    identity.add_option(p)
    p.set_defaults(handler=cmd_cancel)

    p = sub.add_parser("list", help="notices, newest first, with sent/failed/pending counts")
    p.add_argument("--status", choices=["draft", "scheduled", "publishing", "done", "cancelled"])
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.set_defaults(handler=cmd_list)

    p = sub.add_parser("show", help="one notice: its fields, schedule and delivery counts")
    p.add_argument("notice", metavar="NOTICE", help="number or id")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(handler=cmd_show)

    subs = sub.add_parser("subscribers", help="subscriber lists")
    ssub = subs.add_subparsers(dest="subscribers_command", metavar="ACTION")
    ssub.required = True
    p = ssub.add_parser("import", help="create or update subscribers from a CSV file (email,topics,language)",
                        description="Import subscribers from a CSV file with the columns email,topics,language "
                                    "(topics separated by ';', language en or es). Re-importing updates "
                                    "subscribers' topics and language, never duplicates them; addresses that "
                                    "unsubscribed or were disabled by bounces are left alone. Bad rows are "
                                    "reported with their line numbers and skipped (exit status 1).")
    p.add_argument("file", metavar="FILE.csv")
    identity.add_option(p)
    p.set_defaults(handler=cmd_subscribers_import)
    states = ["pending", "active", "bouncing", "disabled", "unsubscribed"]
    p = ssub.add_parser("list", help="subscribers with their topics, language and state",
                        description="List subscribers: pending (asked by mail, not confirmed), active, bouncing "
                                    "(hard bounces below the threshold), disabled (bounces), unsubscribed.")
    p.add_argument("--state", choices=states)
    p.add_argument("--topic", help="only subscribers of this topic")
    p.add_argument("--search", default="", help="only addresses containing this")
    p.add_argument("--limit", type=int, default=0, help="at most this many (default: all)")
    p.set_defaults(handler=cmd_subscribers_list)
    p = ssub.add_parser("show", help="one subscriber: topics, language, state and history")
    p.add_argument("email")
    p.set_defaults(handler=cmd_subscribers_show)
    p = ssub.add_parser("remove", help="delete a subscriber and their records (erasure)",
                        description="Delete a subscriber with their subscriptions, delivery and bounce records "
                                    "and pending requests. To stop mail but keep the record, use the "
                                    "unsubscribe link or 'unsubscribe' by mail instead.")
    p.add_argument("email")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    identity.add_option(p)
    p.set_defaults(handler=cmd_subscribers_remove)
    p = ssub.add_parser("export", help="write subscribers as CSV (email,topics,language,state,created_at,"
                                      "hard_bounces); re-importable")
    p.add_argument("--state", choices=states)
    p.add_argument("--topic")
    p.add_argument("--out", metavar="FILE", default="-", help="the CSV file (default: stdout)")
    p.set_defaults(handler=cmd_subscribers_export)

    p = subparsers.add_parser(
        "secrets", help="the CSMS signing secrets: rotate them",
        description="The secrets that sign the links in notices (unsubscribe, preferences, confirmations) and "
                    "the VERP return paths. 'rotate' puts a new secret on top of [csms] secret_file (or the "
                    "generated state-dir file) and keeps the previous ones, which still verify the links "
                    "already sent; every running instance picks the new file up within seconds.")
    ssec = p.add_subparsers(dest="secrets_command", metavar="ACTION")
    ssec.required = True
    p = ssec.add_parser("rotate", help="sign with a new secret; keep accepting the previous ones")
    p.add_argument("--keep", type=int, default=2, help="previous secrets still accepted (default: 2)")
    p.set_defaults(handler=cmd_secrets_rotate)
    p = ssec.add_parser("show", help="the key ids in the ring (never the secrets)")
    p.set_defaults(handler=cmd_secrets_show)

    p = sub.add_parser("dkim-record", help="the DNS TXT record of the DKIM key ([csms] dkim_key_file)",
                       description="Print the name and value of the TXT record that publishes the public half of "
                                   "[csms] dkim_key_file, for the mailbox providers to verify notices with.")
    p.set_defaults(handler=cmd_dkim_record)

    p = sub.add_parser("topics", help="list topics with their active subscribers (or add topics)")
    p.add_argument("--add", metavar="NAME", action="append", default=[], help="create a topic (repeatable)")
    p.set_defaults(handler=cmd_topics)

    p = sub.add_parser("archive", help="write the static archive (HTML pages, index, Atom feed)",
                       description="Write every published notice as an HTML page, a searchable index and an "
                                   "Atom feed of the latest 100 into <state_dir>/<archive_dir>. The daemon "
                                   "rewrites it after each publish.")
    p.set_defaults(handler=cmd_archive)


def _notice_fields(p: argparse.ArgumentParser) -> None:
    p.add_argument("--title", required=True, help="the title (the subject is 'CSMS# <number> - <title>')")
    p.add_argument("--type", default="INFORMATION", help="REMINDER, INFORMATION, ACTION REQUIRED, UPDATE ... "
                                                         "(default: INFORMATION)")
    p.add_argument("--tag", action="append", default=[], metavar="TAG",
                   help="a tag such as Deadline, 'High Urgency', 'Action Required' (repeatable, or ';'-separated)")
    p.add_argument("--topic", action="append", default=[], metavar="TOPIC", required=True,
                   help="a program affected: the topic it goes to (repeatable, or ';'-separated)")
    p.add_argument("--body", metavar="FILE", required=True, help="the body in Markdown; '-' reads stdin")
    p.add_argument("--related", action="append", default=[], type=int, metavar="NUMBER",
                   help="a related notice number (repeatable)")
    p.add_argument("--language", choices=["en", "es"], default="en",
                   help="es: a Spanish version, sent to Spanish-language subscribers (default: en)")
    p.add_argument("--translation-of", metavar="NOTICE", help="with --language es: the English notice it translates")
    p.add_argument("--author", default="", help="who wrote it (kept with the notice; default: the analyst acting)")


# --- helpers ----------------------------------------------------------------------------


def parse_et(value: str, option: str = "--at") -> dt.datetime:
    """Return ``value`` (ET unless it carries an offset) as an aware UTC datetime."""
    from csms.render import ET

    try:
        moment = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise CommandError(f"{option} {value!r}: expected a time in ET like '2026-12-03 14:00'") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ET)
    return moment.astimezone(dt.UTC)


def fmt_et(moment: dt.datetime | None) -> str:
    from csms.render import to_et

    return f"{to_et(moment):%Y-%m-%d %H:%M} ET" if moment else "-"


def _split(values: list[str]) -> list[str]:
    return [part.strip() for v in values for part in v.split(";") if part.strip()]


def _days(value: str) -> list[int]:
    try:
        days = [int(d) for d in value.replace(" ", "").split(",") if d]
    except ValueError:
        raise CommandError(f"--days-before {value!r}: expected whole numbers like 7,1") from None
    if not days or any(d < 0 for d in days):
        raise CommandError(f"--days-before {value!r}: expected whole numbers like 7,1")
    return days


def _find(session: Any, ref: str) -> Any:
    from csms.service import CsmsError, find_notice

    try:
        return find_notice(session, ref)
    except CsmsError as exc:
        raise CommandError(str(exc)) from None


def _check_time(at: dt.datetime, late_ok: bool) -> None:
    from csms.guards import check_schedule_time
    from csms.service import CsmsError
    from models.base import utcnow

    try:
        check_schedule_time(at, utcnow(), late_ok=late_ok)
    except CsmsError as exc:
        raise CommandError(f"--at {exc}") from None


def _label(notice: Any) -> str:
    return f"CSMS #{notice.number}" if notice.number else f"notice {notice.id}"


def _ensure_default_topics(lazy: Any) -> None:
    from daemon.notices.scheduler import ensure_default_topics

    ensure_default_topics(lazy.ctx)


def _resolve_topics(session: Any, wanted: list[str]) -> list[str]:
    """Map topic names case-insensitively onto existing ones; unknown names are an error."""
    from csms.commands import match_topics
    from csms.service import topic_names

    matched, unknown = match_topics(wanted, topic_names(session))
    if unknown:
        raise CommandError(f"unknown topic(s): {', '.join(unknown)} (see 'acedesk csms topics'; "
                     "add one with 'acedesk csms topics --add NAME')")
    return matched


# --- commands ---------------------------------------------------------------------------


def cmd_create(args: argparse.Namespace, lazy: Any) -> int:
    from csms import service
    from models.session import transaction

    if args.translation_of and args.language != "es":
        raise CommandError("--translation-of is for a Spanish version: add --language es")
    body = read_text_file(args.body)
    if not body.strip():
        raise CommandError("the body is empty")
    at = parse_et(args.at) if args.at else None
    if at is not None:
        _check_time(at, args.late_ok)
    call = parse_et(args.support_call, "--support-call") if args.support_call else None
    deadline = parse_et(args.deadline, "--deadline") if args.deadline else None
    days = _days(args.days_before) if deadline else []
    by = identity.acting(lazy, args, PUBLISHER)
    _ensure_default_topics(lazy)
    with transaction(lazy.ctx.sessions) as session:
        original = _find(session, args.translation_of) if args.translation_of else None
        try:
            notice = service.create_notice(
                session, title=args.title, type=args.type, body=body, topics=_resolve_topics(session, _split(args.topic)),
                tags=_split(args.tag), related=args.related, language=args.language, author=args.author or by,
                translation_of=original, scheduled_at=at, hold_for_translation=args.with_translation)
        except service.CsmsError as exc:
            raise CommandError(str(exc)) from None
        identity.audit(session, by, "csms.create", "notice", notice.id,
                       {"title": notice.title, "scheduled_at": at.isoformat() if at else None})
        reminders = _derive(session, lazy.config, notice, call, deadline, days)
        held = " (held until its translation exists)" if args.with_translation else ""
        print(f"notice {notice.id} created: {notice.status}{held}"
              + (f", to be published {fmt_et(at)}" if at else " (schedule it with 'acedesk csms schedule "
                 f"{notice.id} --at ...' or publish it with 'acedesk csms publish {notice.id}')"))
        for r in reminders:
            print(f"  reminder {r.id}: {r.title!r}, {fmt_et(r.scheduled_at)}")
    return 0


def cmd_edit(args: argparse.Namespace, lazy: Any) -> int:
    from csms import service
    from models.session import transaction

    body = read_text_file(args.body) if args.body else None
    if body is not None and not body.strip():
        raise CommandError("the body is empty")
    by = identity.acting(lazy, args, PUBLISHER)
    with transaction(lazy.ctx.sessions) as session:
        notice = _find(session, args.notice)
        try:
            changed = service.update_draft(
                session, notice, title=args.title, type=args.type, body=body,
                topics=_resolve_topics(session, _split(args.topic)) if args.topic is not None else None,
                tags=_split(args.tag) if args.tag is not None else None, language=args.language)
        except service.CsmsError as exc:
            raise CommandError(str(exc)) from None
        if changed:
            identity.audit(session, by, "csms.edit", "notice", notice.id, {"fields": changed})
    print(f"{_label(notice)}: " + (f"{', '.join(changed)} changed" if changed else "nothing changed")
          + f" ({notice.status}; 'acedesk csms preview {notice.id}' shows it)")
    return 0


def _derive(session: Any, config: Any, parent: Any, call: dt.datetime | None, deadline: dt.datetime | None,
            days: list[int]) -> list[Any]:
    """Create the REMINDER notices of ``parent``'s event; return them."""
    from csms import reminders, service
    from models.base import utcnow

    hour = config.csms.reminder_hour
    plans = []
    if call is not None:
        plans.append(reminders.support_call_reminder(parent.title, parent.body, call, reminder_hour=hour,
                                                     language=parent.language))
    if deadline is not None:
        plans += reminders.deadline_reminders(parent.title, parent.body, deadline, days, reminder_hour=hour,
                                              language=parent.language, now=utcnow())
        if not plans:
            raise CommandError("every reminder day before that deadline is already past")
    from csms.guards import check_schedule_time

    for plan in plans:
        try:
            check_schedule_time(plan.send_at, utcnow(), late_ok=False)
        except service.CsmsError:
            raise CommandError(f"the reminder {plan.title!r} would be due {fmt_et(plan.send_at)}, which is past: "
                               "check the event's time") from None
    created = []
    for plan in plans:
        created.append(service.create_notice(
            session, title=plan.title, type="REMINDER", body=plan.body, topics=list(parent.topics),
            tags=list(parent.tags), related=list(parent.related), language=parent.language, author=parent.author,
            parent=parent, scheduled_at=plan.send_at, event=plan.event))
    return created


def cmd_reminder(args: argparse.Namespace, lazy: Any) -> int:
    from models.csms import CANCELLED
    from models.session import transaction

    call = parse_et(args.support_call, "--support-call") if args.support_call else None
    deadline = parse_et(args.deadline, "--deadline") if args.deadline else None
    days = _days(args.days_before) if deadline else []
    by = identity.acting(lazy, args, PUBLISHER)
    with transaction(lazy.ctx.sessions) as session:
        parent = _find(session, args.notice)
        if parent.status == CANCELLED:
            raise CommandError(f"{_label(parent)} was cancelled")
        created = _derive(session, lazy.config, parent, call, deadline, days)
        for r in created:
            identity.audit(session, by, "csms.create", "notice", r.id,
                           {"title": r.title, "scheduled_at": r.scheduled_at.isoformat(), "reminder_of": parent.id})
        for r in created:
            print(f"reminder {r.id} of {_label(parent)}: {r.title!r}, {fmt_et(r.scheduled_at)}")
    return 0


def cmd_preview(args: argparse.Namespace, lazy: Any) -> int:
    from csms import guards, headers
    from csms.tokens import UNSUBSCRIBE
    from daemon.notices.fanout import load_signer
    from models.base import utcnow

    signer = load_signer(lazy.config)
    # A token for no one (subscriber 0): the links look real and unsubscribe nobody.
    token = signer.make(UNSUBSCRIBE, 0, 3600)
    base = lazy.config.csms.base_url
    with lazy.ctx.sessions() as session:
        notice = _find(session, args.notice)
        shown = guards.preview(session, notice, email=args.email, unsubscribe_url=headers.unsubscribe_url(base, token),
                               manage_url=headers.manage_url(base, token), now=utcnow())
    print(f"[{shown.label}, dated {shown.date}]", file=sys.stderr)
    for what in shown.removed:
        print(f"[the sanitiser removes from the body: {what}]", file=sys.stderr)
    if args.html:
        print(shown.rendered.html)
    else:
        print(f"Subject: {shown.rendered.subject}\n")
        print(shown.rendered.text)
    return 0


def cmd_schedule(args: argparse.Namespace, lazy: Any) -> int:
    from csms import service
    from models.base import utcnow
    from models.session import transaction

    at = parse_et(args.at)
    _check_time(at, args.late_ok)
    by = identity.acting(lazy, args, PUBLISHER)
    with transaction(lazy.ctx.sessions) as session:
        notice = _find(session, args.notice)
        try:
            service.schedule(session, notice, at)
        except service.CsmsError as exc:
            raise CommandError(str(exc)) from None
        identity.audit(session, by, "csms.schedule", "notice", notice.id, {"at": at.isoformat()})
        if args.with_translation:
            notice.hold_for_translation = True
    soon = " (already due: the daemon publishes it at its next sweep)" if at <= utcnow() else ""
    print(f"{_label(notice)} scheduled for {fmt_et(at)}{soon}")
    return 0


def cmd_cancel(args: argparse.Namespace, lazy: Any) -> int:
    from csms import service
    from models.session import transaction

    by = identity.acting(lazy, args, PUBLISHER)
    with transaction(lazy.ctx.sessions) as session:
        notice = _find(session, args.notice)
        try:
            service.cancel(session, notice)
        except service.CsmsError as exc:
            raise CommandError(str(exc)) from None
        identity.audit(session, by, "csms.cancel", "notice", notice.id)
    print(f"{_label(notice)} cancelled")
    return 0


def _confirmed() -> bool:
    """Ask on the terminal; without one, refuse (a script must say --yes)."""
    if not sys.stdin.isatty():
        raise CommandError("publishing asks for confirmation: add --yes to publish without asking")
    try:
        return input("Publish it now? [y/N] ").strip().lower() in ("y", "yes", "s", "si", "sí")
    except EOFError:
        return False


def cmd_publish(args: argparse.Namespace, lazy: Any) -> int:
    from csms import guards, service
    from models.base import utcnow
    from models.csms import DONE, PUBLISHING
    from models.session import transaction

    cfg = lazy.config.csms
    by = identity.acting(lazy, args, PUBLISHER)
    with transaction(lazy.ctx.sessions) as session:
        notice = _find(session, args.notice)
        if notice.status == DONE:
            c = service.counts(session, notice.id)
            print(f"{_label(notice)} was already published: {c['sent']} sent, {c['failed']} failed")
            return 0
        if notice.status != PUBLISHING:
            try:
                plan = guards.plan(session, notice, number_start=cfg.number_start)
            except service.CsmsError as exc:
                raise CommandError(str(exc)) from None
            for line in guards.describe_plan(plan):
                print(line)
            if not args.yes and not _confirmed():
                print("not published")
                return 1
        try:
            total = service.start_publish(session, notice, utcnow(), number_start=cfg.number_start,
                                          late_after=cfg.late_after)
        except service.CsmsError as exc:
            raise CommandError(str(exc)) from None
        identity.audit(session, by, "csms.publish", "notice", notice.id, {"number": notice.number, "total": total})
        notice_id, number = notice.id, notice.number
    print(f"CSMS #{number} (notice {notice_id}) publishing to {total} subscriber(s)")
    if args.no_wait:
        print("the daemon sends it (follow it with 'acedesk csms show "
              f"{number}')")
        return 0
    try:
        from daemon.notices import fanout
    except ImportError as exc:
        raise CommandError(f"the fan-out is not available ({exc}); the daemon will send it when it is") from None
    return asyncio.run(_publish_foreground(lazy.ctx, fanout, notice_id, number, total))


async def _publish_foreground(ctx: Any, fanout: Any, notice_id: int, number: int, total: int) -> int:
    from tqdm import tqdm

    from csms import service

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    bar = tqdm(total=total, desc=f"CSMS #{number}", unit="msg", dynamic_ncols=True, file=sys.stderr)

    def show(done: int, failed: int, pending: int) -> None:
        bar.update(max(0, done - bar.n))
        bar.set_postfix(failed=failed, pending=pending, refresh=False)

    def on_progress(p: Any) -> None:
        show(p.sent + p.failed, p.failed, p.pending)

    waited = False
    try:
        while True:
            progress = await fanout.publish(ctx, notice_id, progress=on_progress, stop=stop)
            show(progress.sent + progress.failed, progress.failed, progress.pending)
            if progress.pending == 0 or stop.is_set():
                break
            # Another process (the daemon) holds the lease: follow its progress, take over if it stops.
            if not waited:
                bar.write(f"CSMS #{number} is being sent by another process; following its progress")
                waited = True
            for _ in range(10):
                with ctx.sessions() as session:
                    c = service.counts(session, notice_id)
                show(c["sent"] + c["failed"], c["failed"], c["pending"])
                if c["pending"] == 0 or stop.is_set():
                    break
                await asyncio.sleep(0.5)
            with ctx.sessions() as session:
                if service.counts(session, notice_id)["pending"] == 0:
                    await asyncio.to_thread(_finish, ctx, notice_id)
                    break
    finally:
        bar.close()
        loop.remove_signal_handler(signal.SIGINT)
        loop.remove_signal_handler(signal.SIGTERM)
    with ctx.sessions() as session:
        c = service.counts(session, notice_id)
    if c["pending"]:
        print(f"stopped: CSMS #{number}: {c['sent']} sent, {c['failed']} failed, {c['pending']} pending "
              "(the daemon, or 'acedesk csms publish' again, sends the rest)")
        return 130 if stop.is_set() else 1
    from daemon.notices.scheduler import write_archive

    write_archive(ctx)
    print(f"CSMS #{number} done: {c['sent']} sent, {c['failed']} failed")
    return 0


def _finish(ctx: Any, notice_id: int) -> None:
    from csms import service
    from models.base import utcnow
    from models.session import transaction

    with transaction(ctx.sessions) as session:
        service.finish_if_done(session, notice_id, utcnow())


def _counts_by_notice(session: Any, ids: list[int]) -> dict[int, dict[str, int]]:
    from models.csms import Delivery

    result: dict[int, dict[str, int]] = {i: {"sent": 0, "failed": 0, "pending": 0} for i in ids}
    if ids:
        for notice_id, status, n in session.execute(
                select(Delivery.notice_id, Delivery.status, func.count()).where(Delivery.notice_id.in_(ids))
                .group_by(Delivery.notice_id, Delivery.status)):
            result[notice_id][status] = int(n)
    return result


def _as_dict(notice: Any, counts: dict[str, int]) -> dict[str, Any]:
    def iso(moment: dt.datetime | None) -> str | None:
        return moment.isoformat() if moment else None

    return {"id": notice.id, "number": notice.number, "title": notice.title, "type": notice.type,
            "tags": list(notice.tags), "topics": list(notice.topics), "related": list(notice.related),
            "language": notice.language, "status": notice.status, "late": notice.late,
            "parent_id": notice.parent_id, "translation_of_id": notice.translation_of_id, "event": notice.event,
            "author": notice.author, "created_at": iso(notice.created_at), "scheduled_at": iso(notice.scheduled_at),
            "published_at": iso(notice.published_at), "finished_at": iso(notice.finished_at),
            "total": notice.total, **counts}


def cmd_list(args: argparse.Namespace, lazy: Any) -> int:
    from models.csms import Notice

    with lazy.ctx.sessions() as session:
        query = select(Notice).order_by(Notice.id.desc()).limit(args.limit)
        if args.status:
            query = query.where(Notice.status == args.status)
        notices = list(session.scalars(query))
        counts = _counts_by_notice(session, [n.id for n in notices])
    if args.json:
        for n in notices:
            print(json.dumps(_as_dict(n, counts[n.id])))
        return 0
    if not notices:
        print("no notices")
        return 0
    print(f"{'id':>5}  {'number':<9} {'status':<10} {'when (ET)':<19} {'sent':>7} {'failed':>6} {'pending':>7}  title")
    for n in notices:
        c = counts[n.id]
        when = fmt_et(n.published_at or n.scheduled_at)
        late = " late" if n.late else ""
        print(f"{n.id:>5}  {n.number or '-':<9} {n.status:<10} {when:<19} {c['sent']:>7} {c['failed']:>6} "
              f"{c['pending']:>7}  {n.title[:70]}{late}")
    return 0


def cmd_show(args: argparse.Namespace, lazy: Any) -> int:
    from csms import service
    from csms.render import format_date, format_time_et
    from models.csms import Notice

    with lazy.ctx.sessions() as session:
        notice = _find(session, args.notice)
        counts = service.counts(session, notice.id)
        view = service.view(session, notice)
        children = list(session.scalars(select(Notice).where(Notice.parent_id == notice.id).order_by(Notice.id)))
        versions = list(session.scalars(select(Notice).where(Notice.translation_of_id == notice.id)))
    if args.json:
        data = _as_dict(notice, counts)
        data["reminders"] = [c.id for c in children]
        data["translations"] = [v.id for v in versions]
        print(json.dumps(data))
        return 0

    def when(moment: dt.datetime | None) -> str:
        return f"{format_date(moment)} {format_time_et(moment)}" if moment else "-"

    print(f"{_label(notice)} (id {notice.id}): {notice.title}")
    print(f"  type:      {notice.type}")
    print(f"  tags:      {', '.join(notice.tags) or '-'}")
    print(f"  topics:    {', '.join(notice.topics)}")
    print(f"  language:  {notice.language}" + (f" (version of CSMS #{view.translation_of})"
                                               if view.translation_of else ""))
    if notice.parent_id:
        print(f"  reminder of: {('CSMS #' + str(view.parent)) if view.parent else 'notice ' + str(notice.parent_id)}"
              + (f" ({notice.event.get('kind')} at {when(dt.datetime.fromisoformat(notice.event['at']))})"
                 if notice.event else ""))
    if notice.related:
        print(f"  related:   {', '.join(f'CSMS #{r}' for r in notice.related)}")
    print(f"  status:    {notice.status}" + (" (published late)" if notice.late else ""))
    print(f"  created:   {when(notice.created_at)}")
    print(f"  scheduled: {when(notice.scheduled_at)}")
    print(f"  published: {when(notice.published_at)}")
    print(f"  finished:  {when(notice.finished_at)}")
    print(f"  deliveries: {notice.total} planned, {counts['sent']} sent, {counts['failed']} failed, "
          f"{counts['pending']} pending")
    for c in children:
        print(f"  reminder {c.id}: {c.status}, {fmt_et(c.scheduled_at)}: {c.title}")
    for v in versions:
        print(f"  Spanish version: notice {v.id} ({_label(v)}), {v.status}")
    return 0


def cmd_subscribers_import(args: argparse.Namespace, lazy: Any) -> int:
    from tqdm import tqdm

    from csms import subscribers
    from csms.commands import match_topics
    from csms.service import ensure_topics, topic_names
    from models.session import transaction

    text = read_text_file(args.file)
    by = identity.acting(lazy, args, PUBLISHER)
    rows, problems = subscribers.parse_subscribers_csv(text)
    for problem in problems:
        print(f"{args.file}:{problem.line}: {problem.message} (skipped)", file=sys.stderr)
    _ensure_default_topics(lazy)
    with lazy.ctx.sessions() as session:
        known = topic_names(session)
    # Topic names match existing topics whatever their case or accents; new names become topics.
    new_topics: list[str] = []
    resolved = []
    for line, address, topics, language in rows:
        matched, unknown = match_topics(topics, known + new_topics)
        new_topics += [u for u in unknown if u not in new_topics]
        resolved.append((address, matched + unknown, language))
    if new_topics:
        with transaction(lazy.ctx.sessions) as session:
            ensure_topics(session, new_topics)
        print(f"new topic(s) created: {', '.join(new_topics)}")
    stats = subscribers.ImportStats()
    batch = 1000
    with tqdm(total=len(resolved), desc="importing", unit="row", file=sys.stderr, dynamic_ncols=True) as bar:
        for start in range(0, len(resolved), batch):
            chunk = resolved[start:start + batch]
            with transaction(lazy.ctx.sessions) as session:
                subscribers.import_subscribers(session, chunk, stats)
            bar.update(len(chunk))
    with transaction(lazy.ctx.sessions) as session:
        identity.audit(session, by, "csms.subscribers_import", "subscribers", len(rows),
                       {"created": stats.created, "updated": stats.updated, "bad_rows": len(problems)})
    print(f"subscribers: {stats.created} created, {stats.updated} updated, {stats.unchanged} unchanged, "
          f"{stats.skipped} left alone (unsubscribed or disabled), {len(problems)} bad row(s) skipped")
    return 1 if problems else 0


def cmd_topics(args: argparse.Namespace, lazy: Any) -> int:
    from csms.service import ensure_topics, topic_counts
    from models.session import transaction

    _ensure_default_topics(lazy)
    if args.add:
        with transaction(lazy.ctx.sessions) as session:
            ensure_topics(session, args.add)
    with lazy.ctx.sessions() as session:
        rows = topic_counts(session)
    width = max((len(name) for name, _ in rows), default=10)
    for name, n in rows:
        print(f"{name:<{width}}  {n:>8} subscriber(s)")
    return 0


def cmd_archive(args: argparse.Namespace, lazy: Any) -> int:
    from daemon.notices.scheduler import write_archive

    root, count = write_archive(lazy.ctx)
    print(f"archive of {count} published notice(s) written to {root} (index.html, atom.xml)")
    return 0


# --- subscribers and secrets ----------------------------------------------------------------


def _roster_error(exc: Exception) -> CommandError:
    return CommandError(str(exc))


def cmd_subscribers_list(args: argparse.Namespace, lazy: Any) -> int:
    from csms import roster
    from csms.service import CsmsError
    from models.base import utcnow

    with lazy.ctx.sessions() as session:
        try:
            rows = roster.entries(session, now=utcnow(), window_days=lazy.config.csms.bounce_window_days,
                                  state=args.state, topic=args.topic, search=args.search, limit=args.limit or None)
        except CsmsError as exc:
            raise _roster_error(exc) from None
    if not rows:
        print("no subscribers")
        return 0
    width = max(len(r.email) for r in rows)
    print(f"{'email':<{width}}  {'state':<12} lang  topics")
    for r in rows:
        print(f"{r.email:<{width}}  {r.state:<12} {r.language:<4}  {'; '.join(r.topics) or '-'}")
    print(f"{len(rows)} subscriber(s)")
    return 0


def cmd_subscribers_show(args: argparse.Namespace, lazy: Any) -> int:
    from csms import roster
    from csms.service import CsmsError
    from models.base import utcnow

    with lazy.ctx.sessions() as session:
        try:
            d = roster.detail(session, args.email, now=utcnow(), window_days=lazy.config.csms.bounce_window_days)
        except CsmsError as exc:
            raise _roster_error(exc) from None
    e = d.entry
    print(f"{e.email} (subscriber {e.id})")
    print(f"  state:     {e.state}" + (f" ({e.hard_bounces} hard bounce(s) in "
                                       f"{lazy.config.csms.bounce_window_days} days)" if e.hard_bounces else ""))
    print(f"  language:  {e.language}")
    print(f"  topics:    {'; '.join(e.topics) or '-'}")
    print(f"  notices sent: {d.notices_sent}")
    print("  history:")
    for event in d.history:
        print(f"    {fmt_et(event.at)}  {event.what}")
    return 0


def cmd_subscribers_remove(args: argparse.Namespace, lazy: Any) -> int:
    from csms import roster
    from csms.service import CsmsError
    from models.session import transaction

    by = identity.acting(lazy, args, PUBLISHER)
    if not args.yes:
        if not sys.stdin.isatty():
            raise CommandError("removing asks for confirmation: add --yes to remove without asking")
        if input(f"Remove {args.email} and all their records? [y/N] ").strip().lower() not in ("y", "yes"):
            print("not removed")
            return 1
    with transaction(lazy.ctx.sessions) as session:
        try:
            sid = roster.remove(session, args.email)
        except CsmsError as exc:
            raise _roster_error(exc) from None
        identity.audit(session, by, "csms.subscriber_removed", "subscriber", sid, {"email": args.email.strip().lower()})
    print(f"subscriber {sid} ({args.email.strip().lower()}) removed")
    return 0


def cmd_subscribers_export(args: argparse.Namespace, lazy: Any) -> int:
    from csms import roster
    from models.base import utcnow

    with lazy.ctx.sessions() as session:
        rows = roster.entries(session, now=utcnow(), window_days=lazy.config.csms.bounce_window_days,
                              state=args.state, topic=args.topic)
    text = roster.export_csv(rows)
    if args.out == "-":
        sys.stdout.write(text)
    else:
        try:
            with open(args.out, "w", encoding="utf-8", newline="") as fh:
                fh.write(text)
        except OSError as exc:
            raise CommandError(f"{args.out}: {exc.strerror}") from None
        print(f"{len(rows)} subscriber(s) written to {args.out}", file=sys.stderr)
    return 0


def cmd_secrets_rotate(args: argparse.Namespace, lazy: Any) -> int:
    from daemon.notices import keys

    path, new, kept = keys.rotate(lazy.config, args.keep)
    print(f"new signing secret {new} in {path}; still accepted: {', '.join(kept) or 'none'}")
    print("running instances sign with it within seconds; copy the file to every instance that does not share it")
    return 0


def cmd_secrets_show(args: argparse.Namespace, lazy: Any) -> int:
    from daemon.notices import keys

    signer = keys.load_signer(lazy.config)
    where = keys.secret_path(lazy.config) or f"${lazy.config.csms.secret_env}"
    print(f"signing with {signer.kid}; accepted: {', '.join(signer.key_ids)} ({where})")
    return 0


def cmd_dkim_record(args: argparse.Namespace, lazy: Any) -> int:
    from daemon.notices import keys

    key = keys.dkim_key(lazy.config)
    if key is None:
        raise CommandError("[csms] dkim_key_file is not set: notices go out unsigned")
    record = key.public_record().decode()
    # A DNS character-string holds at most 255 octets: a 2048-bit key spans two.
    chunks = " ".join(f'"{record[i:i + 255]}"' for i in range(0, len(record), 255))
    print(f"{key.selector}._domainkey.{key.domain}. IN TXT {chunks}")
    return 0
