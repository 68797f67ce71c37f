"""Files that must agree with the package: image tags carry its version (service/version.py), and
.ci/run installs the system tools without killing anything by name."""

from __future__ import annotations

import re

import pytest
import yaml

from service.version import __version__
from tests.deploy.deploy_files import COMPOSE_FILE, K8S_DIR, read_env_file
from tests.deploy.paths import REPO

pytestmark = pytest.mark.deploy

CI_RUN = REPO / ".ci" / "run"


def test_the_image_tags_are_the_package_version() -> None:
    text = COMPOSE_FILE.read_text()
    assert set(re.findall(r"\$\{GATEWAY_IMAGE_TAG:-([^}]*)\}", text)) == {__version__}
    assert read_env_file()["GATEWAY_IMAGE_TAG"] == __version__
    kustomization = yaml.safe_load((K8S_DIR / "base" / "kustomization.yaml").read_text())
    assert {i["newTag"] for i in kustomization["images"]} == {__version__}


def test_ci_run_kills_nothing_by_name() -> None:
    commands = [
        line.strip()
        for line in CI_RUN.read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    for line in commands:
        assert not re.search(r"\b(pkill|killall|kill)\b", line), line


def test_ci_run_keeps_debian_services_from_starting_while_installing() -> None:
    text = CI_RUN.read_text()
    install = text.index("apt-get install -y")
    policy = text.index("/usr/sbin/policy-rc.d")
    assert policy < install  # in place before the packages' postinst scripts run
    assert "exit 101" in text[policy:install]  # 101: action forbidden by policy
    assert text.index('rm -f "$policy"', install) > install  # and removed afterwards
    # Each system tool the tests need is installed when missing.
    for package in ("prometheus", "docker-compose", "postgresql", "chromium"):
        assert f"need_apt+=({package})" in text, package
