"""The pipeline table: the path of an inbound message, read top to bottom.

Each row is ``(state consumed, stage, states produced)``.  A stage claims rows
in the state it consumes and moves each to one of the states it produces, in
the transaction that claimed it (``daemon.worker``).  Every stage guards each
message: what fails, or overruns ``[pipeline] message_seconds`` /
``message_memory``, is ``quarantined`` with its reason (``daemon.intake.quarantine``),
and the next message goes on.  Where each step lives:

* parse -- ``daemon/stages/parse.py`` over ``daemon/intake/parse.py``; screening
  for automatic mail is ``responders.screen.AUTOMATIC``, run here, *before*
  classification, so an auto-reply, a list message or a bounce is never
  classified;
* classify -- ``daemon/stages/classify.py`` over ``classifiers/``;
* respond -- ``daemon/stages/respond.py`` over ``responders/service.py``: screen
  (``responders.screen``: the checks that need the database -- duplicates,
  replies to our own auto-replies, the per-recipient cap), verify
  (``responders.trust`` + ``responders.verify.VERIFY``), decide
  (``responders.policy.DECIDE``), act (ticket, triage item, outbox row);
* csms -- ``daemon/stages/csms.py`` over ``csms/mail_commands.py``: subscription
  commands, notice bounces and complaints.

A stage that is not available (no model yet, say) is left out and its
messages wait in the state before it.  The order is a literal tuple, not
plugin discovery.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from daemon.context import AppContext
from daemon.stages import classify as stage_classify
from daemon.stages import csms as stage_csms
from daemon.stages import parse as stage_parse
from daemon.stages import respond as stage_respond
from daemon.worker import Stage
from models.core import CLASSIFIED, CSMS, DONE, NEW, PARSED, QUARANTINED, SCREENED

log = logging.getLogger("acedesk.pipeline")

#: (state consumed, stage, states produced), top to bottom: the path of a message.
PIPELINE: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (NEW, "parse", (PARSED, SCREENED, CSMS, QUARANTINED)),     # parse; automatic mail screened out here
    (PARSED, "classify", (CLASSIFIED, QUARANTINED)),            # label, confidence, language
    (CLASSIFIED, "respond", (DONE, QUARANTINED)),               # screen, verify, decide, act
    (SCREENED, "respond", (DONE, QUARANTINED)),                 # automatic mail: recorded and dropped
    (CSMS, "csms", (DONE, QUARANTINED)),                        # subscription commands, notice bounces
)

#: How each stage is built from the configuration (None: not available now).
MAKERS: dict[str, Callable[[AppContext], Stage | None]] = {
    "parse": stage_parse.make_stage,
    "classify": stage_classify.make_stage,
    "respond": stage_respond.make_stage,
    "csms": stage_csms.make_stage,
}


def build_stages(ctx: AppContext) -> list[Stage]:
    """Return one runnable stage per row of :data:`PIPELINE` that can run with this configuration."""
    built: dict[str, Stage | None] = {}
    stages = []
    for consumed, name, produced in PIPELINE:
        if name not in built:
            built[name] = MAKERS[name](ctx)
            if built[name] is None:
                log.warning("pipeline stage %s is not available; messages wait in '%s'", name, consumed)
        stage = built[name]
        if stage is not None:
            stages.append(dataclasses.replace(stage, consumes=consumed, produces=produced))
    return stages
