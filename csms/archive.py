"""The public archive of published notices as static files: one HTML page
per notice (English and Spanish versions alike, each with its headings in the
notice's language), an index in English (``index.html``) and in Spanish
(``index.es.html``) with a search form (the daemon answers ``search?q=`` by
number, title and text from ``index.json``, and picks the index's language
from ``?lang=`` or Accept-Language), and an Atom feed (RFC 4287) of the
latest 100.  Every link is under ``<base_url>/archive/``, where the daemon
serves the folder.  Pure: notices in, ``{relative path: text}`` out; the
daemon writes and serves them.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import jinja2

from csms import markdown
from csms.render import NoticeView, format_date

#: The pages' fixed words, by language (a notice's own words are its own).
WORDS: dict[str, dict[str, str]] = {
    "en": {"notices": "CSMS notices", "all_notices": "All notices", "search_label": "Search by number, title or text:",
           "search": "Search", "found": "{n} notice(s) found.", "number": "Number", "date": "Date", "type": "Type",
           "language": "Language", "title": "Title", "en": "English", "es": "Spanish",
           "other_language": "Versión en español", "version_of": "Version of", "reminder_of": "Reminder of",
           "additional": "Additional Information", "related": "Related", "programs": "Programs Affected"},
    "es": {"notices": "Avisos CSMS", "all_notices": "Todos los avisos",
           "search_label": "Buscar por número, título o texto:", "search": "Buscar",
           "found": "{n} aviso(s) encontrado(s).", "number": "Número", "date": "Fecha", "type": "Tipo",
           "language": "Idioma", "title": "Título", "en": "inglés", "es": "español",
           "other_language": "English version", "version_of": "Versión de", "reminder_of": "Recordatorio de",
           "additional": "Información adicional", "related": "Relacionados", "programs": "Programas afectados"},
}
LANGUAGES = tuple(WORDS)
FEED_SIZE = 100
#: Characters of each notice's text kept in ``index.json`` for the search.
TEXT_CHARS = 20000
_ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).with_name("templates"))),
                          autoescape=True, undefined=jinja2.StrictUndefined)


def notice_path(number: int) -> str:
    return f"notices/{number}.html"


def index_path(language: str) -> str:
    """The index in ``language`` (English is ``index.html``, which a plain ``/archive/`` serves)."""
    return "index.html" if language not in LANGUAGES or language == "en" else f"index.{language}.html"


def words(language: str) -> dict[str, str]:
    return WORDS.get(language, WORDS["en"])


def notice_page(notice: NoticeView) -> str:
    assert notice.number is not None and notice.published_at is not None
    return _ENV.get_template("archive_notice.html.j2").render(
        n=notice, date=format_date(notice.published_at, notice.language), w=words(notice.language),
        index=index_path(notice.language), body_html=jinja2.utils.markupsafe.Markup(markdown.to_html(notice.body)))


def index_page(entries: list[dict], language: str, query: str = "", searched: bool = False) -> str:
    """The index (or a page of search results) with its headings and dates in ``language``."""
    language = language if language in LANGUAGES else "en"
    return _ENV.get_template("archive_index.html.j2").render(
        entries=entries, query=query, searched=searched, lang=language, w=words(language),
        other=index_path("es") if language == "en" else "index.html?lang=en")


def build_archive(notices: list[NoticeView], base_url: str,
                  now: dt.datetime | None = None) -> dict[str, str]:
    """Return every archive file for ``notices`` (published ones; newest first in the index)."""
    published = sorted((n for n in notices if n.number is not None and n.published_at is not None),
                       key=lambda n: (n.published_at, n.number), reverse=True)
    files = {notice_path(n.number): notice_page(n) for n in published}  # type: ignore[arg-type]
    entries = [{"number": n.number, "title": n.title, "type": n.type, "tags": n.tags,
                "text": markdown.to_text(n.body)[:TEXT_CHARS],
                "language": n.language, "date": format_date(n.published_at),  # type: ignore[arg-type]
                "dates": {lang: format_date(n.published_at, lang) for lang in LANGUAGES},  # type: ignore[arg-type]
                "published": n.published_at.isoformat(),  # type: ignore[union-attr]
                "path": notice_path(n.number)} for n in published]  # type: ignore[arg-type]
    files["index.json"] = json.dumps(entries, ensure_ascii=False, indent=1)
    for language in LANGUAGES:
        files[index_path(language)] = index_page(entries, language)
    updated = published[0].published_at if published else (now or dt.datetime.now(dt.timezone.utc))
    files["atom.xml"] = _ENV.get_template("atom.xml.j2").render(
        entries=published[:FEED_SIZE], base=base_url.rstrip("/"), updated=updated.isoformat(),
        paths={n.number: notice_path(n.number) for n in published[:FEED_SIZE]},  # type: ignore[arg-type]
        html={n.number: markdown.to_html(n.body) for n in published[:FEED_SIZE]})
    return files


def search(entries: list[dict], query: str) -> list[dict]:
    """The archive's search: a number (or part of one), or words all found in the title or text."""
    q = query.strip().lower().lstrip("#").removeprefix("csms").strip().lstrip("#").strip()
    words = q.split()
    if not words:
        return []

    def hit(e: dict) -> bool:
        hay = f"{e['title']} {e.get('text', '')}".lower()
        return (q.isdigit() and q in str(e["number"])) or all(w in hay for w in words)

    return [e for e in entries if hit(e)]


def search_page(query: str, found: list[dict], language: str = "en") -> str:
    """The page of search results in ``language`` (links relative to ``<base>/archive/``)."""
    return index_page(found, language, query=query, searched=True)
