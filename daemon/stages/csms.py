"""The csms stage (csms -> done): hands subscription commands and delivery
reports to :mod:`csms.mail_commands`, and wakes the outbox once its answers
are committed."""

from __future__ import annotations

from sqlalchemy import event
from sqlalchemy.orm import Session

from csms.mail_commands import Addresses, csms_desk, csms_rows
from daemon.config import DeskConfig
from daemon.context import AppContext
from daemon.notices.fanout import load_signer
from daemon.worker import Stage
from models.core import CSMS, InboundMessage


def addresses(desk: DeskConfig) -> Addresses:
    return Addresses(domain=desk.domain, request=desk.csms_request_address, bounce_address=desk.bounce_address,
                     own=frozenset(desk.all_own_addresses()))


def make_stage(ctx: AppContext) -> Stage:
    d = csms_desk(addresses(ctx.config.desk), ctx.config.csms, load_signer(ctx.config))
    wake_outbox = ctx.waker("outbox")

    def process(session: Session, rows: list[InboundMessage]) -> None:
        csms_rows(d, session, rows)
        # Wake the sender once the answers are committed (harmless when there are none).
        event.listen(session, "after_commit", wake_outbox, once=True)

    return Stage(name="csms", consumes=CSMS, process=process, needs_raw=True, needs_parsed=True, batch_size=50)
