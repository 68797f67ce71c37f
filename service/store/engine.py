"""Engine creation and migrations: SQLite (WAL) by default, PostgreSQL (psycopg 3) by URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.pool import StaticPool

from service.store.rows import json_dumps

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 10_000
# Any constant works; it only has to be the same in every replica (pg_advisory_xact_lock key).
_PG_MIGRATION_LOCK = 0x6D6C6C6D  # "mllm"

# Execution option: begin this connection's transaction as a writer (SQLite `BEGIN IMMEDIATE`).
WRITE = {"calib_write": True}


def normalize_url(url: str | URL) -> URL:
    """Parse `url`; a bare `postgresql://` URL gets the psycopg 3 driver we ship."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def create_store_engine(url: str | URL) -> Engine:
    """An engine configured for the gateway's access pattern (many short transactions)."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed)
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "pool_size": 10, "max_overflow": 20}
    return sa.create_engine(parsed, json_serializer=json_dumps, **kwargs)


def _sqlite_engine(url: URL) -> Engine:
    # `?timeout=SECONDS` in the URL (pysqlite's own knob) sets how long a writer waits for the lock.
    timeout = url.query.get("timeout", str(SQLITE_BUSY_TIMEOUT_MS / 1000))
    if isinstance(timeout, tuple):
        raise ValueError(f"?timeout= is given {len(timeout)} times in the database URL")
    busy_timeout_ms = int(float(timeout) * 1000)
    database = url.database or ""
    in_memory = database in ("", ":memory:") or database.startswith("file::memory:")
    if in_memory:
        engine = sa.create_engine(
            url,
            poolclass=StaticPool,
            connect_args={"check_same_thread": False},
            json_serializer=json_dumps,
        )
    else:
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            url, connect_args={"check_same_thread": False}, json_serializer=json_dumps
        )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy (not the sqlite3 module) emit BEGIN, so we can choose IMMEDIATE below
        # and DDL is transactional.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # A writer takes the write lock up front: a deferred transaction that reads and then
        # writes can fail with SQLITE_BUSY immediately (busy_timeout does not apply to lock
        # upgrades), whereas IMMEDIATE simply waits its turn.
        immediate = conn.get_execution_options().get("calib_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade the schema to `revision`, serialized across processes and replicas."""
    cfg = alembic_config()
    with engine.connect() as conn:
        conn.execution_options(**WRITE)
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK}
                )
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
