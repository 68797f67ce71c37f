"""API keys: stored as a hash only; revoked, never deleted (their feedback stays auditable)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import asdict
from typing import Any

import sqlalchemy as sa

from service.store import schema
from service.store.database import Database
from service.store.errors import DuplicateKeyName, KeyNotFound
from service.store.records import KeyRecord, utcnow

KEY_PREFIX = "sk-calib-"
ROLES = ("client", "admin")
DEFAULT_TENANT = "default"
_K = schema.api_keys


def hash_key(plaintext: str) -> str:
    """The stored form of an API key: SHA-256 of a 256-bit random secret needs no salt."""
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


class KeyRepository:
    """Create, look up, list and revoke API keys."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def create_key(self, name: str, role: str, tenant: str | None = None) -> tuple[str, KeyRecord]:
        """Create a key; returns the plaintext (shown once, never stored) and its record."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {role!r}")
        if not name or len(name) > 128:
            raise ValueError("key name must be 1-128 characters")
        plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
        record = KeyRecord(
            id="key_" + secrets.token_hex(8),
            name=name,
            role=role,  # type: ignore[arg-type]
            tenant=tenant or DEFAULT_TENANT,
            prefix=plaintext[: len(KEY_PREFIX) + 4],
            created_at=utcnow(),
        )
        with self._db.tx(write=True) as conn:
            taken = conn.execute(
                sa.select(_K.c.id).where(_K.c.name == name, _K.c.revoked_at.is_(None))
            ).first()
            if taken is not None:
                raise DuplicateKeyName(f"an active key named {name!r} already exists")
            conn.execute(sa.insert(_K).values(**asdict(record), key_hash=hash_key(plaintext)))
        return plaintext, record

    def find_key(self, plaintext: str) -> KeyRecord | None:
        """The active key with this plaintext, or None (unknown or revoked)."""
        query = sa.select(_K).where(_K.c.key_hash == hash_key(plaintext))
        with self._db.tx() as conn:
            row = conn.execute(query).mappings().first()
        if row is None or row["revoked_at"] is not None:
            return None
        return _key_from_row(row)

    def count_keys(self) -> int:
        """Number of active (not revoked) keys."""
        query = sa.select(sa.func.count()).select_from(_K).where(_K.c.revoked_at.is_(None))
        with self._db.tx() as conn:
            return int(conn.execute(query).scalar_one())

    def list_keys(self, *, include_revoked: bool = True) -> list[KeyRecord]:
        query = sa.select(_K).order_by(_K.c.created_at, _K.c.id)
        if not include_revoked:
            query = query.where(_K.c.revoked_at.is_(None))
        with self._db.tx() as conn:
            return [_key_from_row(row) for row in conn.execute(query).mappings()]

    def revoke_key(self, name_or_id: str) -> list[KeyRecord]:
        """Revoke the active key(s) with this name or id; raises `KeyNotFound` if none."""
        now = utcnow()
        match = sa.or_(_K.c.name == name_or_id, _K.c.id == name_or_id)
        with self._db.tx(write=True) as conn:
            rows = (
                conn.execute(sa.select(_K).where(match, _K.c.revoked_at.is_(None))).mappings().all()
            )
            if not rows:
                raise KeyNotFound(f"no active key named {name_or_id!r}")
            ids = [row["id"] for row in rows]
            conn.execute(sa.update(_K).where(_K.c.id.in_(ids)).values(revoked_at=now))
        return [_key_from_row({**row, "revoked_at": now}) for row in rows]


def _key_from_row(row: Any) -> KeyRecord:
    return KeyRecord(
        id=row["id"],
        name=row["name"],
        role=row["role"],
        tenant=row["tenant"],
        prefix=row["prefix"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
    )
