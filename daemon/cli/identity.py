"""Who the command line acts as: an analyst account on file, as a console login is.

A command that changes something (the queue, CSMS notices and subscribers,
articles, incidents, account status) acts as ``--as NAME``, else
``$ACEDESK_ANALYST``, else the login name (``SUDO_USER`` under sudo).  That
name must be an active account of ``acedesk analysts``; the command then has
that account's role, with the console's checks (publishers and admins publish
CSMS, admins retire articles), and the audit log records the same name
whichever side acted.  An unknown or disabled name is refused in one line
naming it (exit 2), before anything changes.

A desk with no analyst account at all (a fresh install, before the first
``acedesk analysts add``) is run by its operator: commands then act as
``operator:LOGIN`` with every role, so that scripts work on a new database.
Naming someone (``--as`` or ``$ACEDESK_ANALYST``) still needs their account.
"""

from __future__ import annotations

import argparse
import getpass
import os
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from daemon.errors import CommandError
from models.analysts import ANALYST, ROLES, Analyst

ENV = "ACEDESK_ANALYST"


def add_option(parser: argparse.ArgumentParser) -> None:
    """Give a command the ``--as NAME`` option (``--by``, its older spelling, still works)."""
    parser.add_argument("--as", dest="as_analyst", metavar="ANALYST", default=None,
                        help=f"act as this analyst account (default: ${ENV}, else your login name); "
                             "its role decides what is allowed")
    parser.add_argument("--by", dest="as_analyst", default=None, help=argparse.SUPPRESS)


def login_name() -> str:
    """The person at the terminal (the one who ran sudo, under sudo)."""
    try:
        return os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def acting_name(session: Session, named: str, role: str = ANALYST) -> str:
    """The audit name of the account a command acts as, after the console's role check.

    ``named`` is what the user said (``--as`` or ``$ACEDESK_ANALYST``); empty means the login name.
    """
    name = (named or login_name()).strip().lower()
    analyst = session.scalar(select(Analyst).where(Analyst.name == name))
    if analyst is None:
        if not named and not session.scalar(select(func.count()).select_from(Analyst)):
            return f"operator:{name}"[:200]
        where = f"named by --as or ${ENV}" if named else f"your login name; give --as NAME or set ${ENV}"
        raise CommandError(f"no analyst account {name!r} ({where}); see 'acedesk analysts list'. "
                           "Nothing was changed.")
    if analyst.disabled:
        raise CommandError(f"analyst {analyst.name} is disabled ('acedesk analysts enable {analyst.name}'). "
                           "Nothing was changed.")
    if ROLES.index(analyst.role) < ROLES.index(role):
        raise CommandError(f"this needs the {role} role; {analyst.name} is {analyst.role}. Nothing was changed.")
    return analyst.name


def acting(lazy: Any, args: argparse.Namespace, role: str = ANALYST) -> str:
    """:func:`acting_name` for a command's arguments, in a session of its own."""
    named = getattr(args, "as_analyst", None) or os.environ.get(ENV, "")
    with lazy.ctx.sessions() as session:
        return acting_name(session, named, role)


def check_assignee(lazy: Any, name: str) -> str:
    """``name`` if it is an active analyst (whom an item can be given to); else a clear refusal."""
    if not name:
        return name
    with lazy.ctx.sessions() as session:
        analyst = session.scalar(select(Analyst).where(Analyst.name == name.strip().lower()))
        if analyst is None:
            if not session.scalar(select(func.count()).select_from(Analyst)):
                return name
            raise CommandError(f"no analyst account {name!r} to assign to; see 'acedesk analysts list'. "
                               "Nothing was changed.")
        if analyst.disabled:
            raise CommandError(f"analyst {analyst.name} is disabled: assign the item to someone else. "
                               "Nothing was changed.")
        return analyst.name


def audit(session: Session, actor: str, action: str, subject_type: str, subject_id: object,
          detail: dict[str, Any] | None = None) -> None:
    """Record what the command did, under the account it acted as (the console's entry, word for word)."""
    from models.base import utcnow
    from models.core import AuditEntry

    session.add(AuditEntry(at=utcnow(), actor=actor, action=action, subject_type=subject_type,
                           subject_id=str(subject_id)[:64], detail=detail))
