"""The tiny VLM on the real engine, through the gateway: accuracy by family × difficulty.

Held-out image questions (`calib dataset build --form vision`, another seed than training's
streams) are sent as chat requests with a PNG data URL to a real gateway (`calib serve`, a
subprocess) in front of the real vLLM CPU engine serving `tiny-vlm`. The gateway scores the
options A–E from the engine's top-20 logprobs at the answer token (options mode); the answer is
the option it reads, the raw confidence its probability. Printed:

* accuracy and mean raw confidence by family × difficulty (targets: ≥ 0.90 at difficulty 0,
  falling with difficulty);
* image swap: pairs of difficulty-0 questions of one family with different answers, each asked
  with the other's image — the share of asks whose answer moves to the other image's answer
  (target ≥ 0.80);
* AUROC of the raw confidence for correctness over all difficulties (target ≥ 0.75).

    python -m benchmarks.eval_vision                          # engine on :8012 (started if not)
    python -m benchmarks.eval_vision --engine http://127.0.0.1:8012/v1 --n 80 --seed 1000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
from sklearn.metrics import roc_auc_score

from service.datasets.vision import DIFFICULTIES, FAMILIES, VisionQuestion, build_vision_set

MODEL = "tiny-vlm"


@dataclass(frozen=True)
class Answer:
    question: VisionQuestion
    option: str | None
    confidence: float | None

    @property
    def correct(self) -> bool:
        return self.option == self.question.answer


def ask(client: httpx.Client, q: VisionQuestion) -> Answer:
    body = {
        "model": MODEL,
        "messages": q.messages,
        "max_tokens": 1,
        "temperature": 0,
        "calibration": {"options": q.options, "idk_option": q.idk_option},
    }
    r = client.post("/v1/chat/completions", json=body)
    r.raise_for_status()
    cal = r.json()["calibration"]
    return Answer(q, cal.get("answer"), cal.get("raw_confidence"))


def ask_all(gateway: str, questions: list[VisionQuestion], workers: int) -> list[Answer]:
    with httpx.Client(base_url=gateway, timeout=300) as client, ThreadPoolExecutor(workers) as ex:
        return list(ex.map(lambda q: ask(client, q), questions))


def swap_pairs(questions: list[VisionQuestion], rng: random.Random) -> list[VisionQuestion]:
    """Each difficulty-0 answerable question asked with the image of a partner (same family,
    another answer); the swapped question's `answer` is the partner's."""
    swapped = []
    for family in FAMILIES:
        pool = [q for q in questions if q.family == family and q.difficulty == 0 and q.answerable]
        rng.shuffle(pool)
        used: set[str] = set()
        for a in pool:
            if a.id in used:
                continue
            partner = next((b for b in pool if b.id not in used | {a.id} and b.answer != a.answer),
                           None)  # fmt: skip
            if partner is None:
                continue
            used |= {a.id, partner.id}
            for q, other in ((a, partner), (partner, a)):
                moved = q.with_image(other.image_url)
                swapped.append(
                    VisionQuestion(**{**moved.to_json(), "answer": other.answer,
                                      "id": f"{q.id}+img:{other.id}"})
                )  # fmt: skip
    return swapped


def table(answers: list[Answer]) -> str:
    cells: dict[tuple[str, int], list[Answer]] = defaultdict(list)
    for a in answers:
        cells[(a.question.family, a.question.difficulty)].append(a)
        cells[(a.question.family, -1)].append(a)
        cells[("all", a.question.difficulty)].append(a)
        cells[("all", -1)].append(a)
    head = "| family | " + " | ".join(f"d{d}" for d in DIFFICULTIES) + " | all |"
    lines = [head, "|" + " --- |" * (len(DIFFICULTIES) + 2)]
    for family in (*FAMILIES, "all"):
        row = [f"| {family} |"]
        for d in (*DIFFICULTIES, -1):
            cell = cells.get((family, d), [])
            if not cell:
                row.append(" – |")
                continue
            acc = sum(a.correct for a in cell) / len(cell)
            conf = [a.confidence for a in cell if a.confidence is not None]
            mean_conf = sum(conf) / len(conf) if conf else float("nan")
            row.append(f" {acc:.2f} ({mean_conf:.2f}, n={len(cell)}) |")
        lines.append("".join(row))
    return "\n".join(lines)


def auroc(answers: list[Answer]) -> float:
    scored = [(a.confidence, a.correct) for a in answers if a.confidence is not None]
    labels = [c for _, c in scored]
    if len(set(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, [s for s, _ in scored]))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ensure_engine(url: str | None) -> str:
    if url:
        return url.rstrip("/")
    from service.engine.vlm.prepare import VLM_PORT

    default = f"http://127.0.0.1:{VLM_PORT}"
    try:
        if httpx.get(f"{default}/health", timeout=2).status_code == 200:
            return f"{default}/v1"
    except httpx.HTTPError:
        pass
    calib = [sys.executable, "-m", "clients.cli", "engine"]
    subprocess.run([*calib, "prepare", "--model", MODEL], check=True)
    subprocess.run([*calib, "start", "--model", MODEL], check=True)
    return f"{default}/v1"


def _start_gateway(engine: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "clients.cli", "serve", "--port", str(port), "--upstream", engine,
           "--db", f"sqlite:///{workdir / 'calib.db'}", "--log-level", "warning"]  # fmt: skip
    env = {**os.environ, "CALIB_DATA_DIR": str(workdir)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.25)
    proc.kill()
    raise RuntimeError("the gateway did not become healthy")


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", help="tiny-vlm's /v1 base URL (default: :8012, started)")
    parser.add_argument("--n", type=int, default=80, help="questions per family")
    parser.add_argument("--seed", type=int, default=1000, help="held-out seed")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    engine = _ensure_engine(args.engine)
    questions = build_vision_set(seed=args.seed, n=args.n)
    swaps = swap_pairs(questions, random.Random(args.seed))
    with tempfile.TemporaryDirectory(prefix="eval-vision-") as tmp:
        proc, gateway = _start_gateway(engine, Path(tmp))
        try:
            t0 = time.monotonic()
            answers = ask_all(gateway, questions, args.workers)
            swapped = ask_all(gateway, swaps, args.workers)
            seconds = time.monotonic() - t0
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    d0 = [a for a in answers if a.question.difficulty == 0]
    result = {
        "n": len(answers),
        "seed": args.seed,
        "accuracy": sum(a.correct for a in answers) / len(answers),
        "accuracy_d0": sum(a.correct for a in d0) / len(d0),
        "by_difficulty": {
            d: sum(a.correct for a in answers if a.question.difficulty == d)
            / max(1, sum(a.question.difficulty == d for a in answers))
            for d in DIFFICULTIES
        },
        "swap_moved": sum(a.correct for a in swapped) / max(1, len(swapped)),
        "swap_n": len(swapped),
        "auroc": auroc(answers),
        "seconds": round(seconds, 1),
    }
    print(table(answers))
    print("cells: accuracy (mean raw confidence, n)")
    print(
        f"\naccuracy at difficulty 0: {result['accuracy_d0']:.3f} (target >= 0.90)\n"
        f"accuracy by difficulty: "
        + ", ".join(f"d{d} {v:.3f}" for d, v in result["by_difficulty"].items())
        + f"\nimage swap: answer moved to the other image's answer in "
        f"{result['swap_moved']:.3f} of {len(swapped)} asks (target >= 0.80)\n"
        f"raw-confidence AUROC: {result['auroc']:.3f} (target >= 0.75)\n"
        f"{len(answers) + len(swapped)} requests in {seconds:.0f} s"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
