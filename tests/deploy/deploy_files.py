"""Readers of the deployment files, shared by the deploy tests: the compose file with its
variables interpolated as docker compose does, `.env.example`, the Dockerfile's instructions, the
Kubernetes manifests, and the `CALIB_*` names the service really reads.

Nothing here starts a process; `docker-compose config` itself is run by test_compose_file.py,
which also checks that `load_compose` agrees with it.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.paths import REPO

COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
DOCKER_DIR = REPO / "deploy" / "docker"
ENTRYPOINT = DOCKER_DIR / "entrypoint.sh"
K8S_DIR = REPO / "deploy" / "k8s"

#: The Kubernetes version the manifests are validated against (kubernetes-validate schemas).
K8S_VERSION = "1.30.0"

# ----------------------------------------------------------------------------- compose

_VAR = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)


class MissingVariable(ValueError):
    """A `${VAR:?message}` whose variable is unset (docker compose refuses to start)."""


def read_env_file(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    """KEY=VALUE lines of a compose env file (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
        values[key.strip()] = value.strip()
    return values


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Substitute `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?err}` and `$$`."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        value = env.get(name)
        unset = not value if op in (":-", ":?") else value is None
        if not unset:
            return value or ""
        if op in (":-", "-"):
            return arg
        if op in (":?", "?"):
            raise MissingVariable(f"{name}: {arg}")
        return ""

    return _VAR.sub(substitute, text)


def compose_variables(text: str | None = None) -> set[str]:
    """Every variable the compose file interpolates."""
    text = COMPOSE_FILE.read_text() if text is None else text
    return {m.group("name") or m.group("bare") for m in _VAR.finditer(text) if m.group(0) != "$$"}


def load_compose(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yml as docker compose sees it with `env` (default: .env.example)."""
    env = read_env_file() if env is None else env
    # Like compose: parse first, then interpolate the strings (a value "false" stays a string).
    return _interpolate_tree(yaml.safe_load(COMPOSE_FILE.read_text()), env)


def _interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_tree(value, env) for key, value in node.items()}
    return node


def active_services(config: Mapping[str, Any], profiles: Iterable[str]) -> dict[str, Any]:
    """The services `docker compose --profile P ...` starts: no `profiles`, or one of P."""
    wanted = set(profiles)
    return {
        name: service
        for name, service in config["services"].items()
        if not service.get("profiles") or wanted & set(service["profiles"])
    }


def hostnames(services: Mapping[str, Any]) -> dict[str, str]:
    """Hostname on the default network -> the service answering it (names and aliases)."""
    found: dict[str, str] = {}
    for name, service in services.items():
        names = [name]
        networks = service.get("networks") or {}
        if isinstance(networks, dict):
            for net in networks.values():
                names += (net or {}).get("aliases", [])
        for host in names:
            assert host not in found, f"{host} answered by {found[host]} and {name}"
            found[host] = name
    return found


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's `environment` as a dict (the list form `KEY=VALUE` too)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


# ----------------------------------------------------------------------------- Dockerfile


@dataclass(frozen=True)
class Instruction:
    stage: str
    keyword: str
    args: str
    line: int


def dockerfile_instructions(text: str | None = None) -> list[Instruction]:
    """The Dockerfile's instructions (continuations joined, comments dropped), with stage names."""
    text = DOCKERFILE.read_text() if text is None else text
    result: list[Instruction] = []
    stage = ""
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = args.split()
            stage = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else parts[0]
        result.append(Instruction(stage, keyword, args.strip(), start))
    return result


def dockerfile_env(stage: str) -> dict[str, str]:
    """ENV of `stage` and the stages it is built FROM (later wins), `$PATH`-style refs kept."""
    chain: list[str] = []
    instructions = dockerfile_instructions()
    parents = {
        i.stage: i.args.split()[0] for i in instructions if i.keyword == "FROM"
    }  # stage -> base
    current: str | None = stage
    while current in parents:
        chain.insert(0, current)
        current = parents[current]
    env: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ENV" and ins.stage in chain:
            for pair in ins.args.split():
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def exec_form(args: str) -> list[str] | None:
    """The JSON array of an exec-form instruction, or None for shell form."""
    try:
        value = ast.literal_eval(args)
    except (ValueError, SyntaxError):
        return None
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


# ----------------------------------------------------------------------------- Kubernetes


def k8s_files() -> list[Path]:
    """Every manifest below deploy/k8s (kustomizations excluded)."""
    return sorted(p for p in K8S_DIR.rglob("*.yaml") if p.name != "kustomization.yaml")


def k8s_documents(paths: Iterable[Path] | None = None) -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in k8s_files() if paths is None else paths:
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                yield path, document


def pod_spec(document: Mapping[str, Any]) -> dict[str, Any] | None:
    """The pod spec of a workload (Deployment, StatefulSet, Job, CronJob ...), else None."""
    spec = document.get("spec") or {}
    if document.get("kind") == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    template = spec.get("template")
    return template["spec"] if template else None


# ----------------------------------------------------------------------------- CALIB_* names


def _settings_classes() -> list[type]:
    """Every pydantic-settings class of the service (found by source, so new ones count)."""
    import importlib

    from pydantic_settings import BaseSettings

    classes: list[type] = []
    for path in sorted((REPO / "service").rglob("*.py")):
        if "BaseSettings" not in path.read_text():
            continue
        module = importlib.import_module(
            ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        )
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, BaseSettings)
                and value is not BaseSettings
                and value.__module__ == module.__name__
            ):
                classes.append(value)
    return classes


def settings_env_names() -> dict[str, set[str]]:
    """env prefix -> the variable names its settings class reads (e.g. CALIB_ENGINE_ -> ...)."""
    names: dict[str, set[str]] = {}
    for cls in _settings_classes():
        prefix = cls.model_config.get("env_prefix", "")
        fields = {f"{prefix}{field}".upper() for field in cls.model_fields}
        names.setdefault(prefix.upper(), set()).update(fields)
    return names


def entrypoint_file_variables() -> set[str]:
    """`VAR_FILE` names the image's entrypoint turns into VAR (`file_env VAR`)."""
    return {
        f"{m.group(1)}_FILE"
        for m in re.finditer(r"^file_env\s+(\w+)", ENTRYPOINT.read_text(), flags=re.M)
    }


def gateway_variables() -> set[str]:
    """What the gateway image understands: Settings' CALIB_* plus the entrypoint's *_FILE."""
    return settings_env_names()["CALIB_"] | entrypoint_file_variables()


def engine_variables() -> set[str]:
    """What the CPU engine image understands: CALIB_ENGINE_* and the data dir."""
    return settings_env_names()["CALIB_ENGINE_"] | {"CALIB_DATA_DIR"}


def unknown(names: Iterable[str], known: set[str]) -> set[str]:
    """The CALIB_* names among `names` that nothing reads."""
    return {name for name in names if name.startswith("CALIB_") and name not in known}
