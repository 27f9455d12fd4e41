"""The simulator on a 64-replica cluster (examples/cluster64.yaml): its wall time and speed.

    python benchmarks/cluster_scale.py [--replicas 8,64] [--json OUT]

For each replica count, examples/cluster64.yaml with its load scaled to the replicas (the same
load per replica: the Azure trace's rate and the applications' count in proportion), simulated
in this process (`hermes.sim.build.simulate`, as `hermes sim --config` does). Reported: wall
seconds, this process's CPU seconds (on a shared machine the two differ by what other work
took), simulated seconds, events processed and events per wall and per CPU second, requests
and applications served. The load average before and after says how busy the machine was.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from hermes.sim.build import simulate
from hermes.sim.config import load_config

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "cluster64.yaml"
OUT = Path(__file__).resolve().parent / "results" / "scaling" / "cluster_scale.json"


def run(replicas: int) -> dict[str, Any]:
    base = load_config(CONFIG)
    group = base.instances[0]
    scale = replicas / group.count
    assert base.requests is not None
    assert base.apps is not None
    requests = base.requests.model_copy(
        update={
            "arrivals": base.requests.arrivals.model_copy(
                update={"time_scale": base.requests.arrivals.time_scale / scale}
            )
        }
    )
    apps = base.apps.model_copy(update={"count": max(1, round(base.apps.count * scale))})
    cfg = base.model_copy(
        update={
            "instances": [group.model_copy(update={"count": replicas})],
            "requests": requests,
            "apps": apps,
        }
    )
    load_before = os.getloadavg()
    cpu = time.process_time()
    out: Any = simulate(cfg)
    cpu_s = time.process_time() - cpu
    wall = float(out["wall_s"])
    row = {
        "replicas": replicas,
        "wall_s": wall,
        "cpu_s": cpu_s,
        "simulated_s": out["makespan_s"],
        "events": out["events"],
        "events_per_wall_s": out["events"] / wall,
        "events_per_cpu_s": out["events"] / cpu_s,
        "requests": out["requests"],
        "requests_completed": out["completed"],
        "apps": apps.count,
        "apps_completed": out["apps"]["completed"],
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--replicas", default="64", help="comma-separated replica counts")
    p.add_argument("--json", type=Path, default=OUT)
    a = p.parse_args()
    rows = [run(int(n)) for n in a.replicas.split(",")]
    report = {
        "config": str(CONFIG.relative_to(ROOT)),
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "rows": rows,
    }
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
