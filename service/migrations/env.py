"""Alembic environment for the store.

`Store.open` runs migrations programmatically and hands over its own connection (already inside
a transaction, holding the migration lock) in ``config.attributes["connection"]``. Run from the
command line (``alembic -c service/migrations/alembic.ini upgrade head``) it connects to
``CALIB_DB`` / the default settings URL instead.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from service.store.schema import metadata


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    from service.settings import load_settings

    url = context.config.get_main_option("sqlalchemy.url") or load_settings().database_url
    engine = create_engine(url)
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()


if context.is_offline_mode():  # pragma: no cover - SQL scripts are not part of our workflow
    context.configure(url=context.config.get_main_option("sqlalchemy.url"))
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
