"""Migrations create the schema the code expects, on SQLite and PostgreSQL, idempotently."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from service.store import Store
from service.store.schema import metadata
from tests.store.legacy import insert_legacy

TABLES = {"predictions", "feedback", "profiles", "api_keys", "leases", "alembic_version"}


def test_open_creates_every_table(store: Store) -> None:
    assert set(sa.inspect(store.engine).get_table_names()) >= TABLES


def test_open_twice_is_idempotent(store_url: str, make_prediction) -> None:
    first = Store.open(store_url)
    first.insert_predictions([make_prediction(id="kept")])
    first.close()
    second = Store.open(store_url)
    assert second.get_prediction("kept") is not None
    with second.engine.connect() as conn:
        versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
    assert len(versions) == 1
    second.close()


def test_migrations_match_the_models(store: Store) -> None:
    """The migrated schema and `schema.metadata` agree (no autogenerate diff)."""
    with store.engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": False}), metadata
        )
    assert diff == []


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'x.db'}")
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    store.close()
    with sqlite3.connect(tmp_path / "x.db") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_store_creates_missing_directories(tmp_path: Path) -> None:
    store = Store.open(f"sqlite:///{tmp_path / 'a' / 'b' / 'calib.db'}")
    store.ping()
    store.close()
    assert (tmp_path / "a" / "b" / "calib.db").exists()


def test_bare_postgresql_url_uses_psycopg() -> None:
    from service.store.engine import normalize_url

    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg"


def test_an_older_database_is_upgraded_in_place(store_url: str, make_prediction) -> None:
    from service.store.engine import create_store_engine, migrate

    engine = create_store_engine(store_url)
    migrate(engine, "0001")  # a database created by the first release
    record = make_prediction(id="from-0001")
    with engine.begin() as conn:
        insert_legacy(conn, [record])
    assert "leases" not in sa.inspect(engine).get_table_names()
    engine.dispose()
    upgraded = Store.open(store_url)
    assert upgraded.get_prediction("from-0001") == record
    assert upgraded.acquire_lease("x", "me", 1)
    upgraded.close()
