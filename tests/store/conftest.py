"""Fixtures for store tests: a real SQLite file, and a fresh PostgreSQL database.

The throwaway PostgreSQL cluster (`pg_server`, `pg_url`) lives in `tests/pg.py`, shared with
other test directories through `tests/conftest.py`. Each test gets its own fresh database.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.store import Store


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store URL on each backend: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'calib.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    opened = Store.open(store_url)
    yield opened
    opened.close()


@pytest.fixture
def make_prediction():  # type: ignore[no-untyped-def]
    """Factory of `PredictionRecord`s with sensible defaults (options A-D, answer B)."""
    from service.store import PredictionRecord

    counter = iter(range(1_000_000))

    def make(**fields):  # type: ignore[no-untyped-def]
        defaults = {
            "id": f"chatcmpl-{next(counter)}-{uuid.uuid4().hex[:8]}",
            "model": "gemma-3-270m",
            "task": "default",
            "tenant": "acme",
            "mode": "options",
            "options": ["A", "B", "C", "D"],
            "idk_option": None,
            "answer": "B",
            "raw_confidence": 0.7,
            "confidence": 0.6,
            "features": {"option_logprobs": [-2.0, -0.4, -3.0, -4.0], "answer_index": 1},
            "profile_version": 0,
            "prompt_hash": "abc123",
            "abstained": False,
            "abstain_reason": None,
        }
        defaults.update(fields)
        return PredictionRecord(**defaults)

    return make
