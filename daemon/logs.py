"""Logging set-up: one readable line per event for operators (journald adds
the time), or JSON lines for log shippers."""

from __future__ import annotations

import json
import logging
import sys

from daemon.config import LoggingConfig


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def setup_logging(cfg: LoggingConfig, level_override: str | None = None) -> None:
    """Configure the root logger once for the process."""
    handler = logging.StreamHandler(sys.stderr)
    if cfg.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_override or cfg.level)
    # Libraries are chatty at INFO; their warnings still show.
    for name in ("mail-parser", "mailparser", "aiosmtpd", "mail.log", "imapclient", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)
