"""The real embedded engine (vLLM CPU + Gemma 3 270M), prepared and started once per session.

`engine` prepares the engine if needed (the first time on a fresh machine this creates a ~3.7 GB
virtualenv and converts the model: several minutes), starts it on a free loopback port and stops
it when the session ends. Tests that use it carry the `engine` marker; deselect them with
`-m "not engine"`. To reuse an engine that already runs, set CALIB_TEST_ENGINE_URL (its /v1 base
URL) and, if it is not Gemma, CALIB_TEST_ENGINE_MODEL. `vlm_engine` is the same for the tiny VLM
(`calib engine prepare --model tiny-vlm`; reuse one with CALIB_TEST_VLM_URL).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from service import engine as embedded
from service.engine import EngineLayout, EngineSettings
from tests.conftest import start_gateway

#: Generous: a fresh machine installs the engine virtualenv and converts the model first.
ENGINE_TEST_TIMEOUT_S = 1800


@contextmanager
def gateway_client(
    engine_url: str,
    db: Path,
    *,
    upstream_timeout_s: float = 300.0,
    client_timeout_s: float = 300.0,
    **settings: Any,
) -> Iterator[httpx.Client]:
    """A real gateway (SQLite file `db`) in front of a real engine, and a client for it; the
    gateway stops when the block ends. Timeouts are long: the CPU engine is slow under load."""
    gateway = start_gateway(engine_url, db, upstream_timeout_s=upstream_timeout_s, **settings)
    try:
        with httpx.Client(base_url=gateway.url, timeout=client_timeout_s) as client:
            yield client
    finally:
        gateway.server.stop()


@dataclass(frozen=True)
class RunningEngine:
    """What tests need to talk to the engine: its OpenAI base URL (ends in /v1) and model name."""

    base_url: str
    model: str


@pytest.fixture(scope="session")
def engine() -> Iterator[RunningEngine]:
    url = os.environ.get("CALIB_TEST_ENGINE_URL")
    if url:
        yield RunningEngine(
            url.rstrip("/"), os.environ.get("CALIB_TEST_ENGINE_MODEL", "gemma-3-270m")
        )
        return
    layout = EngineLayout.default()
    settings = EngineSettings(host="127.0.0.1", port=embedded.free_port())
    if settings.uses_embedded_model and settings.python is None:
        embedded.prepare(layout, settings)
    info = embedded.start(settings, layout)
    try:
        yield RunningEngine(info.base_url, info.served_model_name)
    finally:
        embedded.stop(layout, info.port)
        layout.log_file(info.port).unlink(missing_ok=True)  # random port: do not pile up logs


@pytest.fixture(scope="session")
def vlm_engine() -> Iterator[RunningEngine]:
    """The tiny VLM (`calib engine prepare/start --model tiny-vlm`), or CALIB_TEST_VLM_URL."""
    url = os.environ.get("CALIB_TEST_VLM_URL")
    if url:
        yield RunningEngine(url.rstrip("/"), "tiny-vlm")
        return
    from service.engine.models import settings_for

    layout = EngineLayout.default()
    settings = settings_for("tiny-vlm", layout, port=embedded.free_port(), host="127.0.0.1")
    embedded.prepare(layout, EngineSettings(), model="tiny-vlm")
    info = embedded.start(settings, layout)
    try:
        yield RunningEngine(info.base_url, info.served_model_name)
    finally:
        embedded.stop(layout, info.port)
        layout.log_file(info.port).unlink(missing_ok=True)
