"""Knowledge articles (the desk's KMS): which articles each reply links.

An article is one language of one key (``availability-dashboard``, ``en``)
with a title, a URL when there is one, the labels whose replies link it, and
when it was last reviewed.  The shipped set comes from the seeds' resources
(``responders/data/articles.csv``): a URL only where a seed gives it (the
refund CSMS, www.cbp.gov/ace); the resources the seeds name without a link
(the Availability Dashboard, the business process documents, ...) are cited
by the title the seeds give, never by a guessed address.  It is added to the
table once, on first
use; after that the table is the truth: ``acedesk articles import`` adds and
updates, ``retire`` removes an article from every reply without a template
change, and a retired article is never brought back by the shipped set.

Reading CSV (:func:`parse_articles_csv`) and choosing links (:class:`Library`)
are pure; :func:`load_library`, :func:`upsert_articles`, :func:`retire` and
:func:`seed_shipped` work in the caller's session.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from classifiers.labels import LABELS, LANGUAGES
from models.base import utcnow
from models.duties import Article

SHIPPED = Path(__file__).with_name("data") / "articles.csv"
COLUMNS = ("key", "language", "title", "url", "labels", "last_reviewed")
#: Replies that must disclose nothing link nothing either.
NO_LINKS = frozenset({"security_neutral"})
_KEY = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_URL = re.compile(r"^https?://[A-Za-z0-9.-]+(:\d+)?(/[^\s\"'<>]*)?$")


@dataclass(frozen=True)
class ArticleLink:
    """An article as a reply links it."""

    key: str
    language: str
    title: str
    #: None: the seeds name the article but give no address; replies cite it by title.
    url: str | None
    labels: tuple[str, ...] = ()
    last_reviewed: dt.date | None = None


@dataclass(frozen=True)
class RowError:
    line: int
    message: str


def parse_articles_csv(text: str) -> tuple[list[ArticleLink], list[RowError]]:
    """Return the valid rows of an articles CSV and one error per bad row.

    Columns: ``key,language,title,url,labels,last_reviewed``; ``url`` may be
    empty (the article is cited by its title); labels are ``;``-separated
    taxonomy labels, ``last_reviewed`` is ``YYYY-MM-DD`` or empty.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    missing = [c for c in COLUMNS[:5] if c not in header]
    unknown = [h for h in header if h not in COLUMNS]
    if missing or unknown:
        what = f"missing column(s) {', '.join(missing)}" if missing else f"unknown column(s) {', '.join(unknown)}"
        return [], [RowError(1, f"{what}; expected {','.join(COLUMNS)}")]
    reader.fieldnames = header
    rows: list[ArticleLink] = []
    errors: list[RowError] = []
    seen: dict[tuple[str, str], int] = {}
    for record in reader:
        line = reader.line_num
        if None in record:
            errors.append(RowError(line, "too many fields"))
            continue
        values = {k: (record.get(k) or "").strip() for k in COLUMNS}
        if not any(values.values()):
            continue
        try:
            article = _article(values)
        except ValueError as exc:
            errors.append(RowError(line, str(exc)))
            continue
        ident = (article.key, article.language)
        if ident in seen:
            errors.append(RowError(line, f"{article.key} ({article.language}) repeats line {seen[ident]}"))
            continue
        seen[ident] = line
        rows.append(article)
    return rows, errors


def _article(v: dict[str, str]) -> ArticleLink:
    key = v["key"].lower()
    if not _KEY.match(key):
        raise ValueError(f"key {v['key'][:70]!r}: lower-case letters, digits and '-', at most 64")
    language = v["language"].lower()
    if language not in LANGUAGES:
        raise ValueError(f"language {v['language'][:10]!r}: expected {' or '.join(LANGUAGES)}")
    if not v["title"] or len(v["title"]) > 300:
        raise ValueError("title: between 1 and 300 characters")
    if v["url"] and (not _URL.match(v["url"]) or len(v["url"]) > 2000):
        raise ValueError(f"url {v['url'][:80]!r}: expected an http(s) address")
    labels = tuple(dict.fromkeys(x.strip() for x in v["labels"].split(";") if x.strip()))
    bad = [x for x in labels if x not in LABELS]
    if bad or not labels:
        raise ValueError(f"labels {v['labels'][:80]!r}: expected taxonomy labels separated by ';'"
                         + (f" (unknown: {', '.join(bad)})" if bad else ""))
    reviewed = None
    if v["last_reviewed"]:
        try:
            reviewed = dt.date.fromisoformat(v["last_reviewed"])
        except ValueError:
            raise ValueError(f"last_reviewed {v['last_reviewed'][:20]!r}: expected YYYY-MM-DD") from None
    return ArticleLink(key, language, v["title"], v["url"] or None, labels, reviewed)


def shipped_articles() -> list[ArticleLink]:
    """Return the shipped set (the seeds' resources)."""
    rows, errors = parse_articles_csv(SHIPPED.read_text(encoding="utf-8"))
    assert not errors, errors  # a packaging mistake, caught by the tests
    return rows


class Library:
    """The articles in force (not retired), by label and language."""

    def __init__(self, articles: Iterable[ArticleLink] = ()) -> None:
        self.articles = tuple(articles)
        self._by_key: dict[tuple[str, str], ArticleLink] = {(a.key, a.language): a for a in self.articles}

    def get(self, key: str, language: str = "en") -> ArticleLink | None:
        """Return article ``key`` in ``language``, else in English, else None."""
        return self._by_key.get((key, language)) or self._by_key.get((key, "en"))

    def for_label(self, label: str, language: str) -> list[ArticleLink]:
        """Return the articles serving ``label``, each in ``language`` where it exists, else English."""
        keys = dict.fromkeys(a.key for a in self.articles if label in a.labels)
        found = (self.get(k, language) for k in keys)
        return [a for a in found if a is not None and label in a.labels]

    def for_reply(self, template: str | None, label: str, language: str,
                  extra: Sequence[str] = ()) -> list[ArticleLink]:
        """Return what a reply links: the articles of its label (a template named for a label is
        that label; acknowledgements link the message's label), then ``extra`` keys an analyst added.
        A reply that must disclose nothing links nothing."""
        if template in NO_LINKS:
            return []
        topic = template if template in LABELS else label
        links = self.for_label(topic, language)
        for key in extra:
            article = self.get(key, language)
            if article is not None and article not in links:
                links.append(article)
        return links


def links_context(links: Sequence[ArticleLink]) -> list[dict[str, str]]:
    """Return the template data of ``links`` (titles and URLs are data, autoescaped in HTML);
    ``url`` is empty for an article cited by title only."""
    return [{"key": a.key, "title": a.title, "url": a.url or ""} for a in links]


def _link(a: Article) -> ArticleLink:
    return ArticleLink(a.key, a.language, a.title, a.url, tuple(a.labels or ()), a.last_reviewed)


def load_library(session: Session) -> Library:
    """Return the articles in force (one small query; the table holds tens of rows)."""
    return Library(_link(a) for a in session.scalars(
        select(Article).where(Article.retired_at.is_(None)).order_by(Article.id)))


def upsert_articles(session: Session, rows: Sequence[ArticleLink], source: str = "import") -> tuple[int, int]:
    """Insert or update ``rows`` by (key, language); return ``(created, updated)``.

    A retired article stays retired: an import corrects it, it does not bring it back.
    """
    existing = {(a.key, a.language): a for a in session.scalars(select(Article))}
    created = updated = 0
    now = utcnow()
    for r in rows:
        fields = dict(title=r.title, url=r.url, labels=list(r.labels), last_reviewed=r.last_reviewed)
        row = existing.get((r.key, r.language))
        if row is None:
            session.add(Article(key=r.key, language=r.language, source=source, updated_at=now, **fields))
            created += 1
        elif any(getattr(row, k) != v for k, v in fields.items()):
            for k, v in fields.items():
                setattr(row, k, v)
            row.updated_at = now
            updated += 1
    session.flush()
    return created, updated


def seed_shipped(session: Session) -> int:
    """Add the shipped articles that were never in the table; return how many (0 after the first time)."""
    have = {(key, language) for key, language in session.execute(select(Article.key, Article.language))}
    missing = [a for a in shipped_articles() if (a.key, a.language) not in have]
    if not missing:
        return 0
    try:
        with session.begin_nested():
            created, _ = upsert_articles(session, missing, source="shipped")
    except IntegrityError:  # another process seeded them at the same moment
        return 0
    return created


def find(session: Session, key: str, language: str | None = None) -> list[Article]:
    """Return the rows of article ``key`` (one language, or all)."""
    query = select(Article).where(Article.key == key.lower()).order_by(Article.language)
    if language:
        query = query.where(Article.language == language.lower())
    return list(session.scalars(query))


def retire(session: Session, key: str, by: str, language: str | None = None) -> list[Article]:
    """Retire article ``key`` (every language, or one); return the rows retired now."""
    now = utcnow()
    done = []
    for row in find(session, key, language):
        if row.retired_at is None:
            row.retired_at, row.retired_by, row.updated_at = now, by, now
            done.append(row)
    return done
