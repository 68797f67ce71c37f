"""docker-compose.yml and .env.example: valid for docker compose, and each profile is a whole,
self-consistent stack.

`docker-compose config` is Debian's docker-compose (v1.29, installed by .ci/run). It validates the
file against the Compose Specification schema (profiles and `deploy.resources.reservations.devices`
included) and interpolates the variables, but it does not filter services by profile; what each
profile starts is checked here with compose's rule (services without `profiles`, plus those of
an active profile) on the interpolated file, which must agree with `docker-compose config`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.deploy_files import (
    COMPOSE_FILE,
    ENV_EXAMPLE,
    MissingVariable,
    active_services,
    compose_variables,
    environment,
    hostnames,
    interpolate,
    load_compose,
    read_env_file,
)
from tests.deploy.paths import GRAFANA_DIR, PROMETHEUS_DIR, REPO

pytestmark = pytest.mark.deploy

PROFILES = {"gpu": "vllm", "cpu": "engine-cpu"}  # profile -> the engine service it starts
ALWAYS = {"gateway", "postgres", "prometheus", "grafana"}


@pytest.fixture(scope="module")
def docker_compose() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        pytest.skip("`docker-compose` not installed (apt-get install docker-compose)")
    return path


def _compose_config(binary: str, env_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "CALIB_"))}
    return subprocess.run(
        [binary, "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=REPO,
    )


@pytest.fixture(scope="module")
def resolved(docker_compose: str) -> dict[str, Any]:
    result = _compose_config(docker_compose, ENV_EXAMPLE)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_docker_compose_config_accepts_the_file_with_env_example(resolved: dict) -> None:
    assert set(resolved["services"]) == ALWAYS | set(PROFILES.values())


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_docker_compose_config_validates_each_profile(docker_compose: str, profile: str) -> None:
    result = _compose_config(docker_compose, ENV_EXAMPLE, "--profiles")
    assert result.returncode == 0, result.stderr
    assert profile in result.stdout.split()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "CALIB_"))}
    checked = subprocess.run(
        [
            docker_compose,
            "--env-file",
            str(ENV_EXAMPLE),
            "-f",
            str(COMPOSE_FILE),
            "--profile",
            profile,
            "config",
            "-q",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=REPO,
    )
    assert checked.returncode == 0, checked.stderr


def test_docker_compose_config_can_fail(docker_compose: str, tmp_path: Path) -> None:
    """Not vacuous: a required variable missing from the env file is an error."""
    env = ENV_EXAMPLE.read_text().replace("CALIB_ADMIN_KEY=", "#CALIB_ADMIN_KEY=")
    (tmp_path / "env").write_text(env)
    result = _compose_config(docker_compose, tmp_path / "env")
    assert result.returncode != 0
    assert "CALIB_ADMIN_KEY" in result.stderr


def test_our_interpolation_matches_docker_compose(resolved: dict) -> None:
    ours = load_compose()
    for name, service in resolved["services"].items():
        assert environment(ours["services"][name]) == environment(service), name
        if "command" in service:
            assert [str(a) for a in ours["services"][name]["command"]] == service["command"]


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_each_profile_is_a_whole_stack(profile: str) -> None:
    services = active_services(load_compose(), [profile])
    assert set(services) == ALWAYS | {PROFILES[profile]}
    hosts = hostnames(services)
    # The engine answers as vllm:8000 in both profiles: the gateway's upstream and Prometheus'
    # scrape target do not change with the profile.
    assert hosts["vllm"] == PROFILES[profile]
    upstream = environment(services["gateway"])["CALIB_UPSTREAM"]
    assert upstream == "http://vllm:8000/v1"
    for name, service in services.items():
        for dependency in service.get("depends_on") or {}:
            assert dependency in services, f"{name} depends on {dependency}, not in {profile}"
    targets = [
        target
        for job in yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    ]
    for target in targets:
        assert target.split(":")[0] in hosts, f"scrape target {target} has no service"


def test_no_profile_runs_two_engines() -> None:
    config = load_compose()
    for profile in PROFILES:
        services = active_services(config, [profile])
        assert len(set(PROFILES.values()) & set(services)) == 1
    assert not set(PROFILES.values()) & set(active_services(config, []))


def test_env_example_selects_the_gpu_profile_by_default() -> None:
    assert read_env_file()["COMPOSE_PROFILES"] == "gpu"


def test_every_variable_is_documented_in_env_example_and_none_is_stale() -> None:
    used = compose_variables()
    documented = set(read_env_file()) - {"COMPOSE_PROFILES"}
    assert used - documented == set(), "used in docker-compose.yml, missing from .env.example"
    assert documented - used == set(), "in .env.example but docker-compose.yml never uses it"


def test_secrets_are_required_not_defaulted() -> None:
    text = COMPOSE_FILE.read_text()
    for secret in ("CALIB_ADMIN_KEY", "POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD"):
        assert f"${{{secret}:?" in text, f"{secret} must be required (${{{secret}:?...}})"
    with pytest.raises(MissingVariable):
        interpolate(text, {k: v for k, v in read_env_file().items() if k != "POSTGRES_PASSWORD"})


def test_gpu_engine_is_the_official_image_with_a_gpu_and_enough_logprobs() -> None:
    vllm = load_compose()["services"]["vllm"]
    image, _, tag = vllm["image"].partition(":")
    assert image == "vllm/vllm-openai"
    assert tag and tag != "latest"
    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    command = [str(a) for a in vllm["command"]]
    assert command[0] == read_env_file()["VLLM_MODEL"]
    assert int(command[command.index("--max-logprobs") + 1]) >= 20
    assert "--logprobs-mode" not in command  # default raw_logprobs: DESIGN §3
    assert "/health" in " ".join(vllm["healthcheck"]["test"])
    assert any(v.endswith(":/root/.cache/huggingface") for v in vllm["volumes"])


def test_cpu_engine_is_built_from_our_image() -> None:
    engine = load_compose()["services"]["engine-cpu"]
    assert engine["build"] == {"context": ".", "target": "engine-cpu"}
    assert "vllm" in engine["networks"]["default"]["aliases"]


def test_gateway_uses_postgres_and_waits_for_it() -> None:
    services = load_compose()["services"]
    gateway = services["gateway"]
    env = environment(gateway)
    assert env["CALIB_DB"].startswith("postgresql+psycopg://")
    assert "@postgres:5432/" in env["CALIB_DB"]
    assert gateway["build"]["target"] == "runtime"
    assert gateway["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])


def test_images_are_pinned() -> None:
    for name, service in load_compose()["services"].items():
        image = service.get("image", "")
        assert ":" in image and not image.endswith(":latest"), f"{name}: {image!r}"


def test_prometheus_loads_our_config_and_alert_rules() -> None:
    prometheus = load_compose()["services"]["prometheus"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"]}
    assert (REPO / mounts["/etc/prometheus"]).resolve() == PROMETHEUS_DIR
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    for rule_file in config["rule_files"]:  # relative to the config file: inside the mount
        assert (PROMETHEUS_DIR / rule_file).is_file()
    # promtool check config/rules on these files: tests/deploy/test_deploy_promtool.py


def test_grafana_is_provisioned_from_the_repository() -> None:
    grafana = load_compose()["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    assert (REPO / mounts["/etc/grafana/provisioning"]).resolve() == GRAFANA_DIR / "provisioning"
    dashboards_mount = "/var/lib/grafana/dashboards"
    assert (REPO / mounts[dashboards_mount]).resolve() == GRAFANA_DIR / "dashboards"
    provider = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == dashboards_mount
    datasource = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    env = environment(grafana)
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dashboards_mount + "/")
    assert (GRAFANA_DIR / "dashboards" / home.rsplit("/", 1)[1]).is_file()
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
