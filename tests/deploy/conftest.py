"""Deploy checks: paths of the deployment files and the Prometheus binaries (Debian `prometheus`).

Tests that need a binary skip, naming it, only when it is not installed; CI installs it.
"""

from __future__ import annotations

import shutil

import pytest


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"`{name}` not installed (apt-get install prometheus)")
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return _binary("promtool")


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    return _binary("prometheus")


@pytest.fixture(scope="session")
def kubernetes_validate():  # type: ignore[no-untyped-def]
    """The kubernetes-validate module (dev extra): strict schema checks of manifests."""
    return pytest.importorskip("kubernetes_validate")
