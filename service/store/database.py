"""`Database`: the one transaction helper and the one error translation every repository uses.

A repository never opens a connection itself: it asks `Database.tx()` for one short transaction,
so every query in the store reports failures the same way — `StoreUnavailable` when the database
cannot be reached (retry later), `StoreError` for anything else SQLAlchemy raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from service.store.engine import WRITE
from service.store.errors import StoreError, StoreUnavailable

_IN_CHUNK = 500  # ids per `IN (...)`: well under SQLite's and PostgreSQL's parameter limits
T = TypeVar("T")


class Database:
    """An engine plus the transaction and error rules shared by the repositories."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def errors(self) -> Iterator[None]:
        """Translate SQLAlchemy failures into `StoreUnavailable` / `StoreError`."""
        try:
            yield
        except (sa_exc.OperationalError, sa_exc.InterfaceError) as error:
            raise StoreUnavailable(f"database unavailable: {_short(error)}") from error
        except (sa_exc.DisconnectionError, sa_exc.TimeoutError) as error:
            raise StoreUnavailable(f"database unavailable: {_short(error)}") from error
        except sa_exc.DBAPIError as error:
            if error.connection_invalidated:
                raise StoreUnavailable(f"database unavailable: {_short(error)}") from error
            raise StoreError(f"database error: {_short(error)}") from error
        except sa_exc.SQLAlchemyError as error:
            raise StoreError(f"database error: {_short(error)}") from error

    @contextmanager
    def tx(self, *, write: bool = False) -> Iterator[sa.Connection]:
        """One transaction, committed when the block ends (rolled back if it raises)."""
        with self.errors(), self.engine.connect() as conn:
            if write:
                conn.execution_options(**WRITE)
            with conn.begin():
                yield conn

    def insert_ignore(self, table: sa.Table, keys: list[str]) -> Any:
        """An INSERT that skips rows whose `keys` are already stored."""
        if self.dialect == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing(index_elements=keys)
        if self.dialect == "sqlite":
            return sqlite.insert(table).on_conflict_do_nothing(index_elements=keys)
        return sa.insert(table)

    def upsert(self, table: sa.Table) -> Any:
        """The dialect's INSERT that supports `on_conflict_do_update`."""
        return (postgresql if self.dialect == "postgresql" else sqlite).insert(table)

    @staticmethod
    def select_in(
        conn: sa.Connection, query: sa.Select[Any], column: sa.Column[Any], values: list[Any]
    ) -> Iterable[Any]:
        """Rows of `query` whose `column` is in `values`, in chunks the drivers accept."""
        for start in range(0, len(values), _IN_CHUNK):
            chunk = values[start : start + _IN_CHUNK]
            yield from conn.execute(query.where(column.in_(chunk))).mappings()


def is_conflict(error: StoreError) -> bool:
    """Whether a `StoreError` came from a unique constraint (another writer got there first)."""
    return isinstance(error.__cause__, sa_exc.IntegrityError)


def retry_on_conflict(attempt: Callable[[], T], *, tries: int = 3) -> T:
    """Run `attempt` again when a concurrent writer took the same key (PostgreSQL replicas):
    the next run sees that writer's row."""
    for n in range(tries):
        try:
            return attempt()
        except StoreError as error:
            if not is_conflict(error) or n == tries - 1:
                raise
    raise AssertionError("unreachable")


def _short(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error)
    return text.splitlines()[0][:300] if text else type(error).__name__
