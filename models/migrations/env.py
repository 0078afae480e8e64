"""Alembic environment: runs on the engine handed over by ``models.migrate``."""

from __future__ import annotations

from alembic import context

from models.session import WRITER

connectable = context.config.attributes["engine"]

# A writer: on SQLite two instances upgrading at once queue for the lock.
with connectable.connect().execution_options(**{WRITER: True}) as connection:
    context.configure(connection=connection, render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
