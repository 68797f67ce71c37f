"""`calib report` against a running gateway: a real page that a real browser renders."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.browser import file_url, inspect_page
from tests.refit.helpers import OPTIONS, option_items, queue_reply


@pytest.fixture
def refitted_model(api, double) -> str:
    """200 overconfident answers labeled with the truth, then one refit."""
    items = option_items(200, true_t=2.0, seed=11)
    double.reply = queue_reply(items)
    labels = []
    for item in items:
        body = {
            "model": "rep",
            "messages": [{"role": "user", "content": "?"}],
            "calibration": {"options": OPTIONS},
        }
        answer = api.post("/v1/chat/completions", json=body).json()
        labels.append({"id": answer["calibration"]["id"], "label": OPTIONS[item.truth]})
    assert api.post("/v1/feedback", json=labels).status_code == 200
    outcome = api.post("/v1/calibration/models/rep/refit").json()
    assert outcome["activated"], outcome
    return "rep"


def _report(gateway_url: str, model: str, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "clients.cli",
            "report",
            "--model",
            model,
            "--gateway",
            gateway_url,
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_report_renders_history_and_reliability_in_a_real_browser(
    refitted_model, refit_gateway, tmp_path
) -> None:
    out = tmp_path / "report.html"
    done = _report(refit_gateway.url, refitted_model, out)
    assert done.returncode == 0, done.stderr
    page = inspect_page(file_url(out))
    assert page.errors == []
    assert len(page.images) == 1
    assert page.images[0]["complete"] and page.images[0]["width"] > 0
    assert page.rows >= 5
    html = out.read_text()
    assert "v1" in html and "temperature" in html


def test_report_on_an_unknown_model_is_a_clear_error(refit_gateway, tmp_path) -> None:
    done = _report(refit_gateway.url, "never-served", tmp_path / "r.html")
    assert done.returncode == 1
    assert "404" in done.stderr
    assert not (tmp_path / "r.html").exists()
