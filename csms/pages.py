"""The pages a subscriber sees behind the links in notices and confirmation
mail -- unsubscribe, preferences, confirmation, results and errors -- in
English and Spanish, rendered from ``templates/pages/`` (autoescaped).

Pure presentation: the HTTP edge (``daemon/``) decides which page and with
what data; this module only words and renders it.  The language is the
subscriber's unless the page was asked for in another (``?lang=``), and every
page links to the other language.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2

LANGUAGES = ("en", "es")
LANGUAGE_NAMES = {"en": "English", "es": "Español"}

TEXT: dict[str, dict[str, str]] = {
    "en": {
        "unsubscribe_title": "Unsubscribe from CSMS notices",
        "receives": "{address} receives CSMS notices about: {topics}.",
        "receives_nothing": "{address} is not subscribed to any CSMS topic.",
        "press_to_leave": "Press the button to stop receiving all CSMS notices.",
        "unsubscribe_button": "Unsubscribe",
        "or_choose": "Or choose your topics and language instead",
        "unsubscribed_title": "Unsubscribed",
        "unsubscribed": "{address} will receive no more CSMS notices.",
        "not_subscribed": "This address is not subscribed to CSMS notices.",
        "subscription_title": "CSMS subscription",
        "preferences_title": "Your CSMS preferences",
        "choose_topics": "Topics {address} receives CSMS notices about:",
        "choose_language": "Language of the notices:",
        "save": "Save",
        "leave_all": "Unsubscribe from everything",
        "saved_title": "Preferences saved",
        "saved": "{address} now receives CSMS notices about: {topics}, in {language}.",
        "confirm_title": "Confirm your CSMS request",
        "confirm_subscribe": "Confirm that {address} wants to subscribe to: {topics}.",
        "confirm_unsubscribe": "Confirm that {address} wants to unsubscribe from: {topics}.",
        "all_topics": "all topics",
        "confirm_button": "Confirm",
        "confirmed_title": "Confirmed",
        "confirmed": "{address} now receives CSMS notices about: {topics}.",
        "confirmed_nothing": "{address} receives no CSMS notices.",
        "error_title": "This link cannot be used",
        "bad_link": "This link is not valid ({reason}). Nothing was changed.",
        "unusable_confirmation": "This confirmation cannot be used: {reason}. Nothing was changed.",
        "unknown_confirmation": "This confirmation is unknown. Nothing was changed.",
        "unknown_address": "This address is not known here. Nothing was changed.",
        "stale_form": "This form is out of date; open the link in your notice again. Nothing was changed.",
        "forged token": "it was altered", "expired token": "it has expired", "malformed token": "it is damaged",
        "token for another purpose": "it is meant for something else",
        "already confirmed": "it was already used", "confirmation expired": "it has expired",
        "no such confirmation": "it is unknown",
        "other_language": "Versión en español",
    },
    "es": {
        "unsubscribe_title": "Cancelar la suscripción a los avisos de CSMS",
        "receives": "{address} recibe avisos de CSMS sobre: {topics}.",
        "receives_nothing": "{address} no está suscrito a ningún tema de CSMS.",
        "press_to_leave": "Pulse el botón para dejar de recibir todos los avisos de CSMS.",
        "unsubscribe_button": "Cancelar la suscripción",
        "or_choose": "O elija sus temas y su idioma",
        "unsubscribed_title": "Suscripción cancelada",
        "unsubscribed": "{address} no recibirá más avisos de CSMS.",
        "not_subscribed": "Esta dirección no está suscrita a los avisos de CSMS.",
        "subscription_title": "Suscripción a CSMS",
        "preferences_title": "Sus preferencias de CSMS",
        "choose_topics": "Temas sobre los que {address} recibe avisos de CSMS:",
        "choose_language": "Idioma de los avisos:",
        "save": "Guardar",
        "leave_all": "Cancelar la suscripción a todo",
        "saved_title": "Preferencias guardadas",
        "saved": "{address} ahora recibe avisos de CSMS sobre: {topics}, en {language}.",
        "confirm_title": "Confirme su solicitud de CSMS",
        "confirm_subscribe": "Confirme que {address} desea suscribirse a: {topics}.",
        "confirm_unsubscribe": "Confirme que {address} desea cancelar la suscripción a: {topics}.",
        "all_topics": "todos los temas",
        "confirm_button": "Confirmar",
        "confirmed_title": "Confirmado",
        "confirmed": "{address} ahora recibe avisos de CSMS sobre: {topics}.",
        "confirmed_nothing": "{address} no recibe avisos de CSMS.",
        "error_title": "Este enlace no se puede usar",
        "bad_link": "Este enlace no es válido ({reason}). No se cambió nada.",
        "unusable_confirmation": "Esta confirmación no se puede usar: {reason}. No se cambió nada.",
        "unknown_confirmation": "Esta confirmación no existe. No se cambió nada.",
        "unknown_address": "Esta dirección no se conoce aquí. No se cambió nada.",
        "stale_form": "Este formulario está desactualizado; abra de nuevo el enlace de su aviso. No se cambió nada.",
        "forged token": "fue alterado", "expired token": "venció", "malformed token": "está dañado",
        "token for another purpose": "es para otro fin",
        "already confirmed": "ya se usó", "confirmation expired": "venció",
        "no such confirmation": "no existe",
        "other_language": "English version",
    },
}

_ENV = jinja2.Environment(loader=jinja2.FileSystemLoader(str(Path(__file__).with_name("templates") / "pages")),
                          autoescape=True, undefined=jinja2.StrictUndefined)


def language(requested: str | None, preferred: str | None, accept_language: str = "") -> str:
    """The page's language: the one asked for (``?lang=``), else the subscriber's, else the browser's."""
    for candidate in (requested, preferred):
        if candidate in LANGUAGES:
            return candidate  # type: ignore[return-value]
    return "es" if accept_language.strip().lower().startswith("es") else "en"


def text(lang: str, key: str, **values: Any) -> str:
    """One sentence in ``lang`` with ``values`` filled in (a reason key is translated too)."""
    words = TEXT.get(lang, TEXT["en"])
    if "reason" in values:
        values["reason"] = words.get(str(values["reason"]), str(values["reason"]))
    return words[key].format(**values)


def topic_list(lang: str, topics: list[str]) -> str:
    return ", ".join(topics) if topics else TEXT[lang]["all_topics"]


def render_page(lang: str, title_key: str, paragraphs: list[str], *, button: str | None = None,
                hidden: dict[str, str] | None = None, links: list[tuple[str, str]] | None = None,
                switch_url: str = "") -> str:
    """A simple page: a title, paragraphs, optionally a one-button POST form and links."""
    return _ENV.get_template("page.html.j2").render(
        lang=lang, title=TEXT[lang][title_key], paragraphs=paragraphs, button=button, hidden=hidden or {},
        links=links or [], switch_url=switch_url, switch_label=TEXT[lang]["other_language"])


def render_preferences(lang: str, *, address: str, topics: list[str], known: list[str], subscriber_language: str,
                       csrf: str, switch_url: str) -> str:
    """The preferences page: topics as checkboxes, the language, save; or leave everything."""
    t = TEXT[lang]
    return _ENV.get_template("preferences.html.j2").render(
        lang=lang, t=t, title=t["preferences_title"], intro=t["choose_topics"].format(address=address),
        topics=topics, known=known, languages=[(code, LANGUAGE_NAMES[code]) for code in LANGUAGES],
        current=subscriber_language, csrf=csrf, switch_url=switch_url, switch_label=t["other_language"])
