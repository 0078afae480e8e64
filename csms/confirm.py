"""The few messages the request address sends back: a confirmation request
(double opt-in: nobody is subscribed or unsubscribed by someone else), and
a short notice of what was done, help, and an error.  Low volume, so built with ``EmailMessage``.
Every one is ``Auto-Submitted: auto-replied`` (RFC 3834) so that other
robots do not answer it, and the rate limit in the stage caps how many one
address can be sent.
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage

_TEXT = {
    "en": {
        "subscribe": "subscribe to",
        "unsubscribe": "unsubscribe from",
        # Short: a subject longer than a header line folds badly, and the token must survive replies.
        "request_subject": "CSMS: confirm {token}",
        "request_body": (
            "We received a request to {what} the following CSMS topics for {email}:\n\n{topics}\n\n"
            "To confirm, reply to this message (keep the subject line), or send a message to\n"
            "{request} with the subject:\n\n    confirm {token}\n\n{link}"
            "This request expires in {hours} hours. If you did not ask for this, ignore this message:\n"
            "nothing will change.\n"),
        "done_subject": "CSMS: your request is done",
        "done_body": "Your CSMS subscription for {email} now covers:\n\n{topics}\n",
        "none": "(no topics: you will receive no CSMS notices)",
        "all": "all your topics",
        "error_subject": "CSMS: we could not do your request",
        "error_body": "We could not carry out your request: {reason}\n\nTopics you can choose:\n\n{topics}\n",
        "link": "Or open this link and press the button:\n\n    {url}\n\n",
        "unknown": "These topics do not exist and were left out: {names}\n\n",
        "help_subject": "CSMS: how to subscribe",
        "help_body": (
            "Send a message to {request} with one of these subjects:\n\n"
            "    subscribe ACE; ACE Portal      (topics separated by ;)\n"
            "    unsubscribe                    (all topics; or name the topics)\n\n"
            "You will be asked to confirm. Topics you can choose:\n\n{topics}\n"),
    },
    "es": {
        "subscribe": "suscribirse a",
        "unsubscribe": "cancelar la suscripción a",
        "request_subject": "CSMS: confirmar {token}",
        "request_body": (
            "Recibimos una solicitud para {what} los siguientes temas de CSMS para {email}:\n\n{topics}\n\n"
            "Para confirmar, responda a este mensaje (conserve el asunto), o envíe un mensaje a\n"
            "{request} con el asunto:\n\n    confirmar {token}\n\n{link}"
            "Esta solicitud vence en {hours} horas. Si usted no la pidió, ignore este mensaje:\n"
            "nada cambiará.\n"),
        "done_subject": "CSMS: su solicitud fue procesada",
        "done_body": "Su suscripción a CSMS para {email} ahora incluye:\n\n{topics}\n",
        "none": "(ningún tema: no recibirá avisos de CSMS)",
        "all": "todos sus temas",
        "error_subject": "CSMS: no pudimos procesar su solicitud",
        "error_body": "No pudimos procesar su solicitud: {reason}\n\nTemas disponibles:\n\n{topics}\n",
        "link": "O abra este enlace y pulse el botón:\n\n    {url}\n\n",
        "unknown": "Estos temas no existen y se omitieron: {names}\n\n",
        "help_subject": "CSMS: cómo suscribirse",
        "help_body": (
            "Envíe un mensaje a {request} con uno de estos asuntos:\n\n"
            "    suscribir ACE; ACE Portal      (temas separados por ;)\n"
            "    baja                           (todos los temas; o nombre los temas)\n\n"
            "Se le pedirá que confirme. Temas disponibles:\n\n{topics}\n"),
    },
}


def _lines(topics: list[str], empty: str) -> str:
    return "\n".join(f"  * {t}" for t in topics) if topics else f"  {empty}"


@dataclass(frozen=True)
class Built:
    """A message ready for the outbox."""

    message_id: str
    raw: bytes


def _message(sender: str, request: str, rcpt: str, subject: str, body: str, domain: str,
             in_reply_to: str | None) -> Built:
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = email.utils.formataddr(("CBP CSMS", sender))
    msg["To"] = rcpt
    msg["Reply-To"] = request
    msg["Subject"] = subject
    msg["Date"] = email.utils.formatdate(localtime=False)
    message_id = email.utils.make_msgid("csms-confirm", domain=domain)
    msg["Message-ID"] = message_id
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = in_reply_to
    # RFC 3834 section 5: responses to a message are auto-replied.
    msg["Auto-Submitted"] = "auto-replied"
    msg.set_content(body)
    return Built(message_id, msg.as_bytes())


def confirmation_request(*, sender: str, request: str, rcpt: str, action: str, topics: list[str], token: str,
                         language: str, hours: int, domain: str, in_reply_to: str | None = None,
                         confirm_url: str = "", unknown: list[str] | None = None) -> Built:
    t = _TEXT.get(language, _TEXT["en"])
    link = t["link"].format(url=confirm_url) if confirm_url else ""
    body = t["request_body"].format(what=t[action], email=rcpt, topics=_lines(topics, t["all"]),
                                    request=request, token=token, hours=hours, link=link)
    if unknown:
        body = t["unknown"].format(names=", ".join(unknown)) + body
    return _message(sender, request, rcpt, t["request_subject"].format(token=token), body, domain, in_reply_to)


def result_notice(*, sender: str, request: str, rcpt: str, topics: list[str], language: str, domain: str,
                  in_reply_to: str | None = None) -> Built:
    t = _TEXT.get(language, _TEXT["en"])
    body = t["done_body"].format(email=rcpt, topics=_lines(topics, t["none"]))
    return _message(sender, request, rcpt, t["done_subject"], body, domain, in_reply_to)


def error_notice(*, sender: str, request: str, rcpt: str, reason: str, known_topics: list[str], language: str,
                 domain: str, in_reply_to: str | None = None) -> Built:
    t = _TEXT.get(language, _TEXT["en"])
    body = t["error_body"].format(reason=reason, topics=_lines(known_topics, ""))
    return _message(sender, request, rcpt, t["error_subject"], body, domain, in_reply_to)


def help_notice(*, sender: str, request: str, rcpt: str, known_topics: list[str], language: str, domain: str,
                in_reply_to: str | None = None) -> Built:
    t = _TEXT.get(language, _TEXT["en"])
    body = t["help_body"].format(request=request, topics=_lines(known_topics, ""))
    return _message(sender, request, rcpt, t["help_subject"], body, domain, in_reply_to)
