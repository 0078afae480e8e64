"""Create or migrate the database with Alembic, programmatically.

Revisions live in ``models/migrations/versions``.  ``0001`` is the core; each
area (classification, responders, outbox, csms) adds its own branch on top of
it, so ``upgrade`` goes to all ``heads``.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(engine: Engine) -> AlembicConfig:
    """Return an Alembic config that runs on ``engine``'s connection."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, target: str = "heads") -> None:
    """Migrate the database up to ``target`` (default: every head)."""
    command.upgrade(alembic_config(engine), target)


def downgrade(engine: Engine, target: str = "base") -> None:
    """Migrate the database down to ``target``."""
    command.downgrade(alembic_config(engine), target)


def current_revisions(engine: Engine) -> set[str]:
    """Return the revisions the database is at (empty when it was never migrated)."""
    with engine.connect() as conn:
        return set(MigrationContext.configure(conn).get_current_heads())


def head_revisions(engine: Engine) -> set[str]:
    """Return the newest revisions this code knows."""
    return set(ScriptDirectory.from_config(alembic_config(engine)).get_heads())


def is_current(engine: Engine) -> bool:
    """Return whether the database is migrated to this code's heads."""
    return current_revisions(engine) == head_revisions(engine)
