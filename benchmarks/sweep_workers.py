"""`hermes bench hermes --workers N` against `--workers 1`: wall time and identical results.

    python benchmarks/sweep_workers.py [--workers 1,2] [--json OUT] [-- BENCH ARGS...]

Runs the command line itself (a fresh `hermes` process per run, as a user would) at a reduced
size by default (100 applications, one workload draw, intensities 1 and 3, every experiment,
ranking rounds up to 1,000 applications), once per worker count, one after the other. Reported
per run: the wall time and the load average before and after (on a shared machine other work
competes for the same cores: the speed-up is only meaningful beside it). Then the speed-up of
each run against the first, and whether every results.json is the same as the first apart
from what a clock measured (wall times and the ranking-round timings of `overhead`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERMES = Path(sys.executable).with_name("hermes")
REDUCED = [
    *("--apps", "100", "--workloads", "1", "--intensity", "1,3"),
    *("--overhead-apps", "1,10,100,1000"),
]
OUT = Path(__file__).resolve().parent / "results" / "sweep_workers" / "bench_hermes.json"


def _comparable(results: dict[str, Any]) -> dict[str, Any]:
    """The results without what a clock measured."""
    out = {k: v for k, v in results.items() if k not in ("wall_s", "overhead")}
    out["targets"] = [t for t in results["targets"] if "ranking round" not in t["target"]]
    return out


def run(workers: int, args: list[str], out_dir: Path) -> dict[str, Any]:
    cmd = [str(HERMES), "bench", "hermes", *args, "--workers", str(workers)]
    cmd += ["--out", str(out_dir)]
    load_before = os.getloadavg()
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    row = {
        "workers": workers,
        "command": " ".join(["hermes", *cmd[1:-2]]),
        "wall_s": wall,
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", default="1,2", help="worker counts, the first the baseline")
    p.add_argument("--json", type=Path, default=OUT)
    p.add_argument("bench_args", nargs="*", help="after --: arguments of `hermes bench hermes`")
    a = p.parse_args()
    args = a.bench_args or REDUCED
    counts = [int(x) for x in a.workers.split(",")]
    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            out_dir = Path(tmp) / f"w{n}"
            rows.append(run(n, args, out_dir))
            results.append(json.loads((out_dir / "results.json").read_text()))
    base = rows[0]["wall_s"]
    for row, r in zip(rows, results, strict=True):
        row["speedup"] = base / row["wall_s"]
        row["same_results_as_first"] = _comparable(r) == _comparable(results[0])
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "bench_args": args,
        "runs": rows,
    }
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(report, indent=2) + "\n")
    for row in rows:
        print(
            f"workers {row['workers']}: {row['wall_s']:.1f} s wall, "
            f"speed-up {row['speedup']:.2f}, load {row['load_before'][0]:.2f} -> "
            f"{row['load_after'][0]:.2f}, same results: {row['same_results_as_first']}"
        )
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
