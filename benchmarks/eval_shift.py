"""The input-shift gauge on the tiny VLM through real gateways: detection, false alarms, ECE.

All requests go through `calib serve` processes sharing one SQLite store (as replicas would):

1. **reference** — gateway A in front of the real VLM: `--reference` questions of the reference
   distribution (the vision set, difficulties 0–2, all four families) are asked and labeled,
   then a refit runs (admin API). Its fit window's input embeddings are the reference.
2. **no shift, labeled** — `--heldout` fresh questions of the same distribution, served with the
   refitted profile: the calibrated ECE without shift.
3. **shifts** — for each shift a fresh gateway process (an empty window) in front of the VLM,
   `--shifted` questions, `GET .../shift` after every `--every` requests; reported: the first
   request count at which the image modality is flagged, and the calibrated ECE on the shifted,
   labeled answers. Shifts: ``noise`` (difficulty 3 only: more noise, blur, lower contrast,
   smaller shapes) and ``colours`` (unseen colours — purple, orange, cyan, pink — drawn by the
   vision generator with its palette swapped in this script; shape/count/position questions,
   whose answers stay valid).
4. **false alarms** — `--null-windows` disjoint windows of `--window` fresh reference-distribution
   requests, each tested once at its end. The test reads inputs only, so this runs against
   ``--null-upstream``: ``engine`` (the VLM; slow) or ``fast`` (`benchmarks.fast_upstream`, same
   gateway code and store, answers are irrelevant to the test).

    python -m benchmarks.eval_shift --engine http://127.0.0.1:8012/v1
    python -m benchmarks.eval_shift --reference 240 --heldout 120 --shifted 200 --null-upstream fast
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from calibrators import expected_calibration_error
from service.datasets import vision
from service.datasets.vision import VisionQuestion, build_vision_set

MODEL = "tiny-vlm"
TASK = "shift-eval"
#: Colours the generator never draws (the colour family's answers would no longer be valid, so
#: the colours shift asks the other three families).
UNSEEN_COLOURS = {
    "red": (150, 40, 200),  # purple
    "green": (245, 140, 20),  # orange
    "blue": (20, 200, 210),  # cyan
    "yellow": (250, 120, 190),  # pink
}


@dataclass(frozen=True)
class Asked:
    question: VisionQuestion
    id: str
    answer: str | None
    confidence: float | None
    raw_confidence: float | None

    @property
    def correct(self) -> bool:
        return self.answer == self.question.answer


@contextlib.contextmanager
def unseen_colours() -> Iterator[None]:
    saved = dict(vision.COLOURS)
    vision.COLOURS.update(UNSEEN_COLOURS)
    try:
        yield
    finally:
        vision.COLOURS.update(saved)


def questions(seed: int, n: int, difficulties: tuple[int, ...], families=vision.FAMILIES):
    """`n` independent questions: each of a random family and difficulty, drawn on its own.

    Not `build_vision_set(n=...)` as a whole: it cycles difficulties and balances families
    exactly, and two exactly balanced samples are closer to each other than random ones, which
    makes the permutation test conservative (it would under-report false alarms)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        family, difficulty = rng.choice(families), rng.choice(difficulties)
        one = build_vision_set(
            seed=seed * 100_000 + i, n=1, families=(family,), difficulties=(difficulty,)
        )
        out.append(one[0])
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            time.sleep(0.25)
    raise RuntimeError(f"{url} did not come up")


@contextlib.contextmanager
def gateway(upstream: str, workdir: Path, window: int, reference: int) -> Iterator[str]:
    port = _free_port()
    db = f"sqlite:///{workdir / 'calib.db'}"
    cmd = [sys.executable, "-m", "clients.cli", "serve", "--port", str(port), "--upstream",
           upstream, "--db", db, "--log-level", "warning"]  # fmt: skip
    env = {
        **os.environ,
        "CALIB_DATA_DIR": str(workdir),
        "CALIB_REFIT_ENABLED": "false",
        "CALIB_REFIT_EXECUTOR": "thread",
        "CALIB_SHIFT_WINDOW": str(window),
        "CALIB_SHIFT_REFERENCE_SIZE": str(reference),
        "CALIB_UPSTREAM_TIMEOUT_S": "600",
    }
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(f"{url}/healthz", proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def ask(client: httpx.Client, q: VisionQuestion, model: str = MODEL) -> Asked:
    body = {
        "model": model,
        "messages": q.messages,
        "max_tokens": 1,
        "temperature": 0,
        "calibration": {"options": q.options, "idk_option": q.idk_option, "task": TASK},
    }
    r = client.post("/v1/chat/completions", json=body)
    r.raise_for_status()
    cal = r.json()["calibration"]
    return Asked(q, cal["id"], cal.get("answer"), cal.get("confidence"), cal.get("raw_confidence"))


def ask_all(client: httpx.Client, qs: list[VisionQuestion], workers: int, **kw: Any) -> list[Asked]:
    with ThreadPoolExecutor(workers) as ex:
        return list(ex.map(lambda q: ask(client, q, **kw), qs))


def label(client: httpx.Client, asked: list[Asked]) -> None:
    items = [{"id": a.id, "label": a.question.answer} for a in asked]
    for start in range(0, len(items), 500):
        client.post("/v1/feedback", json=items[start : start + 500]).raise_for_status()


def shift_report(client: httpx.Client, settle_s: float = 0.5) -> dict[str, Any]:
    time.sleep(settle_s)  # the writer embeds within its flush interval (0.1 s)
    r = client.get(f"/v1/calibration/models/{MODEL}/shift", params={"task": TASK})
    r.raise_for_status()
    return r.json()


def ece(asked: list[Asked], calibrated: bool = True) -> float:
    pairs = [
        (a.confidence if calibrated else a.raw_confidence, a.correct)
        for a in asked
        if (a.confidence if calibrated else a.raw_confidence) is not None
    ]
    return float(expected_calibration_error([c for c, _ in pairs], [y for _, y in pairs]))


def accuracy(asked: list[Asked]) -> float:
    return sum(a.correct for a in asked) / max(1, len(asked))


def run_shift(
    engine: str, workdir: Path, args: argparse.Namespace, qs: list[VisionQuestion]
) -> dict[str, Any]:
    """A fresh gateway (empty window) asks the shifted questions, testing every `every`."""
    first_flagged = None
    asked: list[Asked] = []
    checks = []
    with (
        gateway(engine, workdir, args.window, args.reference) as url,
        httpx.Client(base_url=url, timeout=600) as client,
    ):
        for start in range(0, len(qs), args.every):
            asked += ask_all(client, qs[start : start + args.every], args.workers)
            report = shift_report(client)
            image = report["modalities"].get("image")
            checks.append({"requests": len(asked), "image": image})
            if image and image["shifted"] and first_flagged is None:
                first_flagged = len(asked)
        label(client, asked)
    return {
        "first_flagged_at": first_flagged,
        "checks": checks,
        "n": len(asked),
        "accuracy": accuracy(asked),
        "ece_calibrated": ece(asked),
        "ece_raw": ece(asked, calibrated=False),
    }


def _start_fast_upstream() -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.fast_upstream", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/v1"
    _wait(f"{url}/models", proc)
    return proc, url


def run_null(engine: str, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    fast = None
    upstream = engine
    if args.null_upstream == "fast":
        fast, upstream = _start_fast_upstream()
    flagged = []
    try:
        with (
            gateway(upstream, workdir, args.window, args.reference) as url,
            httpx.Client(base_url=url, timeout=600) as client,
        ):
            for w in range(args.null_windows):
                qs = questions(args.seed + 100 + w, args.window, (0, 1, 2))
                ask_all(client, qs, args.workers)
                image = shift_report(client, settle_s=1.0)["modalities"].get("image")
                flagged.append(image)
    finally:
        if fast is not None:
            fast.terminate()
            fast.wait(timeout=10)
    n_flagged = sum(1 for image in flagged if image and image["shifted"])
    return {
        "upstream": args.null_upstream,
        "windows": len(flagged),
        "flagged": n_flagged,
        "rate": n_flagged / max(1, len(flagged)),
        "p_values": [image["p_value"] if image else None for image in flagged],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", default="http://127.0.0.1:8012/v1", help="tiny-vlm /v1 URL")
    parser.add_argument("--reference", type=int, default=240, help="labeled reference questions")
    parser.add_argument("--heldout", type=int, default=120, help="no-shift labeled questions")
    parser.add_argument("--shifted", type=int, default=200, help="questions per shift")
    parser.add_argument("--every", type=int, default=20, help="test after this many requests")
    parser.add_argument("--window", type=int, default=300, help="shift_window of the gateways")
    parser.add_argument("--null-windows", type=int, default=20)
    parser.add_argument("--null-upstream", choices=["engine", "fast"], default="engine")
    parser.add_argument("--shifts", nargs="*", default=["noise", "colours"])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--seed", type=int, default=3000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    engine = args.engine.rstrip("/")
    result: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="eval-shift-") as tmp:
        workdir = Path(tmp)
        with (
            gateway(engine, workdir, args.window, args.reference) as url,
            httpx.Client(base_url=url, timeout=600) as client,
        ):
            ref = ask_all(client, questions(args.seed, args.reference, (0, 1, 2)), args.workers)
            label(client, ref)
            r = client.post(f"/v1/calibration/models/{MODEL}/refit", params={"task": TASK})
            r.raise_for_status()
            refit = r.json()
            if not refit["activated"]:  # a version is needed for a reference: keep T = 1
                client.put(
                    f"/v1/calibration/models/{MODEL}/profile",
                    json={"task": TASK, "temperature": 1.0, "notes": "eval_shift: refit rejected"},
                ).raise_for_status()
            held = ask_all(client, questions(args.seed + 1, args.heldout, (0, 1, 2)), args.workers)
            report = shift_report(client)
        result["reference"] = {
            "n": len(ref),
            "accuracy": accuracy(ref),
            "refit": {k: refit.get(k) for k in ("status", "method", "temperature", "version")},
            "shift_reference_rows": report["reference"],
        }
        result["no_shift"] = {
            "n": len(held),
            "accuracy": accuracy(held),
            "ece_calibrated": ece(held),
            "ece_raw": ece(held, calibrated=False),
            "image": report["modalities"].get("image"),
        }
        print(json.dumps({"reference": result["reference"], "no_shift": result["no_shift"]}))
        for name in args.shifts:
            if name == "noise":
                qs = questions(args.seed + 2, args.shifted, (3,))
            else:
                with unseen_colours():
                    qs = questions(
                        args.seed + 3, args.shifted, (0, 1, 2), ("shape", "count", "position")
                    )
            result[f"shift_{name}"] = run_shift(engine, workdir, args, qs)
            print(json.dumps({name: result[f"shift_{name}"]}))
        if args.null_windows:
            result["false_alarms"] = run_null(engine, workdir, args)
            print(json.dumps({"false_alarms": result["false_alarms"]}))
    result["seconds"] = round(time.monotonic() - t0, 1)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


def table(result: dict[str, Any]) -> str:
    lines = [
        "| data | n | accuracy | ECE calibrated | ECE raw | image flagged at (requests) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    no = result["no_shift"]
    lines.append(
        f"| no shift (held out) | {no['n']} | {no['accuracy']:.3f} | {no['ece_calibrated']:.3f} "
        f"| {no['ece_raw']:.3f} | – |"
    )
    for key, value in result.items():
        if key.startswith("shift_"):
            flagged = value["first_flagged_at"]
            lines.append(
                f"| {key[6:]} | {value['n']} | {value['accuracy']:.3f} | "
                f"{value['ece_calibrated']:.3f} | {value['ece_raw']:.3f} | "
                f"{flagged if flagged is not None else 'not flagged'} |"
            )
    fa = result.get("false_alarms")
    if fa:
        p_values = [p for p in fa["p_values"] if p is not None]
        mean_p = sum(p_values) / max(1, len(p_values))
        lines.append(
            f"\nfalse alarms without shift: {fa['flagged']} of {fa['windows']} windows "
            f"({fa['rate']:.0%}; upstream: {fa['upstream']}); mean p-value {mean_p:.2f} "
            f"(uniform under no shift: 0.5), smallest {min(p_values, default=float('nan')):.3f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
