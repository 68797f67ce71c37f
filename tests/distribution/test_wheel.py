"""The built wheel: metadata (SPDX license, one version, light base dependencies) and a
client-only install that works.

The wheel is built from a copy of what the Dockerfile copies (pyproject.toml, README.md, LICENSE
and the three packages) with pip's isolated build, then installed *with its declared base
dependencies* into a fresh virtualenv: that venv is exactly `pip install mllm-calib`. In it the
SDK imports and talks to a real gateway (served from the test environment), `calib --version`
answers, and the server commands say which extra to install. Dependencies come from pip's cache
after the first run (about 10 s here); the first run on a fresh machine downloads them.
"""

from __future__ import annotations

import email.parser
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.version import __version__
from tests.upstream_double import JSONReply, chat_response

pytestmark = pytest.mark.packaging

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("calibrators", "service", "clients")
# What the base install must not bring: the server stack (the `server` extra).
SERVER_MODULES = ("fastapi", "uvicorn", "sqlalchemy", "numpy", "scipy", "yaml", "prometheus_client")
BASE_REQUIREMENTS = {"httpx", "typer", "rich"}
TIMEOUT_S = 300


def _run(*args: str | Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=env,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for package in PACKAGES:
        shutil.copytree(REPO / package, source / package, ignore=ignore)
    dist = tmp_path_factory.mktemp("dist")
    built = _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, source)
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = dist.glob("mllm_calib-*.whl")
    return path


def _metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(archive.read(name).decode())


def _requirement_name(requirement: str) -> str:
    name = requirement.split(";")[0]
    for stop in "<>=!~[ (":
        name = name.split(stop)[0]
    return name.strip().lower()


def test_wheel_metadata_has_the_spdx_license_and_the_one_version(wheel: Path) -> None:
    metadata = _metadata(wheel)
    assert metadata["Name"] == "mllm-calib"
    assert metadata["Version"] == __version__
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata["License-File"] == "LICENSE"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        licence = archive.read(f"mllm_calib-{__version__}.dist-info/licenses/LICENSE").decode()
    assert licence == (REPO / "LICENSE").read_text()
    assert "Apache License" in licence and "Version 2.0, January 2004" in licence
    for package in PACKAGES:  # PEP 561: the packages ship their inline types
        assert f"{package}/py.typed" in names, package
    assert "service/migrations/alembic.ini" in names


def test_the_base_requirements_are_the_client_side_only(wheel: Path) -> None:
    requirements = _metadata(wheel).get_all("Requires-Dist") or []
    base = {_requirement_name(r) for r in requirements if "extra ==" not in r}
    assert base == BASE_REQUIREMENTS
    server = {_requirement_name(r) for r in requirements if 'extra == "server"' in r}
    assert {"fastapi", "uvicorn", "sqlalchemy", "numpy", "scipy", "pydantic-settings"} <= server
    dev = {r.split(";")[0].strip() for r in requirements if 'extra == "dev"' in r}
    assert "mllm-calib[server]" in dev  # `pip install -e .[dev]` can run the tests


@dataclass(frozen=True)
class Venv:
    python: Path
    calib: Path


@pytest.fixture(scope="module")
def client_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Venv]:
    """A fresh venv with `pip install <wheel>`: the package and its base dependencies only."""
    root = tmp_path_factory.mktemp("client-venv")
    created = _run(sys.executable, "-m", "venv", "--without-pip", root)
    assert created.returncode == 0, created.stderr
    python = root / "bin" / "python"
    installed = _run(sys.executable, "-m", "pip", "--python", python, "install", "-q", wheel)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    yield Venv(python, root / "bin" / "calib")


def test_the_client_install_has_no_server_stack(client_venv: Venv) -> None:
    probe = (
        "import importlib.util, json; "
        f"print(json.dumps([m for m in {SERVER_MODULES!r} if importlib.util.find_spec(m)]))"
    )
    result = _run(client_venv.python, "-c", probe, cwd=client_venv.python.parent)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_calib_version_in_the_client_install(client_venv: Venv) -> None:
    result = _run(client_venv.calib, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"mllm-calib {__version__}"


@pytest.mark.parametrize(
    "argv", [["serve"], ["engine", "start", "--help"], ["refit", "--all"], ["report", "m"]]
)
def test_server_commands_name_the_extra_in_the_client_install(
    client_venv: Venv, argv: list[str]
) -> None:
    result = _run(client_venv.calib, *argv)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"`calib {argv[0]}` needs the server extra" in result.stderr
    assert "pip install 'mllm-calib[server]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_sdk_from_the_client_install_talks_to_a_real_gateway(
    client_venv: Venv, gateway, double
) -> None:
    """Imports only the SDK (nothing of `service`), calls the gateway, reads the calibration."""
    steps = [("B", -0.4, [("B", -0.4), ("A", -1.5), ("C", -2.0), ("D", -3.0)])]
    double.reply = JSONReply(chat_response(steps))
    script = f"""
import json, sys
from clients.sdk import CalibClient
with CalibClient({gateway.url!r}) as client:
    result = client.chat("mcq", [{{"role": "user", "content": "Pick one."}}])
print(json.dumps({{
    "text": result.text,
    "answer": result.calibration.answer,
    "confidence": result.calibration.confidence,
    "loaded": sorted({{m.split(".")[0] for m in sys.modules}}),
}}))
"""
    result = _run(client_venv.python, "-c", script, cwd=client_venv.python.parent)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["text"] == "B"
    assert answer["answer"] == "B"
    assert 0.5 < answer["confidence"] < 1
    assert "service" not in answer["loaded"] and "calibrators" not in answer["loaded"]
