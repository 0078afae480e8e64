"""The pipeline table: which stages run, in which order, over inbound messages.

ingest -> parse -> (screen, classify) -> (verify, decide, act); CSMS commands and
bounces go parse -> csms.  A stage that
is not available (no model yet, say) is left out and its messages wait in the
state before it.  The order is a literal tuple, not plugin discovery.
"""

from __future__ import annotations

import logging

from daemon.stages import classify as stage_classify
from daemon.stages import csms as stage_csms
from daemon.stages import parse as stage_parse
from daemon.stages import respond as stage_respond
from daemon.context import AppContext
from daemon.worker import Stage

log = logging.getLogger("acedesk.pipeline")

STAGE_MAKERS = (
    stage_parse.make_stage,
    stage_classify.make_stage,
    stage_respond.make_stage,
    stage_csms.make_stage,
)


def build_stages(ctx: AppContext) -> list[Stage]:
    """Return the stages that can run with this configuration, in pipeline order."""
    stages = []
    for make in STAGE_MAKERS:
        stage = make(ctx)
        if stage is None:
            log.warning("pipeline stage from %s is not available; its messages wait", make.__module__)
            continue
        stages.append(stage)
    return stages
