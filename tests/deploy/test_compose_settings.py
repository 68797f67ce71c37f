"""Every CALIB_* variable the deployment files set is one the service really reads.

The known names come from the pydantic-settings classes of `service/` (the gateway's `Settings`
with env prefix CALIB_, the engine's `EngineSettings` with CALIB_ENGINE_, and any later one),
plus the `VAR_FILE` forms the image's entrypoint understands. A misspelt or removed setting in
docker-compose.yml, .env.example, the Dockerfile or a Kubernetes manifest fails here.
"""

from __future__ import annotations

import re

import pytest

from tests.deploy.deploy_files import (
    DOCKERFILE,
    dockerfile_instructions,
    engine_variables,
    environment,
    gateway_variables,
    k8s_documents,
    load_compose,
    pod_spec,
    read_env_file,
    unknown,
)

pytestmark = pytest.mark.deploy

ENGINE_SERVICES = {"engine-cpu"}


def test_the_checker_knows_the_service_settings() -> None:
    gateway = gateway_variables()
    assert {"CALIB_UPSTREAM", "CALIB_DB", "CALIB_ADMIN_KEY", "CALIB_WORKERS"} <= gateway
    assert {"CALIB_ADMIN_KEY_FILE", "CALIB_DB_FILE"} <= gateway
    assert {"CALIB_ENGINE_MAX_LOGPROBS", "CALIB_ENGINE_PORT"} <= engine_variables()


def test_the_checker_can_fail() -> None:
    names = {"CALIB_UPSTREAMS", "CALIB_ENGINE_MAX_LOGPROBS", "CALIB_UPSTREAM", "OTHER"}
    assert unknown(names, gateway_variables()) == {"CALIB_UPSTREAMS", "CALIB_ENGINE_MAX_LOGPROBS"}


def test_compose_services_set_only_real_settings() -> None:
    for name, service in load_compose()["services"].items():
        known = engine_variables() if name in ENGINE_SERVICES else gateway_variables()
        assert unknown(environment(service), known) == set(), name


def test_env_example_names_only_real_settings() -> None:
    known = gateway_variables() | engine_variables()
    assert unknown(read_env_file(), known) == set()


def test_dockerfile_sets_only_real_settings() -> None:
    known = gateway_variables() | engine_variables()
    names = {
        pair.split("=", 1)[0]
        for ins in dockerfile_instructions()
        if ins.keyword == "ENV"
        for pair in ins.args.split()
    }
    assert unknown(names, known) == set()
    referenced = set(re.findall(r"\bCALIB_[A-Z0-9_]+", DOCKERFILE.read_text()))
    assert unknown(referenced, known) == set()


def test_kubernetes_manifests_set_only_real_settings() -> None:
    for path, document in k8s_documents():
        spec = pod_spec(document)
        for container in (spec or {}).get("containers", []):
            names = {e["name"] for e in container.get("env", [])}
            assert unknown(names, gateway_variables()) == set(), (path.name, container["name"])
