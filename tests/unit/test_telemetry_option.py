"""FastAPI's native OpenTelemetry hook is off unless `opentelemetry` is set (it cost ~6 % CPU)."""

from __future__ import annotations

import inspect

import pytest
from fastapi import FastAPI

from service.app import _telemetry_options, create_app
from service.settings import Settings

pytestmark = pytest.mark.skipif(
    "telemetry" not in inspect.signature(FastAPI).parameters,
    reason="this FastAPI has no native telemetry",
)


def test_native_telemetry_is_off_by_default_and_on_when_asked() -> None:
    off = _telemetry_options(Settings())
    assert off == {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    assert _telemetry_options(Settings(opentelemetry=True)) == {}
    assert isinstance(create_app(Settings()), FastAPI)  # FastAPI accepts the option
