"""Alembic: every revision walks down and up, and the migrated schema is
exactly what the ORM models declare, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

import models
from models.migrate import current_revisions, downgrade, head_revisions, upgrade
from models.session import make_engine


def test_upgrade_downgrade_upgrade_and_schema_matches_models(db_url):
    engine = make_engine(db_url)
    try:
        upgrade(engine)
        assert current_revisions(engine) == head_revisions(engine)
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}),
                                    models.Base.metadata)
        assert diff == [], f"migrations and models disagree: {diff}"
        downgrade(engine, "base")
        assert current_revisions(engine) == set()
        upgrade(engine)
        assert current_revisions(engine) == head_revisions(engine)
    finally:
        engine.dispose()
