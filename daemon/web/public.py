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

Pages are in the subscriber's language (English or Spanish).
"""

from __future__ import annotations

import logging
import re

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from csms import service, subscriptions
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
    },
}


def words(language: str) -> dict[str, str]:
    return WORDS.get(language, WORDS["en"])


def _refuse(text: str, status: int = 400) -> Response:
    # Plain text: nothing of the request is ever rendered as markup.
    return PlainTextResponse(text + "\n", status)


def _subject(request: Request, purpose: str) -> int | Response:
    token = request.path_params["token"]
    if not _TOKEN.match(token):
        return _refuse("not found", 404)
    try:
        return web_of(request).signer.check(purpose, token)
    except BadToken as exc:
        log.info("CSMS endpoint: refused %s /%s/: %s", request.method, purpose, exc)
        return _refuse(f"This link is not valid ({exc}). Nothing was changed.")


def _page(request: Request, language: str, title: str, paragraphs: list[str], *, button: str = "",
          hidden: dict[str, str] | None = None, topics: list[tuple[str, bool]] | None = None) -> Response:
    return web_of(request).page(request, "public.html", lang=language, title=title, paragraphs=paragraphs,
                                button=button, hidden=hidden or {}, topics=topics, w=words(language))


async def unsubscribe_page(request: Request) -> Response:
    subject = _subject(request, UNSUBSCRIBE)
    if isinstance(subject, Response):
        return subject
    web = web_of(request)
    state = await web.read(lambda s: subscriptions.subscriber_state(s, subject))
    if state is None:
        return _page(request, "en", words("en")["unsub_title"], [words("en")["not_subscribed"]])
    w = words(state.language)
    if "manage" in request.query_params:
        return _page(request, state.language, w["prefs_title"], [w["prefs_intro"].format(email=state.email)],
                     topics=[(t, t in state.topics) for t in state.known])
    lines = [w["receives"].format(email=state.email, topics=", ".join(state.topics)) if state.topics
             else w["receives_none"].format(email=state.email), w["press"]]
    return _page(request, state.language, w["unsub_title"], lines, button=w["unsubscribe"],
                 hidden={"List-Unsubscribe": "One-Click"})


async def unsubscribe(request: Request) -> Response:
    subject = _subject(request, UNSUBSCRIBE)
    if isinstance(subject, Response):
        return subject
    web = web_of(request)
    form = await request.form()
    if form.get("action") == "update":
        wanted = [str(t) for t in form.getlist("topic")]
        state = await web.write(lambda s: subscriptions.set_topics(s, subject, wanted))
        if state is None:
            return _refuse("This address is not known here. Nothing was changed.")
        w = words(state.language)
        log.info("CSMS: %s set their topics to %s (subscriber %s)", state.email, ", ".join(state.topics) or "none",
                 subject)
        text = (w["now_receives"].format(email=state.email, topics=", ".join(state.topics)) if state.topics
                else w["no_more"].format(email=state.email))
        return _page(request, state.language, w["saved_title"], [text])
    if form.get("List-Unsubscribe") != "One-Click":
        return _refuse("expected the form field List-Unsubscribe=One-Click (RFC 8058); nothing was changed")

    def one_click(session):  # type: ignore[no-untyped-def]
        subscriber = subscriptions.one_click(session, subject)
        return (subscriber.email, subscriber.language) if subscriber is not None else None

    done = await web.write(one_click)
    if done is None:
        return _page(request, "en", words("en")["unsubscribed_title"], [words("en")["not_subscribed"]])
    address, language = done
    log.info("CSMS: %s unsubscribed by one-click (subscriber %s)", address, subject)
    w = words(language)
    return _page(request, language, w["unsubscribed_title"], [w["no_more"].format(email=address)])


async def confirm_page(request: Request) -> Response:
    subject = _subject(request, CONFIRM)
    if isinstance(subject, Response):
        return subject
    pending = await web_of(request).read(lambda s: subscriptions.pending_state(s, subject))
    if pending is None:
        return _refuse("This confirmation is unknown. Nothing was changed.")
    w = words(pending.language)
    what = w["subscribe"] if pending.action == "subscribe" else w["unsubscribe_from"]
    return _page(request, pending.language, w["confirm_title"],
                 [w["confirm_text"].format(email=pending.email, what=what,
                                           topics=", ".join(pending.topics) or w["all_topics"])],
                 button=w["confirm"], hidden={"confirm": "1"})


async def confirm(request: Request) -> Response:
    subject = _subject(request, CONFIRM)
    if isinstance(subject, Response):
        return subject
    try:
        pending, topics = await web_of(request).write(lambda s: subscriptions.confirm(s, subject, utcnow()))
    except service.CsmsError as exc:
        return _refuse(f"This confirmation cannot be used: {exc}. Nothing was changed.")
    log.info("CSMS: %s confirmed request %s by link", pending.email, subject)
    w = words(pending.language)
    text = (w["now_receives"].format(email=pending.email, topics=", ".join(topics)) if topics
            else w["receives_nothing"].format(email=pending.email))
    return _page(request, pending.language, w["confirmed_title"], [text])


def routes() -> list[Route]:
    return [
        Route("/u/{token}", unsubscribe_page, methods=["GET"]),
        Route("/u/{token}", unsubscribe, methods=["POST"]),
        Route("/c/{token}", confirm_page, methods=["GET"]),
        Route("/c/{token}", confirm, methods=["POST"]),
    ]
