"""Multi-worker correctness: real worker processes write into one PROMETHEUS_MULTIPROC_DIR and
the rendered exposition is the sum over all of them."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.metrics import prepare_multiprocess_dir, render_metrics

REQUESTS_PER_WORKER = (7, 5)


def _worker(count: int, upstream_s: float) -> None:
    """Runs in a fresh (spawned) interpreter that inherited PROMETHEUS_MULTIPROC_DIR."""
    from service import metrics

    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == metrics.MULTIPROCESS_DIR
    metrics.set_known_models("worker", ["mp"])
    for _ in range(count):
        metrics.observe_request("mp", "/v1/chat/completions", 200, upstream_s + 0.25, upstream_s)
        metrics.observe_confidence("mp", "default", 0.9, 0.6)
    metrics.observe_feedback("mp", "correct")


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def multiproc_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = prepare_multiprocess_dir(tmp_path / "prom")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    return directory


def _run_workers(directory: Path) -> None:
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters, like uvicorn's workers
    procs = [
        ctx.Process(target=_worker, args=(count, 0.5 * (i + 1)))
        for i, count in enumerate(REQUESTS_PER_WORKER)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0, f"worker exited with {proc.exitcode}"
    assert len(list(directory.glob("*.db"))) >= 2  # one file set per worker pid


def test_two_worker_processes_are_summed(multiproc_dir: Path) -> None:
    _run_workers(multiproc_dir)
    body, _ = render_metrics(multiprocess_dir=multiproc_dir)
    got = _samples(body.decode())
    req = (("endpoint", "/v1/chat/completions"), ("model", "mp"))
    total = sum(REQUESTS_PER_WORKER)
    assert got[("calib_requests_total", (("code", "200"), *req))] == total
    assert got[("calib_request_duration_seconds_count", req)] == total
    assert got[("calib_upstream_duration_seconds_sum", req)] == pytest.approx(7 * 0.5 + 5 * 1.0)
    assert got[("calib_gateway_overhead_seconds_sum", req)] == pytest.approx(total * 0.25)
    # Histogram buckets are cumulative after merging: 7 upstream waits of 0.5 s, 5 of 1.0 s.
    assert got[("calib_upstream_duration_seconds_bucket", (*req[:1], ("le", "0.5"), req[1]))] == 7
    assert got[("calib_upstream_duration_seconds_bucket", (*req[:1], ("le", "1.0"), req[1]))] == 12
    conf = (("model", "mp"), ("stage", "calibrated"), ("task", "default"))
    assert got[("calib_confidence_count", conf)] == total
    assert got[("calib_feedback_total", (("model", "mp"), ("outcome", "correct")))] == 2
    # Build info is one series, not one per worker.
    assert sum(1 for name, _ in got if name == "calib_build_info") == 1


def test_merged_exposition_passes_promtool(multiproc_dir: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`)")
    _run_workers(multiproc_dir)
    body, _ = render_metrics(multiprocess_dir=multiproc_dir)
    result = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=60
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


def test_prepare_multiprocess_dir_removes_files_of_an_earlier_run(tmp_path: Path) -> None:
    directory = tmp_path / "prom"
    directory.mkdir()
    (directory / "counter_123.db").write_bytes(b"stale")
    prepare_multiprocess_dir(directory)
    assert list(directory.iterdir()) == []
