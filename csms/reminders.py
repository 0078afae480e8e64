"""Reminders derived from an event: the morning of a support call ("support
call today at 2:00 p.m. ET"), and N days before a deadline such as an ACH
refund enrolment deadline.  Each becomes a notice of type REMINDER linked to
its parent.  Pure: times in, plans out; the caller stores them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from csms.render import ET, format_date, format_time_et

SUPPORT_CALL = "support_call"
DEADLINE = "deadline"


@dataclass(frozen=True)
class ReminderPlan:
    title: str
    body: str
    #: When to publish it (UTC).
    send_at: dt.datetime
    event: dict[str, str]


def _morning_of(day: dt.date, hour: int) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hour, 0, tzinfo=ET).astimezone(dt.timezone.utc)


def support_call_reminder(parent_title: str, parent_body: str, call_at: dt.datetime, *,
                          reminder_hour: int = 8, language: str = "en") -> ReminderPlan:
    """The reminder sent on the morning of a support call (earlier the same day if the call is early)."""
    local = call_at.astimezone(ET)
    send_at = _morning_of(local.date(), reminder_hour)
    if send_at >= call_at:
        send_at = call_at - dt.timedelta(hours=1)
    when = format_time_et(call_at)
    if language == "es":
        title = f"Llamada de apoyo hoy: {parent_title}"
        lead = f"CBP llevará a cabo una llamada de apoyo hoy a las {when}."
    else:
        title = f"Support Call Today: {parent_title}"
        lead = f"CBP will hold a support call today at {when}."
    body = f"{lead}\n\n* **{format_date(call_at, language)}**\n* **{when}**\n\n{parent_body}"
    return ReminderPlan(title=title, body=body, send_at=send_at,
                        event={"kind": SUPPORT_CALL, "at": call_at.astimezone(dt.timezone.utc).isoformat()})


def deadline_reminders(parent_title: str, parent_body: str, deadline: dt.datetime, days_before: list[int], *,
                       reminder_hour: int = 8, language: str = "en",
                       now: dt.datetime | None = None) -> list[ReminderPlan]:
    """One reminder ``N`` days before ``deadline`` for each N (those already past are left out)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    plans = []
    deadline_day = deadline.astimezone(ET).date()
    for days in sorted(set(days_before), reverse=True):
        send_at = _morning_of(deadline_day - dt.timedelta(days=days), reminder_hour)
        if send_at <= now:
            continue
        date = format_date(deadline, language)
        if language == "es":
            title = f"Recordatorio: faltan {days} días para la fecha límite: {parent_title}"
            lead = f"La fecha límite es el {date}, dentro de {days} días."
        else:
            unit = "day" if days == 1 else "days"
            title = f"Reminder: {days} {unit} until the deadline: {parent_title}"
            lead = f"The deadline is {date}, {days} {unit} from today."
        plans.append(ReminderPlan(title=title, body=f"{lead}\n\n{parent_body}", send_at=send_at,
                                  event={"kind": DEADLINE, "at": deadline.astimezone(dt.timezone.utc).isoformat(),
                                         "days_before": str(days)}))
    return plans
