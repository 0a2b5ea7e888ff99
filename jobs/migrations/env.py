"""Alembic's environment: always online, on the connection ``jobs.pg_store.migrate`` passes in."""

from __future__ import annotations

from alembic import context

context.configure(connection=context.config.attributes["connection"], target_metadata=None)
with context.begin_transaction():
    context.run_migrations()
