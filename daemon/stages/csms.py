"""The csms stage (csms -> done): claims the rows addressed to the CSMS
request and bounce addresses and hands them to :mod:`csms.mail_commands`,
where the use cases live (double opt-in commands, bounces, complaints)."""

from __future__ import annotations

from sqlalchemy import event
from sqlalchemy.orm import Session

from csms.dkim import DkimKey
from csms.mail_commands import CsmsDesk, csms_rows
from csms.tokens import Signer
from daemon.config import Config
from daemon.context import AppContext
from daemon.notices import keys
from daemon.notices.fanout import load_signer
from daemon.worker import Stage
from models.core import CSMS, InboundMessage
from responders.screen import ScreenContext


def csms_desk(config: Config, signer: Signer, dkim: DkimKey | None = None) -> CsmsDesk:
    desk = config.desk
    # The screening secret only recognises our signed help-desk Message-IDs, which
    # automatic_reasons does not need: own addresses and domain are what count here.
    screen = ScreenContext(own_addresses=frozenset(desk.all_own_addresses()), domain=desk.domain, secret=b"")
    return CsmsDesk(desk=desk, cfg=config.csms, signer=signer, screen=screen, dkim=dkim)


def make_stage(ctx: AppContext) -> Stage:
    d = csms_desk(ctx.config, load_signer(ctx.config), keys.dkim_key(ctx.config))
    wake_outbox = ctx.waker("outbox")

    def process(session: Session, rows: list[InboundMessage]) -> None:
        csms_rows(d, session, rows)
        # Wake the sender once the answers are committed (harmless when there are none).
        event.listen(session, "after_commit", wake_outbox, once=True)

    return Stage(name="csms", consumes=CSMS, process=process, needs_raw=True, needs_parsed=True, batch_size=50)
