"""Knowledge articles for admins: what each label's replies link, in each
language, with when it was last reviewed; import a CSV (pasted) and retire an
article so that no reply links it from now on.  Every change is a
:mod:`responders.articles` function, audited under the admin's name."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from classifiers.labels import LABELS
from daemon.web.app import web_of
from daemon.web.auth import audit, require
from models.analysts import ADMIN
from models.duties import Article
from responders.articles import find, parse_articles_csv, retire, seed_shipped, upsert_articles


def _back(msg: str) -> Response:
    return RedirectResponse(f"/articles?{urlencode({'msg': msg})}", 303)


async def articles_page(request: Request) -> Response:
    await require(request, ADMIN)
    web = web_of(request)
    label = request.query_params.get("label", "")

    def load(session: Session) -> list[Article]:
        seed_shipped(session)
        rows = list(session.scalars(select(Article).order_by(Article.retired_at.is_not(None), Article.key,
                                                             Article.language)))
        for row in rows:
            session.expunge(row)
        return [a for a in rows if not label or label in (a.labels or [])]

    rows = await web.write(load)
    return web.page(request, "articles.html", rows=rows, labels=LABELS, label=label)


async def retire_article(request: Request) -> Response:
    who = await require(request, ADMIN)
    key = request.path_params["key"]

    def change(session: Session) -> list[str]:
        if not find(session, key):
            raise HTTPException(404, f"no article {key}")
        done = [a.language for a in retire(session, key, who.name)]
        if done:
            audit(session, who, "article.retire", "article", key, {"languages": done})
        return done

    done = await web_of(request).write(change)
    return _back(f"{key} retired ({', '.join(done)}): replies no longer link it." if done
                 else f"{key} was already retired.")


async def import_articles(request: Request) -> Response:
    who = await require(request, ADMIN)
    text = str((await request.form()).get("csv", ""))
    rows, errors = parse_articles_csv(text)
    if errors:
        return _back("Nothing imported: " + "; ".join(f"line {e.line}: {e.message}" for e in errors[:5]))

    def load(session: Session) -> tuple[int, int]:
        created, updated = upsert_articles(session, rows)
        audit(session, who, "article.import", "article", "-", {"created": created, "updated": updated})
        return created, updated

    created, updated = await web_of(request).write(load)
    return _back(f"{created} article(s) added, {updated} updated.")


def routes() -> list[Route]:
    return [
        Route("/articles", articles_page),
        Route("/articles/import", import_articles, methods=["POST"]),
        Route("/articles/{key}/retire", retire_article, methods=["POST"]),
    ]


__all__: list[Any] = ["routes"]
