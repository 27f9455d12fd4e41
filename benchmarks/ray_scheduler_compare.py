"""`benchmarks/ray_scheduler.py` for this code and an older one, run in turn (old, new, old,
new, ...) so that a shared machine's load moves both alike; the median of each figure.

    git worktree add /tmp/h3base 453114c        # the code before the scheduler's speed-ups
    python benchmarks/ray_scheduler_compare.py --base /tmp/h3base/src [--pairs 3]
        [--latency-pairs 2] [--base-direct] [--json OUT]

Each pair: the calls ordered per second (`--skip-latency`) by the old code (`PYTHONPATH`
set to `--base`; its actor and replicas inherit it) and by this one; then `--latency-pairs`
pairs of latency runs (`--skip-rates`; the old code without direct ingress and the socket
link, which it lacks, unless `--base-direct` says it has them). Every run's JSON is kept in
the output beside the medians, with the load average before and after each.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "ray" / "compare.json"


def _run(base: Path | None, flags: list[str], base_direct: bool = False) -> dict[str, Any]:
    env = dict(os.environ)
    if base is not None:
        env["PYTHONPATH"] = str(base)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        cmd = [sys.executable, str(HERE / "ray_scheduler.py"), "--json", str(out), *flags]
        if base is not None and not base_direct:
            cmd.append("--skip-direct")
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        result: dict[str, Any] = json.loads(out.read_text())
    return result


def _leaves(d: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Every number in `d` by its dotted path."""
    out: dict[str, float] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _leaves(v, f"{prefix}{k}.")
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[prefix + k] = float(v)
    return out


def _medians(runs: list[dict[str, Any]], key: str) -> dict[str, float]:
    values: dict[str, list[float]] = {}
    for r in runs:
        for path, v in _leaves(r.get(key, {})).items():
            values.setdefault(path, []).append(v)
    return {path: statistics.median(vs) for path, vs in values.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="the older code's src directory")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--latency-pairs", type=int, default=2)
    ap.add_argument("--json", type=Path, default=OUT)
    ap.add_argument(
        "--base-direct",
        action="store_true",
        help="the older code has direct ingress and the socket link too: measure them on both",
    )
    args = ap.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {"old": [], "new": [], "old_lat": [], "new_lat": []}
    for i in range(args.pairs):
        for name, base in (("old", args.base), ("new", None)):
            print(f"rates {name} {i + 1}/{args.pairs}", file=sys.stderr, flush=True)
            runs[name].append(_run(base, ["--skip-latency"], args.base_direct))
    for i in range(args.latency_pairs):
        for name, base in (("old_lat", args.base), ("new_lat", None)):
            print(f"latency {name} {i + 1}/{args.latency_pairs}", file=sys.stderr, flush=True)
            runs[name].append(_run(base, ["--skip-rates"], args.base_direct))
    report = {
        "base": str(args.base),
        "medians": {
            "calls_per_s": {
                "old": _medians(runs["old"], "calls_per_s"),
                "new": _medians(runs["new"], "calls_per_s"),
            },
            "latency": {
                "old": _medians(runs["old_lat"], "latency"),
                "new": _medians(runs["new_lat"], "latency"),
            },
        },
        "runs": runs,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["medians"], indent=2))


if __name__ == "__main__":
    main()
