"""The respond step over the database: screen -> verify -> decide -> act.

:func:`plan` is pure (plain data in, a :class:`Plan` out).  :func:`respond_rows`
runs it over a batch of classified inbound rows and writes, in the caller's
transaction, the ticket (or the follow-up on an existing one), the triage
item, the screening/decision record, and the reply as an outbox row -- so the
decision and the outgoing message commit together or not at all (the
transactional outbox), and ``outbox.inbound_message_id`` being unique means
one inbound message yields at most one reply whatever crashes.

:func:`dry_run` is the same path without writing anything (``acedesk triage --json``).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import functools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from classifiers.language import detect_language
from models.base import utcnow
from models.core import DONE, FAILED, QUARANTINED, InboundMessage
from models.duties import Incident, IncidentReport
from models.outbox import PENDING, OutboxMessage
from models.parsed import ParsedMessage
from models.responders import (
    TICKET_ANSWERED,
    TICKET_OPEN,
    AutoReplyLog,
    ResponseRecord,
    Ticket,
    TicketMessage,
    TriageItem,
    User,
)
from responders import incidents
from responders.accounts import held_status, load_held
from responders.articles import Library, links_context, load_library
from responders.escalation import EscalationConfig
from responders.hours import DeskHours
from responders.hours import reply_context as hours_context
from responders.identity import DirectoryIndex, mentions
from responders.incidents import IncidentConfig
from responders.policy import DROP_ACTION, REPLY, SECURITY_NEUTRAL, TRIAGE, Decision, decide
from responders.redact import redact
from responders.render import Draft, Renderer, Reply, build_reply, complete, draft_reply, stand_in
from responders.screen import Examined, Screen, ScreenContext, examine, screen
from responders.settings import ResponderConfig
from responders.tickets import priority, quoted_number, reply_subject, ticket_number
from responders.verify import VERIFIED, Directory, UserRecord, Verification, verify

log = logging.getLogger("acedesk.respond")


@dataclass(frozen=True)
class DeskInfo:
    """The desk's own addresses, as plain data (built by the daemon from ``[desk]``)."""

    reply_from: str
    own_addresses: frozenset[str]
    spanish_addresses: frozenset[str] = frozenset()
    csms_address: str = ""

    @property
    def domain(self) -> str:
        return self.reply_from.rpartition("@")[2].lower()


@dataclass
class Responder:
    """Everything the respond step needs, built once per process."""

    cfg: ResponderConfig
    desk: DeskInfo
    secret: bytes
    renderer: Renderer = field(default_factory=Renderer)
    #: Optional local DKIM check (daemon-provided: it does DNS): raw bytes -> pass/fail/None.
    dkim_check: Callable[[bytes, str], bool | None] | None = None
    #: Border hosts besides ``cfg.border_hosts`` (the ingress itself, when it is the border).
    extra_border_hosts: tuple[str, ...] = ()
    #: The desk's duties: opening hours, outage incidents, escalation (``[hours]``, ``[incidents]``, ``[escalation]``).
    hours: DeskHours = field(default_factory=DeskHours)
    incidents: IncidentConfig = field(default_factory=IncidentConfig)
    escalation: EscalationConfig = field(default_factory=EscalationConfig)
    #: The time a batch is processed at (tests set it).
    clock: Callable[[], dt.datetime] = utcnow
    _domains: frozenset[str] = frozenset()
    _domains_at: float = -1e9
    _index: DirectoryIndex = field(default_factory=DirectoryIndex)
    _index_key: tuple[Any, ...] = ()

    @property
    def border_hosts(self) -> tuple[str, ...]:
        return tuple(self.cfg.border_hosts) + self.extra_border_hosts


@dataclass(frozen=True)
class Plan:
    screen: Screen
    verification: Verification
    decision: Decision
    language: str
    priority: str
    priority_reasons: tuple[str, ...]
    label: str
    confidence: float


def choose_language(msg: ParsedMessage, row_language: str | None, desk_address: str, desk: DeskInfo) -> str:
    """Return the reply language: the message's own, else the desk address's (ayuda@ is Spanish)."""
    if row_language in ("en", "es"):
        return row_language
    default = "es" if desk_address.lower() in desk.spanish_addresses else "en"
    return detect_language(msg.classifier_text, default=default)


def plan(responder: Responder, msg: ParsedMessage, *, label: str, confidence: float, auto: bool | None,
         language: str, directory: Directory, recent_autoreplies: int, followup: bool,
         dkim_ok: bool | None = None, duplicate_of: str | None = None, held: Sequence[Any] = (),
         foreign_ticket: str | None = None, examined: Examined | None = None,
         verification: Verification | None = None) -> Plan:
    """Screen, verify and decide for one message (pure).

    ``foreign_ticket``: a ticket number the message quotes whose requester is someone else.
    ``examined`` (``screen.examine``) and ``verification``: what the caller worked out already for
    this message from the same facts (neither depends on the cap or the repeats).
    """
    cfg = responder.cfg
    ctx = ScreenContext(own_addresses=responder.desk.own_addresses, domain=responder.desk.domain,
                        secret=responder.secret, recent_autoreplies=recent_autoreplies,
                        autoreply_max=cfg.autoreply_max, duplicate_of=duplicate_of)
    screened = screen(msg, ctx, examined)
    if verification is None:
        verification = verify(msg, directory, cfg.trusted_authserv_ids, responder.border_hosts, dkim_ok)
    # An inactive or suspended account never gets self-service account help (policy step account_status).
    decision = decide(label, confidence, auto, verification, screened, msg.sender.lower(), cfg.rules,
                      followup=followup, held=held_status(held, msg.sender, verification.user_id),
                      foreign_ticket=foreign_ticket)
    prio, why = priority(label, msg.classifier_text, verification.status == VERIFIED)
    return Plan(screened, verification, decision, language, prio, tuple(why), label, confidence)


def reply_context(responder: Responder, msg: ParsedMessage, verification: Verification) -> dict[str, Any]:
    """Return the template data.  The sender's words are data only; the name only when verified."""
    subject = redact(msg.subject or "")[:200]
    return {
        "name": verification.name if verification.status == VERIFIED else "",
        "subject": subject,
        "csms_address": responder.desk.csms_address,
        "target_hours": f"{responder.cfg.target_hours:g}",
    }


def duty_context(responder: Responder, library: Library, template: str | None, label: str, language: str,
                 now: dt.datetime, articles: Sequence[str] = ()) -> dict[str, Any]:
    """Return what every reply adds from the desk's duties: the articles of its label (and ``articles``
    an analyst added, by key), the desk's hours and, when it is closed, when analysts are back."""
    return {"articles": links_context(library.for_reply(template, label, language, articles)),
            **_hours_at(responder.hours, now, language)}


#: The hours part of ``duty_context``: one batch's replies share ``now``, so it is worked out once a batch.
_hours_at = functools.lru_cache(maxsize=16)(hours_context)


def render(responder: Responder, msg: ParsedMessage, p: Plan, number: str,
           extra: dict[str, Any] | None = None) -> Reply:
    """Build the reply of plan ``p`` for ticket ``number`` (``extra``: more template data)."""
    assert p.decision.template and p.decision.to
    return build_reply(
        responder.renderer, template=p.decision.template, language=p.language, to=p.decision.to,
        from_address=responder.desk.reply_from, from_name=responder.cfg.from_name,
        subject=redact(reply_subject(msg.subject, number, responder.cfg.ticket_prefix, p.language)),
        ticket=number, secret=responder.secret, in_reply_to=msg.message_id, references=msg.references,
        context={**reply_context(responder, msg, p.verification), **(extra or {}),
                 # The reply that discloses nothing does not even greet the account's holder by name.
                 **({"name": ""} if p.decision.template == SECURITY_NEUTRAL else {})})


# --- database lookups ---------------------------------------------------------------


#: The columns of a :class:`UserRecord`, read as plain rows (no ORM objects: a batch reads ~1,000 users).
_RECORD_COLUMNS = (User.user_id, User.email, User.name, User.role, User.identifier, User.account_owner_email,
                   User.language)


def _records(session: Session, where: Any) -> Iterable[UserRecord]:
    return (UserRecord(*row) for row in session.execute(select(*_RECORD_COLUMNS).where(where)))


def known_domains(session: Session, responder: Responder, max_age: float = 300.0) -> frozenset[str]:
    """Return the domains of addresses on file (cached for ``max_age`` seconds; lookalike check)."""

    now = time.monotonic()
    if now - responder._domains_at > max_age:
        emails = session.scalars(select(User.email).distinct())
        responder._domains = frozenset(e.rpartition("@")[2] for e in emails)
        responder._domains_at = now
    return responder._domains


def directory_index(session: Session, responder: Responder) -> DirectoryIndex:
    """Return the index of every UserID and identifier on file, rebuilt only when the users table changed."""
    key = tuple(session.execute(select(func.count(), func.max(User.updated_at)).select_from(User)).one())
    if key != responder._index_key:
        responder._index = DirectoryIndex.build(((r[0], r[1]) for r in session.execute(select(User.user_id, User.identifier))))
        responder._index_key = key
    return responder._index


def load_directory(session: Session, senders: Iterable[str], texts: Iterable[str], index: DirectoryIndex,
                   domains: frozenset[str]) -> Directory:
    """Return the users that concern these senders and what their messages mention (two queries).

    The senders' own records and the users they own first; then their
    colleagues (the same Account Owner or identifier), and every user on file
    that a message mentions by UserID or identifier (found through ``index``).
    """
    senders = {s.lower() for s in senders if s}
    mentioned: set[str] = set()
    # What each text mentions is kept on the directory: each message's verification reads it again.
    found: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    for text in texts:
        if text in found:
            continue
        users_of, keys = mentions(text, index)
        found[text] = (tuple(users_of), tuple(keys))
        mentioned.update(users_of)
        for key in keys:
            mentioned.update(index.user_ids[u] for u in index.identifiers.get(key, ()) if u in index.user_ids)
    users: dict[str, UserRecord] = {}
    if senders:
        for u in _records(session, or_(User.email.in_(senders), User.account_owner_email.in_(senders))):
            users[u.user_id] = u
    owners = {u.account_owner_email for u in users.values() if u.account_owner_email}
    identifiers = {u.identifier for u in users.values() if u.identifier}
    conds = []
    if mentioned:
        conds.append(User.user_id.in_(mentioned))
    if owners:
        conds.append(User.account_owner_email.in_(owners))
    if identifiers:
        conds.append(User.identifier.in_(identifiers))
    if conds:
        for u in _records(session, or_(*conds)):
            users[u.user_id] = u
    directory = Directory(tuple(users.values()), domains, index)
    directory.mentioned.update(found)
    return directory


def duplicates(session: Session, rows: Sequence[InboundMessage], parsed: Sequence[ParsedMessage]) -> dict[int, str]:
    """Return, per row id, the earlier message it repeats: same Message-ID, sender and desk.

    A message that arrives again (another path, a resend with only its line
    endings changed) is stored, and recorded as a duplicate, not handled twice.
    """
    keys = {(row.desk, m.message_id, m.sender.lower()): row.id for row, m in zip(rows, parsed) if m.message_id}
    if not keys:
        return {}
    earlier: dict[tuple[str, str, str], int] = {}
    latest: dict[tuple[str, str], int] = {}
    for (desk, message_id, _sender), row_id in keys.items():
        latest[desk, message_id] = max(row_id, latest.get((desk, message_id), 0))
    query = (select(InboundMessage.id, InboundMessage.desk, InboundMessage.message_id)
             .where(InboundMessage.message_id.in_({k[1] for k in keys}))
             .where(InboundMessage.state.not_in((QUARANTINED, FAILED))))
    # Only an earlier row can be repeated: the parsed record (for its sender) is read for those alone,
    # not for the batch's own rows (almost always the only ones with their Message-ID).
    older = [(i, d, m) for i, d, m in session.execute(query) if i < latest.get((d, m), 0)]
    senders_of: dict[int, Any] = {}
    if older:
        senders_of.update(session.execute(select(InboundMessage.id, InboundMessage.parsed)
                                          .where(InboundMessage.id.in_([i for i, _, _ in older]))).all())
    for other_id, desk, message_id in older:
        other_parsed = senders_of.get(other_id)
        key = (desk, message_id, str((other_parsed or {}).get("sender", "")).lower())
        if key in keys and other_id < keys[key] and other_id < earlier.get(key, other_id + 1):
            earlier[key] = other_id
    found: dict[int, str] = {}
    for row, m in zip(rows, parsed):
        key = (row.desk, m.message_id or "", m.sender.lower())
        if key in earlier and earlier[key] < row.id:
            found[row.id] = f"message {earlier[key]}"
    return found


def recent_counts(session: Session, recipients: Iterable[str], window: float, now: dt.datetime) -> dict[str, int]:
    """Return how many automatic answers each recipient got in the sliding window."""
    recipients = {r.lower() for r in recipients if r}
    if not recipients:
        return {}
    since = now - dt.timedelta(seconds=window)
    rows = session.execute(select(AutoReplyLog.recipient, func.count()).where(AutoReplyLog.recipient.in_(recipients))
                           .where(AutoReplyLog.at > since).group_by(AutoReplyLog.recipient))
    return {r: n for r, n in rows}


def find_thread(session: Session, responder: Responder, msg: ParsedMessage, our_ticket: str | None) -> Ticket | None:
    """Return the ticket this message follows up on, if any.

    Either it answers one of our signed Message-IDs (made for this sender), or
    it quotes a ticket number in the subject and the sender is that ticket's
    requester -- someone else quoting a number never reaches another's ticket.
    """
    if our_ticket:
        ticket = session.scalars(select(Ticket).where(Ticket.number == our_ticket.upper())).first()
        if ticket is not None:
            return ticket
    number = quoted_number(msg, responder.cfg.ticket_prefix)
    if number:
        ticket = session.scalars(select(Ticket).where(Ticket.number == number)).first()
        if ticket is not None and ticket.requester == msg.sender.lower():
            return ticket
    return None


def foreign_ticket(session: Session, responder: Responder, msg: ParsedMessage) -> str | None:
    """Return the number of a ticket ``msg`` quotes in its subject whose requester is someone else."""
    number = quoted_number(msg, responder.cfg.ticket_prefix)
    if not number:
        return None
    requester = session.scalars(select(Ticket.requester).where(Ticket.number == number)).first()
    return number if requester is not None and requester != msg.sender.lower() else None


def thread_or_foreign(session: Session, responder: Responder, msg: ParsedMessage,
                      our_ticket: str | None) -> tuple[Ticket | None, str | None]:
    """Return :func:`find_thread`, and when there is none :func:`foreign_ticket`: the quoted number
    is looked for once, and its ticket read once, for both."""
    if our_ticket:
        ticket = session.scalars(select(Ticket).where(Ticket.number == our_ticket.upper())).first()
        if ticket is not None:
            return ticket, None
    number = quoted_number(msg, responder.cfg.ticket_prefix)
    if not number:
        return None, None
    ticket = session.scalars(select(Ticket).where(Ticket.number == number)).first()
    if ticket is None:
        return None, None
    sender = msg.sender.lower()
    if ticket.requester == sender:
        return ticket, None
    return None, (number if ticket.requester is not None else None)


# --- acting on a batch ----------------------------------------------------------------


@dataclass
class NewTicket:
    """A ticket the batch opens: a row inserted with its id and number in one executemany (no ORM)."""

    values: dict[str, Any]

    @property
    def id(self) -> int | None:
        return self.values.get("id")

    @property
    def number(self) -> str | None:
        return self.values.get("number")

    @property
    def status(self) -> str:
        return str(self.values["status"])

    @status.setter
    def status(self, value: str) -> None:
        self.values["status"] = value


@dataclass
class Writes:
    """Rows written in one executemany per table at the end of a batch (ids reserved beforehand)."""

    tickets: list[NewTicket] = field(default_factory=list)
    #: Each reply's outbox row and the row that names it (its ticket history, or its incident report).
    replies: list[tuple[dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    #: Outage reports attached to an incident (``responders.incidents``).
    reports: list[dict[str, Any]] = field(default_factory=list)
    #: The rows the batch finishes: set ``done`` by one UPDATE, not one a row.
    done: list[InboundMessage] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    triage: list[dict[str, Any]] = field(default_factory=list)
    autoreplies: list[dict[str, Any]] = field(default_factory=list)

    def insert(self, session: Session) -> None:
        # What the ORM holds first (an incident this batch opened and its first reports, follow-ups' tickets).
        session.flush()
        if self.done:
            values = dict(state=DONE, error=None, updated_at=utcnow())
            table = InboundMessage.__table__
            session.connection().execute(table.update().where(table.c.id.in_([row.id for row in self.done]))
                                         .values(**values))
            for row in self.done:  # as the ORM's own UPDATE would have left them
                for key, value in values.items():
                    set_committed_value(row, key, value)
        tickets, outbox = [t.values for t in self.tickets], [out for out, _ in self.replies]
        for model, rows in ((Ticket, tickets), (OutboxMessage, outbox), (IncidentReport, self.reports),
                            (ResponseRecord, self.records), (TicketMessage, self.history), (TriageItem, self.triage),
                            (AutoReplyLog, self.autoreplies)):
            if rows:
                # Core executemany: no RETURNING, no per-row round trips (tickets first: the others refer to them).
                session.connection().execute(model.__table__.insert(), rows)


def reserved_ids(session: Session, model: Any, n: int) -> list[int]:
    """Return the ids the next ``n`` rows of ``model``'s table would get, taken for this transaction.

    SQLite (inside the write lock) gives a new row the largest id plus one;
    PostgreSQL takes them from the column's sequence.  Either way the numbers
    are those an INSERT would have given, known before the INSERT.
    """
    if n <= 0:
        return []
    table = model.__table__
    if session.get_bind().dialect.name == "postgresql":
        sequence = func.pg_get_serial_sequence(table.name, "id")
        return sorted(session.scalars(select(func.nextval(sequence)).select_from(func.generate_series(1, n))))
    first = int(session.scalar(select(func.max(table.c.id))) or 0) + 1
    return list(range(first, first + n))


@dataclass
class BatchStats:
    replies: int = 0
    tickets: int = 0
    triage: int = 0
    dropped: int = 0
    followups: int = 0


def respond_rows(session: Session, responder: Responder, rows: Sequence[InboundMessage],
                 raw_of: Callable[[InboundMessage], bytes] | None = None,
                 on_error: Callable[[InboundMessage, str, str], None] | None = None,
                 message_seconds: float | None = None) -> BatchStats:
    """Screen, verify, decide and act on classified ``rows``; set each ``done`` (same transaction).

    :func:`plan_rows` then :func:`act_on_plans`, in one transaction.  Each
    message's plan is guarded: when it raises, ``on_error(row, reason,
    detail)`` sets that row aside (the daemon quarantines it) and the batch
    goes on; without ``on_error`` the exception propagates.
    """
    planned = plan_rows(session, responder, rows, raw_of, message_seconds if on_error else None,
                        guard=on_error is not None)
    return act_on_plans(session, responder, rows, planned, on_error, snapshot=False)


@dataclass(frozen=True)
class HeldAccount:
    """A user on file whose account is not active (plain data: a plan outlives its read session)."""

    user_id: str
    email: str
    status: str


@dataclass(frozen=True)
class BatchFacts:
    """What a batch's plans were made from: the reads of :func:`plan_rows`, as plain data."""

    now: dt.datetime
    directory: Directory
    held: tuple[HeldAccount, ...]
    repeats: dict[int, str]
    #: Automatic answers per address in the cap's window, as read (before this batch's own).
    counts: dict[str, int]
    library: Library
    #: The newest automatic answer's id in the snapshot: later ones are what :func:`replanned` reads.
    autoreplies_seen: int = 0


@dataclass(frozen=True)
class Planned:
    """One row's screen, verify and decide: its plan, or why it is set aside (``error``)."""

    facts: BatchFacts
    msg: ParsedMessage
    plan: Plan | None = None
    #: The ticket it follows up on (by id: the plan may be made in another session).
    thread_id: int | None = None
    error: tuple[str, str] | None = None
    #: Its reply, rendered before the write (None: none, or built in the write as before).
    draft: Draft | None = None
    #: What its ticket keeps, worked out before the write too: the subject and the message's words
    #: (redacted, capped) and, for a new ticket, when it is due.
    subject: str = ""
    excerpt: str = ""
    due: dt.datetime | None = None


def plan_rows(session: Session, responder: Responder, rows: Sequence[InboundMessage],
              raw_of: Callable[[InboundMessage], bytes] | None = None, message_seconds: float | None = None,
              guard: bool = True) -> dict[int, Planned]:
    """Return, by row id, the plan of each of ``rows``: reads only, in batches (no write, no lock).

    The daemon runs this on a read snapshot *outside* the write transaction
    (``daemon.worker``: on SQLite, two workers then plan side by side), and
    :func:`act_on_plans` writes the outcome.  The replies are rendered here
    too (:class:`responders.render.Draft`: a new ticket's number is spliced
    in by the write).  The parsed record is what the parse stage stored; the
    raw mail is read only for the optional DKIM check.
    ``guard`` False lets a plan's exception propagate instead of recording it.
    """
    parsed = [ParsedMessage.from_dict(row.parsed or {}) for row in rows]
    index = directory_index(session, responder)
    directory = load_directory(session, [m.sender for m in parsed], [m.classifier_text for m in parsed], index,
                               known_domains(session, responder))
    held = tuple(HeldAccount(u.user_id, u.email, u.status) for u in
                 load_held(session, [m.sender for m in parsed], [u.user_id for u in directory.users]))
    now = responder.clock()
    facts = BatchFacts(now=now, directory=directory, held=held, repeats=duplicates(session, rows, parsed),
                       counts=recent_counts(session, answered_addresses(parsed, directory),
                                            responder.cfg.autoreply_window, now),
                       library=load_library(session),
                       autoreplies_seen=int(session.scalar(select(func.max(AutoReplyLog.id))) or 0))
    return plan_batch(session, responder, rows, parsed, facts, dict(facts.counts), raw_of, message_seconds, guard)


def answered_addresses(parsed: Iterable[ParsedMessage], directory: Directory) -> list[str]:
    """Return the addresses whose answers the cap counts for a batch: senders, and addresses on file."""
    return [m.sender for m in parsed] + [u.email for u in directory.users]


def plan_batch(session: Session, responder: Responder, rows: Sequence[InboundMessage],
               parsed: Sequence[ParsedMessage], facts: BatchFacts, counts: dict[str, int],
               raw_of: Callable[[InboundMessage], bytes] | None, message_seconds: float | None,
               guard: bool) -> dict[int, Planned]:
    """Return the plans of ``rows`` from ``facts``; ``counts`` goes up with each answer planned (the cap)."""
    probe_ctx = ScreenContext(responder.desk.own_addresses, responder.desk.domain, responder.secret, 0,
                              responder.cfg.autoreply_max)
    planned: dict[int, Planned] = {}
    outage: list[Incident | None] = []  # the open incident (read once, for the first outage report)
    for row, msg in zip(rows, parsed):
        started = time.monotonic()
        try:
            examined = examine(msg, probe_ctx)
            probe = screen(msg, probe_ctx, examined)
            thread, foreign = (None, None) if probe.verdict == "drop" else \
                thread_or_foreign(session, responder, msg, probe.our_ticket)
            p = plan_row(responder, row, msg, facts.directory, counts, thread is not None, facts.repeats.get(row.id),
                         raw_of, facts.held, foreign, examined)
        except Exception as exc:  # noqa: BLE001 - one message never stops the batch
            if not guard:
                raise
            planned[row.id] = Planned(facts, msg, error=("respond_error", f"{type(exc).__name__}: {exc}"[:2000]))
            continue
        elapsed = time.monotonic() - started
        if message_seconds is not None and elapsed > message_seconds:
            planned[row.id] = Planned(facts, msg, error=("over_time_budget",
                                                         f"screen, verify and decide took {elapsed:.2f} s "
                                                         f"(budget {message_seconds:g} s)"))
            continue
        if p.decision.template and p.decision.to:
            counts[p.decision.to] = counts.get(p.decision.to, 0) + 1
        kept, new = p.decision.kind != DROP_ACTION, p.decision.kind != DROP_ACTION and thread is None
        one = Planned(facts, msg, p, thread.id if thread is not None else None,
                      subject=redacted_record(msg.subject or "", 998) if new else "",
                      excerpt=redacted_record(msg.new_text or msg.text or "", 4000) if kept else "",
                      due=responder.hours.due(row.received_at or facts.now, responder.cfg.target_hours)
                      if new else None)
        if p.decision.template and p.decision.to:
            number = thread.number if thread is not None else None
            if incidents.wants(responder.incidents, p, thread):
                if not outage:
                    outage.append(incidents.open_incident_for(session, responder.incidents.label))
                if outage[0] is not None:
                    # The open incident takes the report: its answer is the outage answer.
                    planned[row.id] = dataclasses.replace(one, draft=drafted_outage(responder, msg, p, outage[0], facts))
                    continue
            one = dataclasses.replace(one, draft=drafted(responder, msg, p, number, facts))
        planned[row.id] = one
    return planned


def drafted_outage(responder: Responder, msg: ParsedMessage, p: Plan, incident: Incident,
                   facts: BatchFacts) -> Draft | None:
    """Return the outage answer to a report ``incident`` takes, rendered before the write (as
    :func:`responders.incidents.attach` would render it), or None."""
    p = incidents.outage_plan(p)
    d = p.decision
    if not d.template or not d.to or not incident.number:
        return None
    try:
        extra = {**duty_context(responder, facts.library, d.template, p.label, p.language, facts.now),
                 **incidents.outage_context(incident, facts.library, responder.hours,
                                            responder.incidents.dashboard_article, p.language)}
    except Exception:  # noqa: BLE001 - the write meets it again and records it as before
        return None
    return drafted(responder, msg, p, incident.number, facts, extra)


def drafted(responder: Responder, msg: ParsedMessage, p: Plan, number: str | None, facts: BatchFacts,
            extra: dict[str, Any] | None = None) -> Draft | None:
    """Return the reply of ``p`` rendered before the write, with the ticket's ``number`` or (a new
    ticket) a stand-in for it; None where it cannot be (the write then builds it as it always did)."""
    d = p.decision
    assert d.template and d.to
    stem = number or f"{responder.cfg.ticket_prefix}-{facts.now.year:04d}-"
    shown = number or stand_in(stem)
    try:
        if extra is None:
            extra = duty_context(responder, facts.library, d.template, p.label, p.language, facts.now)
        return draft_reply(
            responder.renderer, template=d.template, language=p.language, to=d.to,
            from_address=responder.desk.reply_from, from_name=responder.cfg.from_name,
            subject=redact(reply_subject(msg.subject, shown, responder.cfg.ticket_prefix, p.language)),
            number=shown, stem=stem, secret=responder.secret, in_reply_to=msg.message_id,
            references=msg.references, context=reply_data(responder, msg, p, extra))
    except Exception:  # noqa: BLE001 - whatever it is, the write meets it again and records it as before
        return None


def reply_data(responder: Responder, msg: ParsedMessage, p: Plan, extra: dict[str, Any]) -> dict[str, Any]:
    """Return the template data of :func:`render` (without the ticket number)."""
    return {**reply_context(responder, msg, p.verification), **extra,
            # The reply that discloses nothing does not even greet the account's holder by name.
            **({"name": ""} if p.decision.template == SECURITY_NEUTRAL else {})}


def replanned(session: Session, responder: Responder, rows: Sequence[InboundMessage],
              planned: dict[int, Planned], raw_of: Callable[[InboundMessage], bytes] | None = None,
              ) -> dict[int, Planned]:
    """Return ``planned``, planned again if an address it counts got an automatic answer meanwhile.

    Plans made on a snapshot may be stale in one way that matters: another
    worker answered one of the batch's addresses after the snapshot was
    read, and the cap (``autoreply_max`` per window) must count that answer.
    One query, of the answers logged since the snapshot (SQLite's writers
    take turns and number rows in order, and the log is never pruned, so
    those are all it did not see); the batch is planned again only when one
    of them can change a plan (:func:`cap_reachable`: rare, far below the cap).
    """
    facts = next((p.facts for p in planned.values()), None)
    if facts is None:
        return planned
    wanted = {a.lower() for a in answered_addresses((p.msg for p in planned.values()), facts.directory) if a}
    fresh = {r: n for r, n in facts.counts.items() if r in wanted}
    since = facts.now - dt.timedelta(seconds=responder.cfg.autoreply_window)
    # Only the batch's addresses: the other worker logged an answer for most of its own batch meanwhile.
    for recipient, at in session.execute(select(AutoReplyLog.recipient, AutoReplyLog.at)
                                         .where(AutoReplyLog.id > facts.autoreplies_seen)
                                         .where(AutoReplyLog.recipient.in_(wanted))):
        if recipient in wanted and at > since:
            fresh[recipient] = fresh.get(recipient, 0) + 1
    if fresh == facts.counts or not cap_reachable(planned, facts.counts, fresh, responder.cfg.autoreply_max):
        return planned
    log.info("respond: an address of the batch was answered meanwhile; planning the batch again")
    facts = dataclasses.replace(facts, counts=fresh)
    kept = [row for row in rows if row.id in planned]
    return plan_batch(session, responder, kept, [planned[row.id].msg for row in kept], facts, dict(fresh),
                      raw_of, None, True) | {i: p for i, p in planned.items() if p.error is not None}


def cap_reachable(planned: dict[int, Planned], before: dict[str, int], fresh: dict[str, int], cap: int) -> bool:
    """Return whether answers logged since the snapshot can change a plan of ``planned``.

    A plan compares an address's count (its answers in the window before the
    batch, plus the batch's own answers to it planned so far) with ``cap``,
    and nothing else: a count that went up from ``before`` to ``fresh``
    changes a comparison only when ``fresh`` plus the batch's answers to that
    address reaches the cap.  (Two workers answering the same senders far
    below the cap -- the usual case -- plan nothing again.)
    """
    own = collections.Counter(p.plan.decision.to.lower() for p in planned.values()
                              if p.plan is not None and p.plan.decision.template and p.plan.decision.to)
    return any(n + own.get(address.lower(), 0) >= cap
               for address, n in fresh.items() if n != before.get(address, 0))


def act_on_plans(session: Session, responder: Responder, rows: Sequence[InboundMessage],
                 planned: dict[int, Planned], on_error: Callable[[InboundMessage, str, str], None] | None = None,
                 snapshot: bool = True, raw_of: Callable[[InboundMessage], bytes] | None = None) -> BatchStats:
    """Write what :func:`plan_rows` decided for ``rows`` and set each ``done``: the short write.

    ``snapshot``: the plans were made outside this transaction, so the cap's
    counts are checked again first (:func:`replanned`).  Rows without a
    plan are left as they are; a row whose plan failed goes to ``on_error``.
    Only what needs the database's word is done here: the new tickets' ids
    are reserved (:func:`reserved_ids`), so their numbers are known before
    any INSERT; the replies rendered with the plans get those numbers spliced
    in (:func:`responders.render.complete`); then every table gets one
    executemany and the rows one UPDATE (:meth:`Writes.insert`).
    """
    stats = BatchStats()
    if snapshot:
        planned = replanned(session, responder, rows, planned, raw_of)
    thread_ids = {p.thread_id for p in planned.values() if p.thread_id is not None}
    threads = {t.id: t for t in session.scalars(select(Ticket).where(Ticket.id.in_(thread_ids)))} \
        if thread_ids else {}
    facts = next((p.facts for p in planned.values()), None)
    now = facts.now if facts is not None else responder.clock()
    library = facts.library if facts is not None else Library()
    writes = Writes()
    pending: list[tuple[InboundMessage, Planned, Plan, Ticket | NewTicket | None, dict[str, Any]]] = []
    outage: list[tuple[InboundMessage, ParsedMessage, Plan]] = []
    with session.no_autoflush:
        for row in rows:
            one = planned.get(row.id)
            if one is None:
                continue
            if one.error is not None or one.plan is None:
                reason, detail = one.error or ("respond_error", "no plan")
                if on_error is None:
                    raise RuntimeError(f"message {row.id}: {reason}: {detail}")
                on_error(row, reason, detail)
                continue
            msg, p = one.msg, one.plan
            thread = threads.get(one.thread_id) if one.thread_id is not None else None
            writes.done.append(row)
            if incidents.wants(responder.incidents, p, thread):
                outage.append((row, msg, p))
                continue
            ticket, record = open_ticket(session, responder, row, msg, p, thread, now, stats, writes, one)
            pending.append((row, one, p, ticket, record))
        # Outage reports: attached to the open incident (or one this burst opens), else tickets as usual.
        drafts = {row.id: d for row, _, _ in outage if (d := planned[row.id].draft) is not None}
        for row, msg, p in incidents.act_on_reports(session, responder, outage, now, writes, library, stats, drafts):
            ticket, record = open_ticket(session, responder, row, msg, p, None, now, stats, writes, planned[row.id])
            pending.append((row, planned[row.id], p, ticket, record))
    # The new tickets' ids (so their numbers) and the replies' outbox ids, known before anything is inserted.
    for ticket_id, new in zip(reserved_ids(session, Ticket, len(writes.tickets)), writes.tickets):
        new.values["id"] = ticket_id
        new.values["number"] = ticket_number(responder.cfg.ticket_prefix, now.year, ticket_id)
    for row, one, p, ticket, record in pending:
        if ticket is not None:
            finish(session, responder, row, one.msg, p, ticket, record, now, stats, writes, library,
                   one if one.plan is p else None)
    for outbox_id, (out, link) in zip(reserved_ids(session, OutboxMessage, len(writes.replies)), writes.replies):
        out["id"] = link["outbox_id"] = outbox_id
    writes.insert(session)
    for row, one, p, ticket, record in pending:
        if ticket is not None:  # drops were logged with their reasons
            log.info("message %s (Message-ID %s): %s %.2f, sender %s -> %s, ticket %s%s", row.id, row.message_id,
                     p.label, p.confidence, p.verification.status, p.decision.kind, ticket.number,
                     f", reply '{p.decision.template}' to {record['recipient']}" if record["recipient"] else "")
    return stats


def plan_row(responder: Responder, row: InboundMessage, msg: ParsedMessage, directory: Directory,
             counts: dict[str, int], followup: bool, duplicate_of: str | None,
             raw_of: Callable[[InboundMessage], bytes] | None, held: Sequence[Any] = (),
             foreign: str | None = None, examined: Examined | None = None) -> Plan:
    """Return the plan of one classified row (the cap counts answers to wherever the reply would go)."""
    dkim_ok = None
    if responder.cfg.verify_dkim and responder.dkim_check and raw_of:
        dkim_ok = responder.dkim_check(raw_of(row), msg.sender.rpartition("@")[2])
    language = choose_language(msg, row.language, row.desk, responder.desk)
    facts = dict(label=row.label or "other", confidence=float(row.confidence or 0.0), auto=row.auto,
                 language=language, directory=directory, followup=followup, dkim_ok=dkim_ok,
                 duplicate_of=duplicate_of, held=held, foreign_ticket=foreign, examined=examined)
    p = plan(responder, msg, recent_autoreplies=counts.get(msg.sender.lower(), 0), **facts)  # type: ignore[arg-type]
    if p.decision.to and counts.get(p.decision.to, 0) >= responder.cfg.autoreply_max:
        # Planned again under the cap: only the screen and the decision can change.
        p = plan(responder, msg, recent_autoreplies=responder.cfg.autoreply_max,  # type: ignore[arg-type]
                 verification=p.verification, **facts)
    return p


def open_ticket(session: Session, responder: Responder, row: InboundMessage, msg: ParsedMessage, p: Plan,
                thread: Ticket | None, now: dt.datetime, stats: BatchStats, writes: Writes,
                planned: Planned | None = None) -> tuple[Ticket | NewTicket | None, dict[str, Any]]:
    """Record the decision and open (or reopen) the ticket; nothing is written here (a new ticket
    is a row of ``writes``, given its id and number before the batch's inserts).  ``planned``:
    what was worked out for it before the write."""
    d = p.decision
    record: dict[str, Any] = dict(
        inbound_message_id=row.id, screen=p.screen.reason, screen_reasons=list(p.screen.reasons),
        verification=p.verification.status, verified_user_id=p.verification.user_id,
        verification_reasons=list(p.verification.reasons), action=d.kind, template=d.template,
        recipient=d.to, reasons=list(d.reasons) + [f"priority {p.priority}: {', '.join(p.priority_reasons)}"]
        if p.priority_reasons else list(d.reasons), ticket_id=None, created_at=now)
    writes.records.append(record)
    if d.kind == DROP_ACTION:
        stats.dropped += 1
        log.info("message %s (Message-ID %s) dropped: %s", row.id, row.message_id, ", ".join(p.screen.reasons))
        return None, record
    if thread is not None:
        thread.status = TICKET_OPEN
        thread.resolved_at = None
        thread.security = thread.security or d.security
        if p.priority == "high":
            thread.priority = "high"
        stats.followups += 1
        return thread, record
    # Written once, numbered and with its final status: as the ORM's insert then update left it
    # (that update set ``updated_at`` to the time of the write).
    ticket = NewTicket(dict(
        id=None, number=None, status=TICKET_OPEN, priority=p.priority, label=p.label, language=p.language,
        requester=msg.sender.lower(), user_id=p.verification.user_id, verification=p.verification.status,
        subject=planned.subject if planned and planned.due else redacted_record(msg.subject or "", 998),
        security=d.security, created_at=now, first_response_at=None,
        due_at=planned.due if planned and planned.due else responder.hours.due(row.received_at or now,
                                                                               responder.cfg.target_hours),
        resolved_at=None, last_error=None, updated_at=utcnow(), escalated_at=None, escalated_to=None))
    writes.tickets.append(ticket)
    stats.tickets += 1
    return ticket, record


def finish(session: Session, responder: Responder, row: InboundMessage, msg: ParsedMessage, p: Plan,
           ticket: Ticket | NewTicket, record: dict[str, Any], now: dt.datetime, stats: BatchStats,
           writes: Writes, library: Library | None = None, planned: Planned | None = None) -> None:
    """Keep the message on the (numbered) ticket, queue the triage item and the reply.

    The reply is ``planned.draft`` completed with the ticket's number when it
    can be (the same bytes, see :func:`responders.render.complete`), else built here.
    """
    d = p.decision
    if ticket.number is None:
        assert isinstance(ticket, Ticket)  # a new ticket is numbered with its reserved id
        ticket.number = ticket_number(responder.cfg.ticket_prefix, now.year, ticket.id)
    record["ticket_id"] = ticket.id
    excerpt = planned.excerpt if planned else redacted_record(msg.new_text or msg.text or "", 4000)
    writes.history.append(dict(ticket_id=ticket.id, direction="in", inbound_message_id=row.id, outbox_id=None,
                               message_id=msg.message_id, author=msg.sender.lower(), text=excerpt, created_at=now))
    followup = d.followup
    if d.kind == TRIAGE:
        reason = "followup" if followup else ("security" if d.security else "policy")
        writes.triage.append(dict(ticket_id=ticket.id, inbound_message_id=row.id, reason=reason, security=d.security,
                                  status="open", label=p.label, confidence=p.confidence, created_at=now,
                                  suggestion={"kind": d.kind, "template": d.template, "to": d.to,
                                              "reasons": list(d.reasons)}))
        stats.triage += 1
    if not d.template or not d.to:
        return
    number = ticket.number or ""
    try:
        reply = completed(responder, msg, p, number, planned.draft if planned else None) or render(
            responder, msg, p, number, duty_context(responder, library or Library(), d.template, p.label,
                                                    p.language, now))
    except Exception as exc:  # noqa: BLE001 - RenderError, or anything a hostile message provokes: no reply
        record["reasons"] = list(record["reasons"] or []) + [f"no reply: {exc}"]
        record["recipient"] = None
        log.warning("message %s: reply not built: %s", row.id, exc)
        if d.kind != TRIAGE:
            writes.triage.append(dict(ticket_id=ticket.id, inbound_message_id=row.id, reason="reply_failed",
                                      security=d.security, status="open", label=p.label, confidence=p.confidence,
                                      created_at=now, suggestion=None))
        return
    out = dict(inbound_message_id=row.id, ticket_id=ticket.id, mail_from=reply.mail_from, rcpt_to=[reply.to],
               message_id=reply.message_id, template=reply.template, raw=reply.raw, status=PENDING, attempts=0,
               next_attempt_at=now, lease_until=None, last_error=None, created_at=now, sent_at=None)
    history = dict(ticket_id=ticket.id, direction="out", inbound_message_id=None, outbox_id=None,
                   message_id=reply.message_id, author=reply.mail_from, text=reply.text[:4000], created_at=now)
    writes.replies.append((out, history))
    writes.history.append(history)
    if d.kind == REPLY:
        ticket.status = TICKET_ANSWERED
        stats.replies += 1
    writes.autoreplies.append(dict(recipient=reply.to, at=now))


def completed(responder: Responder, msg: ParsedMessage, p: Plan, number: str, draft: Draft | None) -> Reply | None:
    """Return ``draft`` completed with ticket ``number`` (what :func:`render` would build), or None."""
    d = p.decision
    if draft is None or (draft.template, draft.language, draft.to) != (d.template, p.language, d.to):
        return None
    try:
        return complete(draft, number, redact(reply_subject(msg.subject, number, responder.cfg.ticket_prefix,
                                                            p.language)), responder.secret)
    except Exception:  # noqa: BLE001 - not expected; then it is built as it always was
        log.debug("message: draft not completed", exc_info=True)
        return None


def enqueue(session: Session, reply: Reply, ticket: Ticket, inbound_id: int | None,
            now: dt.datetime) -> tuple[OutboxMessage, TicketMessage]:
    """Write ``reply`` to the outbox (and the ticket's history) in the caller's transaction."""
    out = OutboxMessage(inbound_message_id=inbound_id, ticket_id=ticket.id, mail_from=reply.mail_from,
                        rcpt_to=[reply.to], message_id=reply.message_id, template=reply.template, raw=reply.raw,
                        status=PENDING, attempts=0, next_attempt_at=now, created_at=now)
    session.add(out)
    history = TicketMessage(ticket_id=ticket.id, direction="out", message_id=reply.message_id,
                            author=reply.mail_from, text=reply.text[:4000], created_at=now)
    session.add(history)
    session.flush()
    history.outbox_id = out.id
    return out, history


# --- dry run (acedesk triage --json) ------------------------------------------------------


def dry_run(session: Session | None, responder: Responder, msg: ParsedMessage, *, label: str, confidence: float,
            auto: bool | None, language: str | None, desk_address: str,
            dkim_ok: bool | None = None) -> dict[str, Any]:
    """Return what the daemon would do with ``msg``, writing nothing (the triage JSON fields)."""
    directory = Directory()
    thread = None
    foreign = None
    recent = 0
    held: Sequence[Any] = ()
    library = Library()
    incident = None
    if session is not None:
        directory = load_directory(session, [msg.sender], [msg.classifier_text],
                                   directory_index(session, responder), known_domains(session, responder))
        held = load_held(session, [msg.sender], [u.user_id for u in directory.users])
        library = load_library(session)
        incident = incidents.open_incident_for(session, responder.incidents.label)
        recent = recent_counts(session, [msg.sender], responder.cfg.autoreply_window, utcnow()).get(
            msg.sender.lower(), 0)
        probe = screen(msg, ScreenContext(responder.desk.own_addresses, responder.desk.domain, responder.secret))
        if probe.verdict != "drop":
            thread = find_thread(session, responder, msg, probe.our_ticket)
            foreign = None if thread is not None else foreign_ticket(session, responder, msg)
    lang = choose_language(msg, language, desk_address, responder.desk)
    p = plan(responder, msg, label=label, confidence=confidence, auto=auto, language=lang,
             directory=directory, recent_autoreplies=recent, followup=thread is not None, dkim_ok=dkim_ok,
             held=held, foreign_ticket=foreign)
    now = responder.clock()
    number = f"{responder.cfg.ticket_prefix}-{now.year}-DRYRUN"
    extra = duty_context(responder, library, p.decision.template, p.label, lang, now)
    if incident is not None and incidents.wants(responder.incidents, p, thread):
        p = incidents.outage_plan(p)
        number = incident.number or number
        extra.update(incidents.outage_context(incident, library, responder.hours,
                                              responder.incidents.dashboard_article, lang))
    d = p.decision
    out: dict[str, Any] = {
        "screen": p.screen.reason,
        "screen_reasons": list(p.screen.reasons),
        "verification": p.verification.to_dict(),
        "action": {"kind": d.kind, "template": d.template, "to": d.to, "security": d.security,
                   "reasons": list(d.reasons)},
        "priority": p.priority,
        "language": lang,
    }
    if thread is not None:
        out["action"]["ticket"] = thread.number
    if incident is not None and incidents.wants(responder.incidents, p, thread):
        out["action"]["incident"] = incident.number
    if d.template and d.to:
        try:
            reply = render(responder, msg, p, number, extra)
            out["reply"] = {"to": reply.to, "subject": reply.subject, "text": reply.text}
        except Exception as exc:  # noqa: BLE001 - as the daemon: no reply, with the reason
            out["action"]["reasons"].append(f"no reply: {exc}")
    return out


def redacted_record(text: str, limit: int) -> str:
    """Return a sender's words as the desk stores them: SSN-shaped numbers redacted, capped."""
    return redact(text)[:limit]
