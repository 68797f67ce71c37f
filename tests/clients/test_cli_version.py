"""`calib --version`: the one version (service/version.py) as installed, served and printed."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

from clients.cli.server_extra import is_missing_dependency
from service.version import __version__


def test_calib_version_prints_the_package_version() -> None:
    calib = Path(sys.executable).with_name("calib")
    result = subprocess.run([str(calib), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"mllm-calib {__version__}\n"
    # The installed distribution's metadata is built from the same attribute.
    assert importlib.metadata.version("mllm-calib") == __version__


def test_the_gateway_reports_the_same_version() -> None:
    from service.app import create_app
    from service.settings import load_settings

    app = create_app(load_settings(upstream="http://127.0.0.1:9/v1", db="sqlite://"))
    assert app.openapi()["info"]["version"] == __version__


def test_only_third_party_modules_count_as_a_missing_extra() -> None:
    assert is_missing_dependency(ModuleNotFoundError("x", name="fastapi"))
    assert is_missing_dependency(ModuleNotFoundError("x", name="sqlalchemy.orm"))
    # One of our own modules missing is a bug to surface, not an extra to install.
    assert not is_missing_dependency(ModuleNotFoundError("x", name="service.nope"))
    assert not is_missing_dependency(ModuleNotFoundError("x", name=None))
