"""Alembic migrations of the PostgreSQL job store, applied by ``jobs.pg_store.migrate`` at start-up."""
