"""Desk hours: when the desk is closed, when analysts are back, and the
first-response clock that does not run while the desk is closed.

The desk answers 24 hours a day except weekly closed windows in local wall
time (seed 000: Saturday 10 PM to Sunday 5 AM ET), configured in ``[hours]``.
Windows are computed in the desk's zone with :mod:`zoneinfo` (``tzdata``
supplies the database where the system has none) and compared in UTC, so a
window that spans a daylight-saving change is as long as the clock on the
wall says (one hour shorter in March, longer in November), and "back at
5 AM" means 5 AM local time on either side of the change.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WHEN = re.compile(r"^\s*([A-Za-z]{3})[A-Za-z]*\s+(\d{1,2}):(\d{2})\s*$")

_DAY_NAMES = {
    "en": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "es": ("lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo"),
}
_MONTH_NAMES = {
    "en": ("January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December"),
    "es": ("enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto", "septiembre",
           "octubre", "noviembre", "diciembre"),
}


@dataclass(frozen=True)
class ClosedWindow:
    """One weekly closed window, e.g. ``start = "Sat 22:00"``, ``end = "Sun 05:00"`` (local time)."""

    start: str
    end: str

    def __post_init__(self) -> None:
        parse_when(self.start)
        parse_when(self.end)


@dataclass(frozen=True)
class HoursConfig:
    """The ``[hours]`` section."""

    #: IANA zone of the desk's wall clock.
    timezone: str = "America/New_York"
    #: How replies name that zone, in English and in Spanish.
    zone_name: str = "ET"
    zone_name_es: str = "hora del Este"
    #: Weekly windows when no analyst is at the desk; empty = open around the clock.
    closed: list[ClosedWindow] = field(default_factory=lambda: [ClosedWindow("Sat 22:00", "Sun 05:00")])

    def __post_init__(self) -> None:
        zone(self.timezone)


def zone(name: str) -> ZoneInfo:
    """Return the zone ``name``; raise ValueError naming it when it does not exist."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"timezone {name!r}: not an IANA time zone (e.g. 'America/New_York')") from None


def parse_when(text: str) -> tuple[int, dt.time]:
    """Return ``(weekday, time)`` of ``"Sat 22:00"``; raise ValueError with the expected shape."""
    m = _WHEN.match(text or "")
    day = m.group(1).lower() if m else ""
    if not m or day not in DAYS or int(m.group(2)) > 23 or int(m.group(3)) > 59:
        raise ValueError(f"{text!r}: expected a weekday and a 24-hour time, e.g. 'Sat 22:00'")
    return DAYS.index(day), dt.time(int(m.group(2)), int(m.group(3)))


class DeskHours:
    """The desk's closed windows in its zone; every method takes and returns aware datetimes."""

    def __init__(self, cfg: HoursConfig | None = None) -> None:
        cfg = cfg or HoursConfig()
        self.zone = zone(cfg.timezone)
        self.zone_name = cfg.zone_name
        self.zone_name_es = cfg.zone_name_es
        self.windows = [(parse_when(w.start), parse_when(w.end)) for w in cfg.closed]

    def closures(self, start: dt.datetime, end: dt.datetime) -> Iterator[tuple[dt.datetime, dt.datetime]]:
        """Yield the closed windows (UTC, in order) that overlap ``[start, end)``."""
        found = []
        first = start.astimezone(self.zone).date() - dt.timedelta(days=8)
        days = (end - start).days + 10
        for (start_day, start_time), (end_day, end_time) in self.windows:
            span = (end_day - start_day) % 7
            if span == 0 and end_time <= start_time:
                span = 7
            for i in range(days):
                day = first + dt.timedelta(days=i)
                if day.weekday() != start_day:
                    continue
                closes = dt.datetime.combine(day, start_time, self.zone).astimezone(dt.timezone.utc)
                opens = dt.datetime.combine(day + dt.timedelta(days=span), end_time,
                                            self.zone).astimezone(dt.timezone.utc)
                if opens > start and closes < end:
                    found.append((closes, opens))
        yield from sorted(found)

    def reopens_at(self, at: dt.datetime) -> dt.datetime | None:
        """Return when analysts are back if the desk is closed at ``at``, else None."""
        for closes, opens in self.closures(at, at + dt.timedelta(seconds=1)):
            if closes <= at < opens:
                return self.reopens_at(opens) or opens  # back-to-back windows
        return None

    def is_open(self, at: dt.datetime) -> bool:
        return self.reopens_at(at) is None

    def due(self, start: dt.datetime, hours: float) -> dt.datetime:
        """Return when ``hours`` of open desk time have passed since ``start``."""
        left = dt.timedelta(hours=hours)
        at = start.astimezone(dt.timezone.utc)
        while True:
            at = self.reopens_at(at) or at
            # The next closure that starts after ``at`` (searching a fortnight at a time).
            upcoming = next((c for c in self.closures(at, at + dt.timedelta(days=15)) if c[0] > at), None)
            if upcoming is None or at + left <= upcoming[0]:
                return at + left
            left -= upcoming[0] - at
            at = upcoming[0]

    def open_hours_between(self, start: dt.datetime, end: dt.datetime) -> float:
        """Return the open desk time between ``start`` and ``end``, in hours."""
        if end <= start:
            return 0.0
        closed = dt.timedelta()
        for closes, opens in self.closures(start, end):
            closed += min(opens, end) - max(closes, start)
        return (end - start - closed).total_seconds() / 3600

    def local(self, at: dt.datetime) -> dt.datetime:
        return at.astimezone(self.zone)

    def describe_time(self, at: dt.datetime, language: str = "en") -> str:
        """Return ``at`` for a reader: ``Sunday, December 6 at 5:00 AM ET`` (or in Spanish)."""
        t = self.local(at)
        if language == "es":
            return (f"el {_DAY_NAMES['es'][t.weekday()]} {t.day} de {_MONTH_NAMES['es'][t.month - 1]} "
                    f"a las {_clock_es(t.time())} ({self.zone_name_es})")
        hour = t.hour % 12 or 12
        return (f"{_DAY_NAMES['en'][t.weekday()]}, {_MONTH_NAMES['en'][t.month - 1]} {t.day} at "
                f"{hour}:{t.minute:02d} {'AM' if t.hour < 12 else 'PM'} {self.zone_name}")

    def describe_hours(self, language: str = "en") -> str:
        """Return when the desk answers, for the signature of every reply."""
        if not self.windows:
            return "las 24 horas del día, todos los días" if language == "es" else "24 hours a day, every day"
        parts = []
        for (sd, st), (ed, et) in self.windows:
            if language == "es":
                parts.append(f"del {_DAY_NAMES['es'][sd]} a las {_clock_es(st)} al {_DAY_NAMES['es'][ed]} "
                             f"a las {_clock_es(et)}")
            else:
                parts.append(f"{_DAY_NAMES['en'][sd]} {_clock_en(st)} to {_DAY_NAMES['en'][ed]} {_clock_en(et)}")
        joined = (" y " if language == "es" else " and ").join(parts)
        if language == "es":
            return f"las 24 horas del día, excepto {joined} ({self.zone_name_es})"
        return f"24 hours a day, except {joined} {self.zone_name}"


def _clock_en(t: dt.time) -> str:
    hour = t.hour % 12 or 12
    suffix = "AM" if t.hour < 12 else "PM"
    return f"{hour} {suffix}" if t.minute == 0 else f"{hour}:{t.minute:02d} {suffix}"


def _clock_es(t: dt.time) -> str:
    hour = t.hour % 12 or 12
    suffix = "a. m." if t.hour < 12 else "p. m."
    return f"{hour} {suffix}" if t.minute == 0 else f"{hour}:{t.minute:02d} {suffix}"


def reply_context(hours: DeskHours, now: dt.datetime, language: str) -> dict[str, object]:
    """Return what every reply template says about the desk's hours at ``now``."""
    back = hours.reopens_at(now)
    return {
        "desk_hours": hours.describe_hours(language),
        "desk_closed": back is not None,
        "back_at": hours.describe_time(back, language) if back else "",
    }
