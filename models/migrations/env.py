"""Alembic environment: runs on the engine handed over by ``models.migrate``."""

from __future__ import annotations

from alembic import context

connectable = context.config.attributes["engine"]

with connectable.connect() as connection:
    context.configure(connection=connection, render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
