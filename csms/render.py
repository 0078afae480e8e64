"""Rendering a notice through the Jinja2 templates (text and HTML) into what a
subscriber reads: the header block (number, date in ET, tags, type), the
body, "Additional Information", programs affected, and the per-recipient
footer ("You are subscribed to ...", unsubscribe and preferences links).

Rendering is done **once per notice** with marker strings standing in for
the per-recipient values; :mod:`csms.message` splices each recipient's values
into the bytes.  :func:`render_for` renders for one recipient (preview, tests).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo

import jinja2
from markupsafe import Markup

from csms import markdown

ET = ZoneInfo("America/New_York")
TEMPLATES = Path(__file__).with_name("templates")

#: Per-recipient fields, in the order the markers are numbered.
RECIPIENT_FIELDS = ("email", "topics", "unsubscribe_url", "manage_url")
#: Markers: NUL never appears in rendered text, and autoescape leaves it alone.
MARKERS = {name: f"\x00{i}\x00" for i, name in enumerate(RECIPIENT_FIELDS)}

LABELS = {
    "en": {
        "type": "Type", "additional": "Additional Information", "programs": "Programs Affected",
        "related": "Related notices", "subscribed_to": "You are subscribed to",
        "unsubscribe": "Unsubscribe", "manage": "Manage your preferences",
        "sent_to": "This message was sent to", "by": "by", "sender": "U.S. Customs and Border Protection",
        "translation_of": "This is the Spanish version of", "reminder_of": "This is a reminder of",
    },
    "es": {
        "type": "Tipo", "additional": "Información adicional", "programs": "Programas afectados",
        "related": "Avisos relacionados", "subscribed_to": "Usted está suscrito a",
        "unsubscribe": "Cancelar la suscripción", "manage": "Administrar sus preferencias",
        "sent_to": "Este mensaje fue enviado a", "by": "por",
        "sender": "la Oficina de Aduanas y Protección Fronteriza de los Estados Unidos",
        "translation_of": "Esta es la versión en español de", "reminder_of": "Este es un recordatorio de",
    },
}

_DAYS_ES = ("lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo")
_MONTHS_ES = ("enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto", "septiembre",
              "octubre", "noviembre", "diciembre")
_DAYS_EN = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS_EN = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
              "October", "November", "December")


@dataclass(frozen=True)
class NoticeView:
    """What rendering needs of a notice: plain data, no database."""

    number: int | None
    title: str
    type: str
    body: str
    topics: list[str]
    tags: list[str] = field(default_factory=list)
    related: list[int] = field(default_factory=list)
    language: str = "en"
    #: Publication time (UTC); shown as a date in ET.  None: not published yet (preview).
    published_at: dt.datetime | None = None
    translation_of: int | None = None
    parent: int | None = None
    author: str = ""

    @property
    def number_label(self) -> str:
        return str(self.number) if self.number is not None else "(number assigned at publication)"

    @property
    def subject(self) -> str:
        """``CSMS# <number> - <title>``, the subject line of the real notices."""
        return f"CSMS# {self.number_label} - {self.title}"


@dataclass(frozen=True)
class Rendered:
    """A notice rendered once: text and HTML with the recipient markers in them."""

    subject: str
    text: str
    html: str


def to_et(moment: dt.datetime) -> dt.datetime:
    """Return ``moment`` (aware) in US Eastern time."""
    return moment.astimezone(ET)


def format_date(moment: dt.datetime, language: str = "en") -> str:
    """``Wednesday, February 11, 2026`` (or the Spanish form), the date in ET."""
    local = to_et(moment)
    if language == "es":
        return f"{_DAYS_ES[local.weekday()]}, {local.day} de {_MONTHS_ES[local.month - 1]} de {local.year}"
    return f"{_DAYS_EN[local.weekday()]}, {_MONTHS_EN[local.month - 1]} {local.day}, {local.year}"


def format_time_et(moment: dt.datetime) -> str:
    """``2:00 p.m. ET``: the time style of CSMS notices."""
    local = to_et(moment)
    hour = local.hour % 12 or 12
    suffix = "a.m." if local.hour < 12 else "p.m."
    return f"{hour}:{local.minute:02d} {suffix} ET"


def _env() -> tuple[jinja2.Environment, jinja2.Environment]:
    loader = jinja2.FileSystemLoader(str(TEMPLATES))
    text_env = jinja2.Environment(loader=loader, autoescape=False, undefined=jinja2.StrictUndefined,
                                  keep_trailing_newline=True)
    html_env = jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined,
                                  keep_trailing_newline=True)
    return text_env, html_env


_TEXT_ENV, _HTML_ENV = _env()


def render(notice: NoticeView, recipient: dict[str, str] | None = None) -> Rendered:
    """Render ``notice``; with no ``recipient`` the per-recipient values are :data:`MARKERS`."""
    values = recipient if recipient is not None else MARKERS
    labels = LABELS.get(notice.language, LABELS["en"])
    when = notice.published_at or dt.datetime.now(dt.timezone.utc)
    context = {
        "n": notice, "t": labels, "date": format_date(when, notice.language),
        "translation_of": notice.translation_of, "parent": notice.parent,
        "recipient": values,
    }
    text = _TEXT_ENV.get_template("notice.txt.j2").render(
        body_text=markdown.to_text(notice.body), **context)
    html = _HTML_ENV.get_template("notice.html.j2").render(
        body_html=Markup(markdown.to_html(notice.body)), **context)
    return Rendered(subject=notice.subject, text=text, html=html)


def render_for(notice: NoticeView, email: str, topics: str, unsubscribe_url: str = "",
               manage_url: str = "") -> Rendered:
    """Render ``notice`` for one recipient (previews and tests; the fan-out splices instead)."""
    return render(notice, {"email": email, "topics": topics, "unsubscribe_url": unsubscribe_url,
                           "manage_url": manage_url})
