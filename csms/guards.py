"""The guard rails around publishing, shared by the command line and the web
console: what a communications officer must see or confirm before a notice
goes to thousands of people, and what is refused outright.

* a schedule time in the past is refused unless the caller says it is meant
  (``late_ok``): a mistyped year must not send a notice within seconds;
* before publishing, :func:`describe_plan` says the number the notice will
  take, its topics and the exact recipients per language version, for the
  caller to confirm;
* a notice nobody would receive is refused before any number is used, and a
  notice held for its translation is refused until one exists
  (:func:`check_publishable`; :func:`csms.service.start_publish` enforces
  both again inside its transaction);
* a preview shows the date the notice will carry and what the sanitiser
  removed from the body (:func:`preview`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy.orm import Session

from csms import markdown, render, service
from csms.render import Rendered, format_date, format_time_et
from csms.service import CsmsError, PublishPlan
from models.csms import Notice

LANGUAGE_NAMES = {"en": "English", "es": "Spanish"}

#: A schedule time this far in the past is still "now" (a slow typist), not a mistake.
GRACE = dt.timedelta(minutes=2)


def check_schedule_time(at: dt.datetime, now: dt.datetime, *, late_ok: bool) -> None:
    """Refuse a publication time in the past unless ``late_ok``.

    Raises:
        CsmsError: ``at`` is in the past, saying how far (a mistyped year shows as ~365 days).
    """
    if at >= now - GRACE or late_ok:
        return
    late = now - at
    days = late.days
    ago = f"{days} days" if days >= 2 else f"{int(late.total_seconds() // 3600)} h {int(late.seconds // 60) % 60} min"
    raise CsmsError(f"{format_date(at)} {format_time_et(at)} is in the past ({ago} ago): check the date, or add "
                    "--late-ok to publish it now, flagged late")


def check_publishable(plan: PublishPlan) -> None:
    """Refuse what must not be published.

    Raises:
        CsmsError: held for a translation that does not exist yet, or nobody would receive it.
    """
    if plan.waiting_for_translation:
        raise CsmsError(f"notice {plan.notice_id} is held until its translation exists (--with-translation): "
                        f"create it with 'acedesk csms create ... --language es --translation-of {plan.notice_id}'")
    if plan.total == 0:
        raise CsmsError(f"nobody would receive notice {plan.notice_id}: no active subscriber of "
                        f"{', '.join(plan.topics)} (nothing was published and no number was used)")


def describe_plan(plan: PublishPlan) -> list[str]:
    """The lines a person reads before confirming a publication."""
    lines = []
    for i, (notice_id, language, number, title) in enumerate(plan.versions):
        name = LANGUAGE_NAMES.get(language, language)
        lead = "Publish" if i == 0 else "   with"
        lines.append(f"{lead} CSMS #{number} ({name}, notice {notice_id}): {title}")
    lines.append(f"Topics: {', '.join(plan.topics)}")
    per = ", ".join(f"{n:,} in {LANGUAGE_NAMES.get(lang, lang)}" for lang, n in plan.recipients.items())
    lines.append(f"Recipients: {plan.total:,} ({per})")
    return lines


def plan(session: Session, notice: Notice, *, number_start: int) -> PublishPlan:
    """:func:`csms.service.publish_plan`, checked: what publishing would do, if it may be done."""
    result = service.publish_plan(session, notice, number_start=number_start)
    check_publishable(result)
    return result


@dataclass(frozen=True)
class Preview:
    """A notice as a subscriber would read it, and what an author should know about it."""

    rendered: Rendered
    #: The date the notice will carry (its schedule, or today for a draft).
    date: str
    #: What the sanitiser removed from the body ("<script> element", "onclick attribute" ...).
    removed: list[str]
    #: Drafts have no number until they are published.
    label: str


def preview(session: Session, notice: Notice, *, email: str, unsubscribe_url: str, manage_url: str,
            now: dt.datetime) -> Preview:
    """Render ``notice`` (a draft too, by id) for a sample recipient."""
    view = service.view(session, notice)
    when = view.published_at or now
    rendered = render.render_for(view, email, ", ".join(view.topics), unsubscribe_url, manage_url)
    label = f"CSMS #{notice.number}" if notice.number else f"draft {notice.id} (its number is given when it is published)"
    return Preview(rendered, f"{format_date(when, notice.language)}", markdown.removed(notice.body), label)
