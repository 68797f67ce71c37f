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
import re
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


def _clean_env() -> dict[str, str]:
    """This process' environment without anything docker compose would interpolate."""
    used = compose_variables()
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("COMPOSE_", "CALIB_")) and k not in used
    }


def _compose_config(
    binary: str, env_file: Path, *args: str, compose_file: Path = COMPOSE_FILE
) -> subprocess.CompletedProcess[str]:
    env = _clean_env()
    return subprocess.run(
        [
            binary,
            "--env-file",
            str(env_file),
            "--project-directory",
            str(REPO),
            "-f",
            str(compose_file),
            "config",
            *args,
        ],
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


@pytest.fixture(scope="module")
def resolved_without_env(docker_compose: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`docker compose config` with no .env at all (an empty env file, a clean environment)."""
    empty = tmp_path_factory.mktemp("no-env") / "empty.env"
    empty.write_text("")
    result = _compose_config(docker_compose, empty)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_docker_compose_config_accepts_the_file_with_env_example(resolved: dict) -> None:
    assert set(resolved["services"]) == ALWAYS | set(PROFILES.values())


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_docker_compose_config_validates_each_profile(docker_compose: str, profile: str) -> None:
    result = _compose_config(docker_compose, ENV_EXAMPLE, "--profiles")
    assert result.returncode == 0, result.stderr
    assert profile in result.stdout.split()
    env = _clean_env()
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
    """Not vacuous: a depends_on condition compose does not know is an error."""
    broken = COMPOSE_FILE.read_text().replace(
        "condition: service_healthy", "condition: service_ready", 1
    )
    assert broken != COMPOSE_FILE.read_text()
    (tmp_path / "docker-compose.yml").write_text(broken)
    result = _compose_config(
        docker_compose, ENV_EXAMPLE, compose_file=tmp_path / "docker-compose.yml"
    )
    assert result.returncode != 0
    assert "service_ready" in result.stderr


def _published(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host interface, host port) of each published port, from `docker-compose config`."""
    found = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            found.append((port.get("host_ip", ""), str(port["published"])))
        else:
            host_ip, published, _ = str(port).rsplit(":", 2)
            found.append((host_ip, published))
    return found


def test_without_an_env_file_every_service_gets_working_defaults(
    resolved_without_env: dict,
) -> None:
    services = resolved_without_env["services"]
    assert set(services) == ALWAYS | set(PROFILES.values())
    vllm = [str(a) for a in services["vllm"]["command"]]
    assert vllm[0] == "Qwen/Qwen2.5-VL-3B-Instruct"  # public: no HF_TOKEN needed
    assert vllm[vllm.index("--served-model-name") + 1] == "qwen2.5-vl-3b"
    gateway, postgres = environment(services["gateway"]), environment(services["postgres"])
    assert gateway["CALIB_ADMIN_KEY"]  # the gateway refuses a public bind without keys
    password = postgres["POSTGRES_PASSWORD"]
    assert password and f":{password}@postgres:5432/" in gateway["CALIB_DB"]
    assert environment(services["grafana"])["GF_SECURITY_ADMIN_PASSWORD"]


def test_without_an_env_file_the_monitoring_and_gateway_ports_stay_on_loopback(
    resolved_without_env: dict,
) -> None:
    published = {name: _published(s) for name, s in resolved_without_env["services"].items()}
    assert published["gateway"] == [("127.0.0.1", "8080")]
    assert published["prometheus"] == [("127.0.0.1", "9090")]
    assert published["grafana"] == [("127.0.0.1", "3000")]
    assert not any(published[name] for name in ("postgres", "vllm", "engine-cpu"))


def test_each_bind_variable_moves_only_its_own_port(docker_compose: str, tmp_path: Path) -> None:
    env = tmp_path / "env"
    env.write_text("PROMETHEUS_BIND=0.0.0.0\nGRAFANA_BIND=10.1.2.3\n")
    result = _compose_config(docker_compose, env)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert _published(services["prometheus"]) == [("0.0.0.0", "9090")]
    assert _published(services["grafana"]) == [("10.1.2.3", "3000")]
    assert _published(services["gateway"]) == [("127.0.0.1", "8080")]


def test_env_example_renders_the_same_stack_as_no_env_file(
    resolved: dict, resolved_without_env: dict
) -> None:
    """.env.example only spells out the defaults: copying it changes nothing but the profile."""
    assert resolved == resolved_without_env


def test_every_dependency_is_waited_for_until_healthy(resolved_without_env: dict) -> None:
    services = resolved_without_env["services"]
    image_healthchecks = {"gateway"}  # the image's HEALTHCHECK (Dockerfile, target runtime)
    assert services["grafana"]["depends_on"] == {"prometheus": {"condition": "service_healthy"}}
    assert services["gateway"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name, service in services.items():
        for dependency, how in (service.get("depends_on") or {}).items():
            assert how == {"condition": "service_healthy"}, (name, dependency)
            has_check = "healthcheck" in services[dependency] or dependency in image_healthchecks
            assert has_check, f"{name} waits for {dependency}, which has no healthcheck"
    assert "/api/health" in " ".join(services["grafana"]["healthcheck"]["test"])


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


def test_every_variable_has_a_default_and_env_example_spells_it_out() -> None:
    """`docker compose --profile cpu up` needs no .env; .env.example shows the same values."""
    text = COMPOSE_FILE.read_text()
    interpolate(text, {})  # no `${VAR:?...}`: nothing is required
    example = read_env_file()
    for name in compose_variables():
        defaults = set(re.findall(rf"\$\{{{name}:-([^}}]*)\}}", text))
        assert len(defaults) == 1, f"{name}: one default everywhere, found {defaults}"
        assert example[name] == defaults.pop(), f"{name}: .env.example differs from the default"


def test_interpolation_refuses_a_required_variable_that_is_missing() -> None:
    """The checker itself: `${VAR:?message}` without VAR is what compose refuses."""
    with pytest.raises(MissingVariable):
        interpolate("${NOT_SET:?set it}", {})


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
    assert "--logprobs-mode" not in command  # default raw_logprobs: docs/architecture.md
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
