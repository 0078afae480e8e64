"""The public archive of published notices as static files: one HTML page
per notice (English and Spanish versions alike), an index with a search form
(the daemon answers ``search?q=`` by number, title and text from
``index.json``), and an Atom feed (RFC 4287) of the latest 100.  Every link
is under ``<base_url>/archive/``, where the daemon serves the folder.  Pure:
notices in, ``{relative path: text}`` out; the daemon writes and serves them.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import jinja2

from csms import markdown
from csms.render import NoticeView, format_date

FEED_SIZE = 100
#: Characters of each notice's text kept in ``index.json`` for the search.
TEXT_CHARS = 20000
_ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).with_name("templates"))),
                          autoescape=True, undefined=jinja2.StrictUndefined)


def notice_path(number: int) -> str:
    return f"notices/{number}.html"


def notice_page(notice: NoticeView) -> str:
    assert notice.number is not None and notice.published_at is not None
    return _ENV.get_template("archive_notice.html.j2").render(
        n=notice, date=format_date(notice.published_at, notice.language),
        body_html=jinja2.utils.markupsafe.Markup(markdown.to_html(notice.body)))


def build_archive(notices: list[NoticeView], base_url: str,
                  now: dt.datetime | None = None) -> dict[str, str]:
    """Return every archive file for ``notices`` (published ones; newest first in the index)."""
    published = sorted((n for n in notices if n.number is not None and n.published_at is not None),
                       key=lambda n: (n.published_at, n.number), reverse=True)
    files = {notice_path(n.number): notice_page(n) for n in published}  # type: ignore[arg-type]
    entries = [{"number": n.number, "title": n.title, "type": n.type, "tags": n.tags,
                "text": markdown.to_text(n.body)[:TEXT_CHARS],
                "language": n.language, "date": format_date(n.published_at),  # type: ignore[arg-type]
                "published": n.published_at.isoformat(),  # type: ignore[union-attr]
                "path": notice_path(n.number)} for n in published]  # type: ignore[arg-type]
    files["index.json"] = json.dumps(entries, ensure_ascii=False, indent=1)
    files["index.html"] = _ENV.get_template("archive_index.html.j2").render(entries=entries, query="",
                                                                          searched=False)
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


def search_page(query: str, found: list[dict]) -> str:
    """The page of search results (links relative to ``<base>/archive/``)."""
    return _ENV.get_template("archive_index.html.j2").render(entries=found, query=query, searched=True)
