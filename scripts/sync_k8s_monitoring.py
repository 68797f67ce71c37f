"""Copy the monitoring files into the Kubernetes monitoring overlay (deploy/k8s/monitoring).

kustomize only reads files below a kustomization's own directory, so the overlay holds copies:

  deploy/prometheus/alerts.yml          -> deploy/k8s/monitoring/prometheusrule.yaml (its spec)
  deploy/grafana/dashboards/*.json      -> deploy/k8s/monitoring/dashboards/*.json (byte for byte)

deploy/prometheus and deploy/grafana stay the sources (docker compose mounts them, promtool tests
them). Run this after changing either; tests/deploy/test_k8s_monitoring.py fails until you do.

  python scripts/sync_k8s_monitoring.py           # write the copies
  python scripts/sync_k8s_monitoring.py --check   # exit 1 if a copy is stale (what CI checks)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
DASHBOARDS = REPO / "deploy" / "grafana" / "dashboards"
OVERLAY = REPO / "deploy" / "k8s" / "monitoring"
RULE = OVERLAY / "prometheusrule.yaml"

_RULE_HEADER = """\
# GENERATED from deploy/prometheus/alerts.yml by scripts/sync_k8s_monitoring.py: edit the source,
# then run the script (tests/deploy/test_k8s_monitoring.py checks the two agree).
# The alert rules as a Prometheus Operator PrometheusRule (CRD monitoring.coreos.com/v1). Its
# `release` label must match your Prometheus' ruleSelector (kube-prometheus-stack: its release).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: mllm-calib-alerts
  namespace: mllm-calib
  labels:
    app.kubernetes.io/name: mllm-calib
    release: kube-prometheus-stack
spec:
"""


def render_rule(alerts_text: str) -> str:
    """The PrometheusRule manifest: alerts.yml's body (comments dropped) indented under `spec`."""
    lines = alerts_text.splitlines()
    while lines and (not lines[0].strip() or lines[0].lstrip().startswith("#")):
        lines.pop(0)  # the file's header comment describes the file, not the rules
    body = "\n".join(f"  {line}" if line.strip() else "" for line in lines)
    return _RULE_HEADER + body + "\n"


def expected_files() -> dict[Path, bytes]:
    """Every file of the overlay that is a copy, with the content it must have."""
    files = {RULE: render_rule(ALERTS.read_text()).encode()}
    for dashboard in sorted(DASHBOARDS.glob("*.json")):
        files[OVERLAY / "dashboards" / dashboard.name] = dashboard.read_bytes()
    return files


def stale_files() -> list[Path]:
    """Copies that differ from their source, or are missing, or have no source any more."""
    expected = expected_files()
    stale = [p for p, data in expected.items() if not p.is_file() or p.read_bytes() != data]
    extra = set((OVERLAY / "dashboards").glob("*.json")) - set(expected)
    return sorted(stale + list(extra))


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale copies")
    args = parser.parse_args()
    stale = stale_files()
    if args.check:
        for path in stale:
            print(f"stale: {_shown(path)}", file=sys.stderr)
        return 1 if stale else 0
    (OVERLAY / "dashboards").mkdir(parents=True, exist_ok=True)
    expected = expected_files()
    for path in stale:
        if path in expected:
            path.write_bytes(expected[path])
            print(f"wrote {_shown(path)}")
        else:
            path.unlink()
            print(f"removed {_shown(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
