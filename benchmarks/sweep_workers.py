"""`hermes bench hermes --workers N` against `--workers 1`: wall time and identical results.

    python benchmarks/sweep_workers.py [--workers 1,2] [--json OUT] [-- BENCH ARGS...]

Runs the command line itself (a fresh `hermes` process per run, as a user would) at a reduced
size by default (40 applications, one workload draw, intensities 1 and 3, the seven ranking
policies at 256 and 8 sequences, the paper's seven experiments, ranking rounds up to 1,000
applications), once per worker count given, one after the other (`--workers 1,2,1,2,1,2`
alternates them, so that the machine's drift hits both alike). Speed-ups are against the
median wall time of the first count's runs. Reported per run: the wall time, the load average
before and after and what the machine gave two processes just before (`two_process_ratio`:
on a shared machine other work competes for the same cores, so the speed-up is only
meaningful beside them), and whether its results.json is the same as the first run's apart
from what a clock measured (wall times and the ranking-round timings of `overhead`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERMES = Path(sys.executable).with_name("hermes")
REDUCED = [
    *("--apps", "40", "--workloads", "1", "--intensity", "1,3", "--max-num-seqs", "256,8"),
    *("--policies", "vllm,parrot,vtc,plas,srjf-mean,gittins,oracle"),
    *("--experiments", "load,deadlines,prewarm,ablation,overhead,tools,kv"),
    *("--overhead-apps", "1,10,100,1000"),
]
OUT = Path(__file__).resolve().parent / "results" / "sweep_workers" / "bench_hermes.json"


def _comparable(results: dict[str, Any]) -> dict[str, Any]:
    """The results without what a clock measured."""
    out = {k: v for k, v in results.items() if k not in ("wall_s", "overhead")}
    out["targets"] = [t for t in results["targets"] if "ranking round" not in t["target"]]
    return out


def _burn(n: int = 20_000_000) -> int:
    x = 0
    for i in range(n):
        x += i & 7
    return x


def two_process_ratio() -> float:
    """What the machine gives two processes right now: the same CPU-bound job alone, then two
    at once, as work done per second (2.0 on two free cores). On a machine shared with other
    sessions this is the ceiling a two-worker speed-up can reach at that moment."""
    import multiprocessing

    start = time.perf_counter()
    _burn()
    one = time.perf_counter() - start
    ctx = multiprocessing.get_context("fork")
    start = time.perf_counter()
    procs = [ctx.Process(target=_burn) for _ in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    return 2 * one / (time.perf_counter() - start)


def run(workers: int, args: list[str], out_dir: Path) -> dict[str, Any]:
    cmd = [str(HERMES), "bench", "hermes", *args, "--workers", str(workers)]
    cmd += ["--out", str(out_dir)]
    ceiling = two_process_ratio()
    load_before = os.getloadavg()
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    row = {
        "workers": workers,
        "command": " ".join(["hermes", *cmd[1:-2]]),
        "wall_s": wall,
        "two_process_ratio_before": ceiling,
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }
    print(json.dumps(row), flush=True)
    return row


def _machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }


def estimate(args: list[str], workers: int) -> dict[str, Any]:
    """What the bench would take on an idle machine: the bench run once in this process
    (one worker) with each simulation's CPU time measured, then those jobs handed in order to
    `workers` workers, each job to the first free one (what the pool does), plus the CPU time
    spent outside any job (building workloads, the ranking-round overhead, reports). An
    estimate from measured CPU times, not a measurement of wall time: it leaves out what
    processes cost (start-up, pickling) and the order in which experiments feed the pool."""
    from typer.testing import CliRunner

    from hermes.cli import app
    from hermes.experiments import parallel

    jobs: list[float] = []
    plain = parallel.call

    def timed(job: Any, shared: Any) -> Any:
        start = time.process_time()
        try:
            return plain(job, shared)
        finally:
            jobs.append(time.process_time() - start)

    parallel.call = timed
    with tempfile.TemporaryDirectory() as tmp:
        cpu = time.process_time()
        result = CliRunner().invoke(app, ["bench", "hermes", *args, "--out", tmp])
        total = time.process_time() - cpu
    parallel.call = plain
    if result.exit_code != 0:
        raise SystemExit(result.output)
    free = [0.0] * workers
    for j in jobs:
        free[free.index(min(free))] += j
    serial = total - sum(jobs)
    row = {
        "jobs": len(jobs),
        "job_cpu_s": sum(jobs),
        "longest_job_cpu_s": max(jobs),
        "outside_jobs_cpu_s": serial,
        "one_worker_s": total,
        f"{workers}_workers_s": serial + max(free),
        "speedup": total / (serial + max(free)),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", default="1,2", help="worker counts, the first the baseline")
    p.add_argument("--json", type=Path, default=OUT)
    p.add_argument(
        "--estimate",
        action="store_true",
        help="instead of timing runs, estimate the idle-machine speed-up at the largest "
        "--workers from the jobs' CPU times (see estimate)",
    )
    p.add_argument("bench_args", nargs="*", help="after --: arguments of `hermes bench hermes`")
    a = p.parse_args()
    args = a.bench_args or REDUCED
    counts = [int(x) for x in a.workers.split(",")]
    if a.estimate:
        est = {
            "machine": _machine(),
            "bench_args": args,
            "idle_estimate": estimate(args, max(counts)),
        }
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(est, indent=2) + "\n")
        print(f"wrote {a.json}")
        return
    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            out_dir = Path(tmp) / f"w{n}"
            rows.append(run(n, args, out_dir))
            results.append(json.loads((out_dir / "results.json").read_text()))

    # Against the median of the baseline's runs: with repeats (1,2,1,2,...) the machine's
    # drift between runs hits both counts alike.
    def median_wall(n: int) -> float:
        return float(statistics.median(row["wall_s"] for row in rows if row["workers"] == n))

    base = median_wall(counts[0])
    for row, r in zip(rows, results, strict=True):
        row["speedup"] = base / row["wall_s"]
        row["same_results_as_first"] = _comparable(r) == _comparable(results[0])
    summary = {
        str(n): {
            "median_wall_s": median_wall(n),
            "runs": counts.count(n),
            "speedup": base / median_wall(n),
        }
        for n in dict.fromkeys(counts)
    }
    report = {
        "machine": _machine(),
        "bench_args": args,
        "runs": rows,
        "by_workers": summary,
    }

    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(report, indent=2) + "\n")
    for row in rows:
        print(
            f"workers {row['workers']}: {row['wall_s']:.1f} s wall, "
            f"speed-up {row['speedup']:.2f}, two processes got "
            f"{row['two_process_ratio_before']:.2f}x, load {row['load_before'][0]:.2f} -> "
            f"{row['load_after'][0]:.2f}, same results: {row['same_results_as_first']}"
        )
    for key, s in summary.items():
        print(
            f"workers {key}: median {s['median_wall_s']:.1f} s over {s['runs']} runs, "
            f"speed-up {s['speedup']:.2f}"
        )
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
