"""The daemon's own Prometheus instruments (prometheus-client): what happens in
this process and is not in the database -- stage batch latency, IMAP errors.
Counts that live in the database (messages by state, queues, SMTP failures) are read
at scrape time by ``daemon.web.ops``.

Instruments are module-level, as prometheus-client intends: they are
process-wide facts, not configuration.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

STAGE_SECONDS = Histogram("acedesk_stage_batch_seconds", "Time one pipeline stage took over one batch",
                          ["stage"], registry=REGISTRY,
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
STAGE_MESSAGES = Counter("acedesk_stage_messages", "Messages a pipeline stage handled", ["stage"],
                         registry=REGISTRY)
IMAP_ERRORS = Counter("acedesk_imap_errors", "IMAP connection or protocol errors", ["mailbox"],
                      registry=REGISTRY)
