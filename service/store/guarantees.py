"""Labels that judge the active profile's guarantees (the guarantee monitor's one read).

`service.guarantee_monitor` checks, on live traffic, whether the abstain threshold's selective
risk and the prediction sets' coverage hold. It needs the labeled predictions *served by* the
active version whose label came after that version was activated: their calibrated confidence,
the prediction set recorded in their features, and the label.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from service.store import schema
from service.store.database import Database
from service.store.features import merge_features

__all__ = ["GuaranteeRepository", "GuaranteeRow"]

_P = schema.predictions
_F = schema.feedback
_K = schema.api_keys


@dataclass(frozen=True, slots=True)
class GuaranteeRow:
    """One labeled prediction as the monitor reads it."""

    confidence: float | None
    features: dict[str, Any]
    correct: bool
    true_index: int | None


class GuaranteeRepository:
    """The labeled predictions behind the guarantee gauges."""

    _db: Database

    def guarantee_rows(
        self,
        model: str,
        task: str,
        profile_version: int,
        *,
        since: datetime | None,
        limit: int = 100_000,
    ) -> list[GuaranteeRow]:
        """Labeled predictions of (model, task) served by `profile_version`, labeled at or after
        `since`, newest labels first, at most `limit` (feedback from revoked keys left out)."""
        revoked = sa.select(_K.c.id).where(_K.c.id == _F.c.key_id, _K.c.revoked_at.is_not(None))
        query = (
            sa.select(
                _P.c.confidence, _P.c.features, _F.c.correct, _F.c.true_index, _P.c.answer_index
            )
            .join(_F, _F.c.prediction_id == _P.c.id)
            .where(
                _P.c.model == model,
                _P.c.task == task,
                _P.c.profile_version == profile_version,
                ~revoked.exists(),
            )
            .order_by(_F.c.created_at.desc())
            .limit(limit)
        )
        if since is not None:
            query = query.where(_F.c.created_at >= since)
        with self._db.tx() as conn:
            rows = conn.execute(query).all()
        return [
            GuaranteeRow(
                confidence=None if row[0] is None else float(row[0]),
                # The answer's index lives in its own column (service/store/features.py).
                features=merge_features(row[1] if isinstance(row[1], dict) else {}, None, row[4]),
                correct=bool(row[2]),
                true_index=row[3],
            )
            for row in rows
        ]
