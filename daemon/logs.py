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


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is *now*, not the one at set-up.

    Why: a handler bound to the stream at set-up keeps writing to it after it
    is replaced and closed (embedding, test capture), and logging then prints
    "--- Logging error ---" instead of the record.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001
        pass


def setup_logging(cfg: LoggingConfig, level_override: str | None = None) -> None:
    """Configure the root logger once for the process."""
    handler = StderrHandler()
    if cfg.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_override or cfg.level)
    # Libraries are chatty at INFO; their warnings still show.
    for name in ("aiosmtpd", "mail.log", "imapclient", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)
