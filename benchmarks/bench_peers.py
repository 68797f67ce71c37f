"""The gateway next to its peers: direct, `calib serve` and the LiteLLM proxy on one upstream.

One process tree, one run: the fast upstream (`benchmarks.fast_upstream`, a vLLM-shaped chat
answer with 8 tokens x top-20 logprobs) and the load generator (`benchmarks.loadgen`) are
shared; each target is started, measured and stopped in turn, with the same bodies, so the rows
differ only by what sits between the load and the upstream:

- `direct`: the load straight to the upstream (the floor: load generator + loopback);
- `calib serve`: the gateway, options mode (`calibration.options`), SQLite store, predictions
  recorded, one worker;
- `litellm`: the LiteLLM proxy (`litellm[proxy]`, pinned below), one worker, a master key set,
  the model routed to the upstream as an OpenAI-compatible endpoint. It is installed into its
  own virtualenv on first use (`--litellm-venv`, default under the cache directory), so its
  dependencies never meet the project's; if that fails the row is skipped with the reason.
  The client asks it for the same `logprobs: true, top_logprobs: 20` the gateway asks the
  upstream for, so both relay the same answer.

Per target and concurrency: p50/p99 latency and what it adds to direct, throughput, and the
target's CPU time per request (its whole process tree, from /proc). With `--pin` (default on 2+
CPUs) the target runs on CPU 1, upstream and load on CPU 0, as in bench_overhead.

`--scale-out` measures `calib serve --workers 2` against `--workers 1` instead (unpinned: the
workers get both CPUs, which the upstream and the load share with them), at `--concurrency`
(default 64), alternating `--repeat` times (default 3; medians): throughput ratio and CPU per
request (the whole process tree: uvicorn's supervisor and the workers).

    python -m benchmarks.bench_peers                      # c = 1 and 16, non-streamed
    python -m benchmarks.bench_peers --modes plain stream --markdown
    python -m benchmarks.bench_peers --scale-out          # --workers 2 vs 1 at c = 64
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks._table import table
from benchmarks.bench_overhead import _free_port, _taskset, _wait, bodies, pct
from benchmarks.fast_upstream import loop_factory
from benchmarks.loadgen import LoadResult, run_load

ROOT = Path(__file__).resolve().parents[1]
LITELLM = "litellm[proxy]==1.108.7"  # the version of the measurement
MASTER_KEY = "sk-bench-master-key"


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mllm-calib"


def cpu_tree(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants (Linux /proc)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += times.get(current, 0.0)
        todo.extend(child for child, parent in parents.items() if parent == current)
    return total


def ensure_litellm(venv: Path) -> tuple[Path | None, str]:
    """The `litellm` executable in `venv`, installed on first use; (None, why) if it can't be."""
    exe = venv / "bin" / "litellm"
    marker = venv / ".installed"
    if exe.exists() and marker.exists() and marker.read_text().strip() == LITELLM:
        return exe, ""
    print(f"installing {LITELLM} into {venv} (first use) ...", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "--quiet", LITELLM],
            check=True,
            timeout=1800,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"could not install {LITELLM}: {exc}"
    if not exe.exists():
        return None, f"{LITELLM} installed no `litellm` command"
    marker.write_text(LITELLM)
    return exe, ""


@dataclass
class Row:
    target: str
    mode: str
    concurrency: int
    requests: int
    p50: float
    p99: float
    rps: float
    cpu_ms: float
    errors: int
    note: str = ""


class Target:
    """A server between the load and the upstream: started, measured, stopped."""

    name = ""

    def __init__(self, url: str, body: dict, headers: dict[str, str] | None = None) -> None:
        self.url, self.body, self.headers = url, body, headers
        self.proc: subprocess.Popen | None = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None


def _start(cmd: list[str], env: dict[str, str], health: str, log: Path) -> subprocess.Popen:
    with log.open("wb") as sink:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        _wait(health, proc, timeout=180.0)
    except RuntimeError:
        proc.kill()
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{cmd[0]} did not come up:\n{tail}") from None
    return proc


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        pin = args.pin and not args.scale_out and (os.cpu_count() or 1) >= 2
        self.target_cpus = "1" if pin else None
        self.load_cpus = "0" if pin else None
        if self.load_cpus:
            os.sched_setaffinity(0, {0})
        self.env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.tmp = Path(tempfile.mkdtemp(prefix="calib-peers-"))
        port = _free_port()
        self.base = f"http://127.0.0.1:{port}/v1"
        cmd = [*_taskset(self.load_cpus), sys.executable, "-m", "benchmarks.fast_upstream"]
        self.upstream = subprocess.Popen(
            [*cmd, "--port", str(port)],
            cwd=ROOT,
            env=self.env,
        )
        _wait(f"{self.base}/models", self.upstream)
        self.model = httpx.get(f"{self.base}/models", timeout=10).json()["data"][0]["id"]

    def close(self) -> None:
        self.upstream.terminate()
        self.upstream.wait(timeout=15)

    # -- targets --------------------------------------------------------------------------------
    def calib(self, workers: int = 1) -> tuple[subprocess.Popen, str]:
        port = _free_port()
        data = self.tmp / f"calib-{workers}-{port}"
        data.mkdir()
        cmd = [*_taskset(self.target_cpus), sys.executable, "-m", "clients.cli", "serve"]
        cmd += ["--port", str(port), "--upstream", self.base, "--workers", str(workers)]
        cmd += ["--db", f"sqlite:///{data / 'c.db'}", "--log-level", "warning"]
        env = {**self.env, "CALIB_DATA_DIR": str(data)}
        proc = _start(cmd, env, f"http://127.0.0.1:{port}/healthz", data / "serve.log")
        return proc, f"http://127.0.0.1:{port}/v1/chat/completions"

    def litellm(self, exe: Path) -> tuple[subprocess.Popen, str]:
        port = _free_port()
        config = self.tmp / "litellm.yaml"
        config.write_text(
            "model_list:\n"
            f"  - model_name: {self.model}\n"
            "    litellm_params:\n"
            f"      model: openai/{self.model}\n"
            f"      api_base: {self.base}\n"
            "      api_key: unused\n"
            "general_settings:\n"
            f"  master_key: {MASTER_KEY}\n"
        )
        cmd = [*_taskset(self.target_cpus), str(exe), "--config", str(config)]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
        env = {
            **os.environ,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the cost map from the web
            "LITELLM_LOG": "ERROR",
        }
        proc = _start(cmd, env, f"http://127.0.0.1:{port}/health/liveliness", self.tmp / "ll.log")
        return proc, f"http://127.0.0.1:{port}/v1/chat/completions"

    # -- measuring ------------------------------------------------------------------------------
    def measure(
        self,
        runner: asyncio.Runner,
        target: str,
        url: str,
        body: dict,
        mode: str,
        concurrency: int,
        pid: int | None,
        *,
        headers: dict[str, str] | None = None,
        check: bytes | None = None,
    ) -> Row:
        args = self.args
        n = max(args.requests if concurrency > 1 else args.requests // 2, 4 * concurrency)
        warmup = min(n // 5, 200)
        cpu0 = cpu_tree(pid) if pid else 0.0
        result: LoadResult = runner.run(
            run_load(url, body, n, concurrency, warmup=warmup, headers=headers, check=check)
        )
        done = len(result.latencies) + max(warmup, concurrency)
        cpu = (cpu_tree(pid) - cpu0) / done * 1000 if pid else float("nan")
        lat = result.ttfts if mode == "stream" else result.latencies
        return Row(
            target=target,
            mode=mode,
            concurrency=concurrency,
            requests=n,
            p50=pct(lat, 50),
            p99=pct(lat, 99),
            rps=result.rps,
            cpu_ms=cpu,
            errors=result.errors,
        )


def run_peers(bench: Bench, runner: asyncio.Runner) -> list[Row]:
    args = bench.args
    rows: list[Row] = []
    exe, why = (None, "--no-litellm") if args.no_litellm else ensure_litellm(args.litellm_venv)
    for mode in args.modes:
        stream = mode == "stream"
        gateway_body, direct_body = bodies(bench.model, args.max_tokens, stream)
        for c in args.concurrency:
            print(f"{mode}, concurrency {c}: direct ...", flush=True)
            rows.append(
                bench.measure(runner, "direct", f"{bench.base}/chat/completions", direct_body,
                              mode, c, None)
            )  # fmt: skip
            print(f"{mode}, concurrency {c}: calib serve ...", flush=True)
            proc, url = bench.calib()
            try:
                rows.append(
                    bench.measure(runner, "calib serve", url, gateway_body, mode, c, proc.pid,
                                  check=b'"calibration"')
                )  # fmt: skip
            finally:
                proc.terminate()
                proc.wait(timeout=20)
            if exe is None:
                rows.append(Row("litellm", mode, c, 0, *(float("nan"),) * 4, 0, note=why))
                continue
            print(f"{mode}, concurrency {c}: litellm ...", flush=True)
            try:
                proc, url = bench.litellm(exe)
            except RuntimeError as exc:
                print(exc, flush=True)
                rows.append(Row("litellm", mode, c, 0, *(float("nan"),) * 4, 0, note="no start"))
                continue
            try:
                rows.append(
                    bench.measure(runner, "litellm", url, direct_body, mode, c, proc.pid,
                                  headers={"authorization": f"Bearer {MASTER_KEY}"},
                                  check=b'"choices"')
                )  # fmt: skip
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return rows


def run_scale_out(bench: Bench, runner: asyncio.Runner) -> list[Row]:
    """--workers 1 and 2 alternating `--repeat` times per concurrency; medians per setting."""
    args = bench.args
    rows: list[Row] = []
    gateway_body, _ = bodies(bench.model, args.max_tokens, False)
    for c in args.concurrency:
        runs: dict[int, list[Row]] = {1: [], 2: []}
        for _ in range(args.repeat):
            for workers in (1, 2):
                print(f"concurrency {c}: calib serve --workers {workers} ...", flush=True)
                proc, url = bench.calib(workers)
                try:
                    runs[workers].append(
                        bench.measure(
                            runner, f"calib serve --workers {workers}", url, gateway_body,
                            "plain", c, proc.pid, check=b'"calibration"',
                        )
                    )  # fmt: skip
                finally:
                    proc.terminate()
                    proc.wait(timeout=30)
        for measured in runs.values():
            first = measured[0]
            rows.append(
                Row(
                    target=first.target,
                    mode=first.mode,
                    concurrency=c,
                    requests=first.requests,
                    p50=statistics.median(r.p50 for r in measured),
                    p99=statistics.median(r.p99 for r in measured),
                    rps=statistics.median(r.rps for r in measured),
                    cpu_ms=statistics.median(r.cpu_ms for r in measured),
                    errors=sum(r.errors for r in measured),
                )
            )
    return rows


def format_table(rows: list[Row], *, markdown: bool = False) -> str:
    direct = {(r.mode, r.concurrency): r for r in rows if r.target == "direct"}
    head = ["target", "mode", "conc", "reqs", "p50", "p99", "added p50", "added p99", "req/s"]
    head += ["CPU/req", "errors"]
    body = []
    for r in rows:
        d = direct.get((r.mode, r.concurrency))
        added50 = r.p50 - d.p50 if d and r is not d else float("nan")
        added99 = r.p99 - d.p99 if d and r is not d else float("nan")
        body.append(
            [
                r.target,
                "stream (TTFT)" if r.mode == "stream" else "non-stream",
                str(r.concurrency),
                str(r.requests),
                f"{r.p50:.2f} ms",
                f"{r.p99:.2f} ms",
                "—" if added50 != added50 else f"{added50:.2f} ms",
                "—" if added99 != added99 else f"{added99:.2f} ms",
                f"{r.rps:.0f}",
                "—" if r.cpu_ms != r.cpu_ms else f"{r.cpu_ms:.2f} ms",
                r.note or str(r.errors),
            ]
        )
    return table(head, body, markdown)


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="measured requests per run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=None)
    parser.add_argument("--modes", nargs="+", choices=["plain", "stream"], default=["plain"])
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="don't use taskset")
    parser.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM proxy")
    parser.add_argument(
        "--litellm-venv",
        type=Path,
        default=_cache_dir() / "bench-litellm",
        help="virtualenv for the LiteLLM proxy (created on first use)",
    )
    parser.add_argument(
        "--scale-out", action="store_true", help="calib serve --workers 2 vs 1 (default c = 64)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="--scale-out: runs per setting")
    parser.add_argument("--markdown", action="store_true", help="also print a markdown table")
    args = parser.parse_args(argv)
    if args.concurrency is None:
        args.concurrency = [64] if args.scale_out else [1, 16]

    bench = Bench(args)
    started = time.monotonic()
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            rows = run_scale_out(bench, runner) if args.scale_out else run_peers(bench, runner)
    finally:
        bench.close()
    pinning = (
        f"targets on CPU {bench.target_cpus}, load + upstream on CPU {bench.load_cpus}"
        if bench.target_cpus
        else "not pinned"
    )
    what = "scale-out" if args.scale_out else "peers"
    print(
        f"\n{what}: chat, max_tokens {args.max_tokens}, top-20 logprobs; {os.cpu_count()} CPUs, "
        f"{pinning}; load average {os.getloadavg()[0]:.2f}; {time.monotonic() - started:.0f} s\n"
    )
    print(format_table(rows))
    if args.scale_out:
        for c in args.concurrency:
            one = next(r for r in rows if r.concurrency == c and r.target.endswith("1"))
            two = next(r for r in rows if r.concurrency == c and r.target.endswith("2"))
            print(
                f"\nc = {c}: --workers 2 / --workers 1 throughput {two.rps / one.rps:.2f}x, "
                f"CPU/req {one.cpu_ms:.2f} -> {two.cpu_ms:.2f} ms"
            )
    if args.markdown:
        print()
        print(format_table(rows, markdown=True))
    return rows


if __name__ == "__main__":
    main()
