"""The subscribers' pages, reached from a notice's links without logging in:
one-click unsubscribe (RFC 8058), the preferences page, and the confirmation
of a request made by mail.  Each link carries a signed token naming the
subscriber or the request; a forged, expired or misused one changes nothing.

  GET  /u/<token>            a page with a button (a GET never unsubscribes: mail scanners follow links);
                             with ?manage=1 the subscriber's topics as checkboxes
  POST /u/<token>            List-Unsubscribe=One-Click: unsubscribe from everything;
                             action=update&topic=...: the topics chosen on the preferences page
  GET  /c/<token>            a page with a button to confirm a request
  POST /c/<token>            confirm it
  GET  /archive/search?q=    the archive's search by number, title and text (the files are a mount)
  GET  /archive/             the archive's index in the visitor's language (?lang=, Accept-Language)

Pages are in the subscriber's language (English or Spanish), ``?lang=en|es``
switches, and every page links to the other language; refusals are pages in
the visitor's language too.  The preferences page also sets the language of
the notices; its POST carries a field bound to the link (CSRF) and is refused
when a browser says it came from another site.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from csms import archive, service, subscriptions
from csms.tokens import CONFIRM, UNSUBSCRIBE, BadToken
from daemon.web.app import web_of
from models.base import utcnow

log = logging.getLogger("acedesk.csms")

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,200}\.[A-Za-z0-9_-]{1,100}$")

#: The pages' words, by language.
WORDS = {
    "en": {
        "unsub_title": "Unsubscribe from CSMS notices",
        "receives": "{email} receives CSMS notices about: {topics}.",
        "receives_none": "{email} is not subscribed to any CSMS topic.",
        "press": "Press the button to stop receiving all CSMS notices.",
        "unsubscribe": "Unsubscribe",
        "not_subscribed": "This address is not subscribed to CSMS notices.",
        "unsubscribed_title": "Unsubscribed",
        "no_more": "{email} will receive no more CSMS notices.",
        "prefs_title": "Your CSMS preferences",
        "prefs_intro": "Topics {email} receives CSMS notices about:",
        "save": "Save",
        "unsub_all": "Unsubscribe from everything",
        "saved_title": "Preferences saved",
        "now_receives": "{email} now receives CSMS notices about: {topics}.",
        "confirm_title": "Confirm your CSMS request",
        "confirm_text": "Confirm that {email} wants to {what}: {topics}.",
        "subscribe": "subscribe to", "unsubscribe_from": "unsubscribe from", "all_topics": "all topics",
        "confirm": "Confirm",
        "confirmed_title": "Confirmed",
        "receives_nothing": "{email} receives no CSMS notices.",
        "manage": "Manage your preferences",
        "language": "Language of the notices:",
        "now_receives_in": "{email} now receives CSMS notices about: {topics}, in {language}.",
        "or_choose": "Or choose your topics and language instead",
        "other_language": "Versión en español",
        "refused_title": "This link cannot be used",
        "bad_link": "This link is not valid ({reason}). Nothing was changed.",
        "unusable": "This confirmation cannot be used: {reason}. Nothing was changed.",
        "unknown_confirmation": "This confirmation is unknown. Nothing was changed.",
        "unknown_address": "This address is not known here. Nothing was changed.",
        "stale_form": "This form is out of date; open the link in your notice again. Nothing was changed.",
        "forged token": "it was altered", "expired token": "it has expired", "malformed token": "it is damaged",
        "token for another purpose": "it is meant for something else", "already confirmed": "it was already used",
        "confirmation expired": "it has expired", "no such confirmation": "it is unknown",
    },
    "es": {
        "unsub_title": "Cancelar la suscripción a los avisos CSMS",
        "receives": "{email} recibe avisos CSMS sobre: {topics}.",
        "receives_none": "{email} no está suscrito a ningún tema de CSMS.",
        "press": "Pulse el botón para dejar de recibir todos los avisos CSMS.",
        "unsubscribe": "Cancelar la suscripción",
        "not_subscribed": "Esta dirección no está suscrita a los avisos CSMS.",
        "unsubscribed_title": "Suscripción cancelada",
        "no_more": "{email} no recibirá más avisos CSMS.",
        "prefs_title": "Sus preferencias de CSMS",
        "prefs_intro": "Temas sobre los que {email} recibe avisos CSMS:",
        "save": "Guardar",
        "unsub_all": "Cancelar todas las suscripciones",
        "saved_title": "Preferencias guardadas",
        "now_receives": "{email} ahora recibe avisos CSMS sobre: {topics}.",
        "confirm_title": "Confirme su solicitud de CSMS",
        "confirm_text": "Confirme que {email} desea {what}: {topics}.",
        "subscribe": "suscribirse a", "unsubscribe_from": "cancelar la suscripción a", "all_topics": "todos los temas",
        "confirm": "Confirmar",
        "confirmed_title": "Confirmado",
        "receives_nothing": "{email} no recibe avisos CSMS.",
        "manage": "Administrar sus preferencias",
        "language": "Idioma de los avisos:",
        "now_receives_in": "{email} ahora recibe avisos CSMS sobre: {topics}, en {language}.",
        "or_choose": "O elija sus temas y su idioma",
        "other_language": "English version",
        "refused_title": "Este enlace no se puede usar",
        "bad_link": "Este enlace no es válido ({reason}). No se cambió nada.",
        "unusable": "Esta confirmación no se puede usar: {reason}. No se cambió nada.",
        "unknown_confirmation": "Esta confirmación no existe. No se cambió nada.",
        "unknown_address": "Esta dirección no se conoce aquí. No se cambió nada.",
        "stale_form": "Este formulario está desactualizado; abra de nuevo el enlace de su aviso. No se cambió nada.",
        "forged token": "fue alterado", "expired token": "venció", "malformed token": "está dañado",
        "token for another purpose": "es para otro fin", "already confirmed": "ya se usó",
        "confirmation expired": "venció", "no such confirmation": "no existe",
    },
}


LANGUAGES = {"en": "English", "es": "Español"}


def words(language: str) -> dict[str, str]:
    return WORDS.get(language, WORDS["en"])


def language_of(request: Request, preferred: str | None = None) -> str:
    """The page's language: ``?lang=``, else the subscriber's, else the browser's."""
    for candidate in (request.query_params.get("lang"), preferred):
        if candidate in WORDS:
            return candidate  # type: ignore[return-value]
    return "es" if request.headers.get("accept-language", "").lower().startswith("es") else "en"


def _switch(request: Request, language: str) -> str:
    """This page in the other language (``manage`` kept)."""
    other = "es" if language == "en" else "en"
    return request.url.path + ("?manage=1&lang=" if "manage" in request.query_params else "?lang=") + other


def _refuse(request: Request, key: str, status: int = 400, preferred: str | None = None, **values: str) -> Response:
    """A refusal as a page in the visitor's language (autoescaped: nothing of the request becomes markup)."""
    language = language_of(request, preferred)
    w = words(language)
    if "reason" in values:
        values["reason"] = w.get(values["reason"], values["reason"])
    return _page(request, language, w["refused_title"], [w[key].format(**values)], status=status)


def _subject(request: Request, purpose: str) -> int | Response:
    token = request.path_params["token"]
    if not _TOKEN.match(token):
        return PlainTextResponse("not found\n", 404)
    try:
        return web_of(request).signer.check(purpose, token)
    except BadToken as exc:
        log.info("CSMS endpoint: refused %s /%s/: %s", request.method, purpose, exc)
        return _refuse(request, "bad_link", reason=str(exc))


def _page(request: Request, language: str, title: str, paragraphs: list[str], *, button: str = "",
          hidden: dict[str, str] | None = None, topics: list[tuple[str, bool]] | None = None,
          links: list[tuple[str, str]] | None = None, current: str = "", csrf: str = "",
          status: int = 200) -> Response:
    return web_of(request).page(request, "public.html", status, lang=language, title=title, paragraphs=paragraphs,
                                button=button, hidden=hidden or {}, topics=topics, w=words(language),
                                links=links or [], languages=list(LANGUAGES.items()), current=current, csrf=csrf,
                                switch=_switch(request, language))


async def unsubscribe_page(request: Request) -> Response:
    subject = _subject(request, UNSUBSCRIBE)
    if isinstance(subject, Response):
        return subject
    web = web_of(request)
    state = await web.read(lambda s: subscriptions.subscriber_state(s, subject))
    if state is None:
        language = language_of(request)
        return _page(request, language, words(language)["unsub_title"], [words(language)["not_subscribed"]])
    language = language_of(request, state.language)
    w = words(language)
    if "manage" in request.query_params:
        return _page(request, language, w["prefs_title"], [w["prefs_intro"].format(email=state.email)],
                     topics=[(t, t in state.topics) for t in state.known], current=state.language,
                     csrf=web.signer.form_key(request.path_params["token"]))
    lines = [w["receives"].format(email=state.email, topics=", ".join(state.topics)) if state.topics
             else w["receives_none"].format(email=state.email), w["press"]]
    return _page(request, language, w["unsub_title"], lines, button=w["unsubscribe"],
                 hidden={"List-Unsubscribe": "One-Click"},
                 links=[(f"{request.url.path}?manage=1&lang={language}", w["or_choose"])])


async def unsubscribe(request: Request) -> Response:
    subject = _subject(request, UNSUBSCRIBE)
    if isinstance(subject, Response):
        return subject
    web = web_of(request)
    form = await request.form()
    if form.get("action") == "update":
        # CSRF: the field is bound to this link, and a browser saying the post came from another
        # site is refused (the one-click POST below comes from mail providers, not browsers).
        token = request.path_params["token"]
        if not web.signer.check_form_key(token, str(form.get("csrf") or "")) or \
                request.headers.get("sec-fetch-site", "same-origin") == "cross-site":
            known = await web.read(lambda s: subscriptions.subscriber_state(s, subject))
            return _refuse(request, "stale_form", 403, preferred=known.language if known else None)
        wanted = [str(t) for t in form.getlist("topic")]
        chosen = str(form.get("language") or "")
        state = await web.write(lambda s: subscriptions.set_preferences(
            s, subject, wanted, chosen if chosen in LANGUAGES else None))
        if state is None:
            return _refuse(request, "unknown_address")
        w = words(state.language)
        log.info("CSMS: %s set their topics to %s, language %s (subscriber %s)", state.email,
                 ", ".join(state.topics) or "none", state.language, subject)
        text = (w["now_receives_in"].format(email=state.email, topics=", ".join(state.topics),
                                            language=LANGUAGES[state.language]) if state.topics
                else w["no_more"].format(email=state.email))
        return _page(request, state.language, w["saved_title"], [text],
                     links=[(f"{request.url.path}?manage=1", w["prefs_title"])])
    if form.get("List-Unsubscribe") != "One-Click":
        return PlainTextResponse("expected the form field List-Unsubscribe=One-Click (RFC 8058); nothing was changed\n",
                                 400)

    def one_click(session):  # type: ignore[no-untyped-def]
        subscriber = subscriptions.one_click(session, subject)
        return (subscriber.email, subscriber.language) if subscriber is not None else None

    done = await web.write(one_click)
    if done is None:
        language = language_of(request)
        return _page(request, language, words(language)["unsubscribed_title"], [words(language)["not_subscribed"]])
    address, preferred = done
    log.info("CSMS: %s unsubscribed by one-click (subscriber %s)", address, subject)
    language = language_of(request, preferred)
    w = words(language)
    return _page(request, language, w["unsubscribed_title"], [w["no_more"].format(email=address)])


async def confirm_page(request: Request) -> Response:
    subject = _subject(request, CONFIRM)
    if isinstance(subject, Response):
        return subject
    pending = await web_of(request).read(lambda s: subscriptions.pending_state(s, subject))
    if pending is None:
        return _refuse(request, "unknown_confirmation")
    language = language_of(request, pending.language)
    w = words(language)
    what = w["subscribe"] if pending.action == "subscribe" else w["unsubscribe_from"]
    return _page(request, language, w["confirm_title"],
                 [w["confirm_text"].format(email=pending.email, what=what,
                                           topics=", ".join(pending.topics) or w["all_topics"])],
                 button=w["confirm"], hidden={"confirm": "1"})


async def confirm(request: Request) -> Response:
    subject = _subject(request, CONFIRM)
    if isinstance(subject, Response):
        return subject
    web = web_of(request)
    try:
        pending, topics = await web.write(lambda s: subscriptions.confirm(s, subject, utcnow()))
    except service.CsmsError as exc:
        known = await web.read(lambda s: subscriptions.pending_state(s, subject))
        return _refuse(request, "unusable", preferred=known.language if known else None, reason=str(exc))
    log.info("CSMS: %s confirmed request %s by link", pending.email, subject)
    language = language_of(request, pending.language)
    w = words(language)
    text = (w["now_receives"].format(email=pending.email, topics=", ".join(topics)) if topics
            else w["receives_nothing"].format(email=pending.email))
    return _page(request, language, w["confirmed_title"], [text])


async def archive_search(request: Request) -> Response:
    """The archive's search (number, title, text) over the index the scheduler writes."""
    config = web_of(request).config
    index = Path(config.path(config.daemon.state_dir)) / config.csms.archive_dir / "index.json"
    query = request.query_params.get("q", "")[:200]

    def found() -> list[dict]:
        try:
            entries = json.loads(index.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            entries = []
        return archive.search(entries, query)

    return HTMLResponse(archive.search_page(query, await web_of(request).read(lambda _s: found()),
                                            language_of(request)))


async def archive_index(request: Request) -> Response:
    """The archive's index in the visitor's language (``?lang=``, else Accept-Language): the
    static mount alone would always serve the English ``index.html``."""
    config = web_of(request).config
    root = Path(config.path(config.daemon.state_dir)) / config.csms.archive_dir
    language = language_of(request)
    page = root / archive.index_path(language)
    if not page.is_file():
        # An archive written before the Spanish index existed: the English one until the next publish.
        language, page = "en", root / "index.html"
    if not page.is_file():
        return PlainTextResponse("Nothing published yet.\n", 404)
    return FileResponse(page, media_type="text/html; charset=utf-8",
                        headers={"Vary": "Accept-Language", "Content-Language": language})


def routes() -> list[Route]:
    return [
        Route("/u/{token}", unsubscribe_page, methods=["GET"]),
        Route("/u/{token}", unsubscribe, methods=["POST"]),
        Route("/c/{token}", confirm_page, methods=["GET"]),
        Route("/c/{token}", confirm, methods=["POST"]),
        # Before the archive's static mount, which would answer 404.
        Route("/archive/search", archive_search, methods=["GET"]),
        Route("/archive/", archive_index, methods=["GET"]),
        Route("/archive/index.html", archive_index, methods=["GET"]),
    ]
