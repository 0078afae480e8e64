"""SQLAlchemy 2 ORM and Alembic migrations: the one place that knows tables.

Importing this package registers every table on ``Base.metadata``.
"""

from models import analysts, classification, core, csms, duties, outbox, responders  # noqa: F401  (register tables)
from models.base import Base

__all__ = ["Base"]
