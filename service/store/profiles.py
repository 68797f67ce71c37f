"""Profile versions: every calibration profile of a (model, task), at most one of them active.

Versions are append-only; activating one (a refit, a manual edit, a rollback) only moves the
`active` flag, so every earlier state can be served again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from service.store import schema
from service.store.database import Database, retry_on_conflict
from service.store.errors import ProfileNotFound
from service.store.records import ProfileVersion, utcnow

if TYPE_CHECKING:
    from calibrators import Profile

_PR = schema.profiles


def _profile_cls() -> type[Profile]:
    from calibrators import Profile  # imported late: the store works without profiles loaded

    return Profile


class ProfileRepository:
    """Store, read and activate profile versions."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def active_profile(self, model: str, task: str = "default") -> Profile | None:
        """The active `calibrators.Profile` of (model, task), or None."""
        query = (
            sa.select(_PR.c.data)
            .where(_PR.c.model == model, _PR.c.task == task, _PR.c.active.is_(True))
            .order_by(_PR.c.version.desc())
            .limit(1)
        )
        with self._db.tx() as conn:
            data = conn.execute(query).scalar_one_or_none()
        return None if data is None else _profile_cls().from_dict(data)

    def save_profile(
        self,
        profile: Profile,
        *,
        activate: bool,
        reason: str,
        metrics: dict[str, Any] | None = None,
    ) -> Profile:
        """Store `profile` as the next version of its (model, task) and return it so numbered.

        A concurrent save that took the same version number makes this take the next one."""
        base = profile.to_dict()
        model, task = base["model"], base["task"]

        def attempt() -> dict[str, Any]:
            with self._db.tx(write=True) as conn:
                current: int | None = conn.execute(
                    sa.select(sa.func.max(_PR.c.version)).where(
                        _PR.c.model == model, _PR.c.task == task
                    )
                ).scalar_one()
                data = {**base, "version": (current or 0) + 1}
                now = utcnow()
                if activate:
                    conn.execute(
                        sa.update(_PR)
                        .where(_PR.c.model == model, _PR.c.task == task)
                        .values(active=False)
                    )
                conn.execute(
                    sa.insert(_PR).values(
                        model=model,
                        task=task,
                        version=data["version"],
                        active=activate,
                        reason=reason,
                        metrics=metrics if metrics is not None else data.get("metrics"),
                        data=data,
                        created_at=now,
                        activated_at=now if activate else None,
                    )
                )
            return data

        return _profile_cls().from_dict(retry_on_conflict(attempt))

    def profile_history(self, model: str, task: str = "default") -> list[ProfileVersion]:
        """All stored versions of (model, task), newest first."""
        profile_cls = _profile_cls()  # once per call, not per row
        query = (
            sa.select(_PR)
            .where(_PR.c.model == model, _PR.c.task == task)
            .order_by(_PR.c.version.desc())
        )
        with self._db.tx() as conn:
            rows = conn.execute(query).mappings().all()
        return [_version_from_row(row, profile_cls) for row in rows]

    def profile_models(self) -> list[tuple[str, str]]:
        """Every (model, task) with at least one stored profile version."""
        query = sa.select(_PR.c.model, _PR.c.task).distinct().order_by(_PR.c.model, _PR.c.task)
        with self._db.tx() as conn:
            return [(row.model, row.task) for row in conn.execute(query)]

    def model_tasks(self, model: str) -> list[str]:
        """Tasks of `model` with at least one stored profile version."""
        query = sa.select(_PR.c.task).where(_PR.c.model == model).distinct().order_by(_PR.c.task)
        with self._db.tx() as conn:
            return [row[0] for row in conn.execute(query)]

    def activate_profile_version(self, model: str, task: str, version: int) -> Profile:
        """Make `version` the active profile of (model, task) (e.g. a rollback)."""
        where = (_PR.c.model == model, _PR.c.task == task)
        with self._db.tx(write=True) as conn:
            data = conn.execute(
                sa.select(_PR.c.data).where(*where, _PR.c.version == version)
            ).scalar_one_or_none()
            if data is None:
                raise ProfileNotFound(f"no profile version {version} for {model!r}/{task!r}")
            conn.execute(sa.update(_PR).where(*where).values(active=False))
            conn.execute(
                sa.update(_PR)
                .where(*where, _PR.c.version == version)
                .values(active=True, activated_at=utcnow())
            )
        return _profile_cls().from_dict(data)

    def active_version(self, model: str, task: str = "default") -> ProfileVersion | None:
        """The active version of (model, task) with its reason and metrics, or None."""
        query = (
            sa.select(_PR)
            .where(_PR.c.model == model, _PR.c.task == task, _PR.c.active.is_(True))
            .order_by(_PR.c.version.desc())
            .limit(1)
        )
        with self._db.tx() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else _version_from_row(row)

    def profile_version(self, model: str, task: str, version: int) -> ProfileVersion | None:
        """One stored version of (model, task), or None."""
        query = sa.select(_PR).where(
            _PR.c.model == model, _PR.c.task == task, _PR.c.version == version
        )
        with self._db.tx() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else _version_from_row(row)


def _version_from_row(row: Any, profile_cls: type[Profile] | None = None) -> ProfileVersion:
    return ProfileVersion(
        model=row["model"],
        task=row["task"],
        version=row["version"],
        active=row["active"],
        reason=row["reason"],
        metrics=row["metrics"],
        created_at=row["created_at"],
        activated_at=row["activated_at"],
        profile=(profile_cls or _profile_cls()).from_dict(row["data"]),
    )
