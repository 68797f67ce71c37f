"""Alembic migrations of the store (run to head by `Store.open`)."""
