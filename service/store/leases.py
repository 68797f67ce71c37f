"""Leases: who runs a singleton job (a refit, a prompt optimization) across replicas."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from service.store import schema
from service.store.database import Database, is_conflict
from service.store.errors import StoreError
from service.store.records import utcnow

_L = schema.leases


class LeaseRepository:
    """Expiring named locks in the database: a crashed holder's lease simply expires."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def acquire_lease(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take (or extend) the lease `name` for `ttl_s` seconds; False if someone else holds
        an unexpired one. Works across replicas; a crashed holder's lease simply expires."""
        now = utcnow()
        expires = now + timedelta(seconds=ttl_s)
        try:
            with self._db.tx(write=True) as conn:
                taken = conn.execute(
                    sa.update(_L)
                    .where(_L.c.name == name, sa.or_(_L.c.holder == holder, _L.c.expires_at <= now))
                    .values(holder=holder, acquired_at=now, expires_at=expires)
                ).rowcount
                if taken:
                    return True
                if conn.execute(sa.select(_L.c.name).where(_L.c.name == name)).first():
                    return False
                conn.execute(
                    sa.insert(_L).values(
                        name=name, holder=holder, acquired_at=now, expires_at=expires
                    )
                )
                return True
        except StoreError as error:
            if is_conflict(error):
                return False  # another holder inserted it first
            raise

    def release_lease(self, name: str, holder: str) -> None:
        """Give the lease up (only if `holder` still holds it)."""
        with self._db.tx(write=True) as conn:
            conn.execute(sa.delete(_L).where(_L.c.name == name, _L.c.holder == holder))
