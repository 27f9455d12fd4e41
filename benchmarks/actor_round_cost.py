"""What one ranking round costs the scheduler core in `benchmarks/ray_scheduler.py`'s setting:
gittins, 10,000 calls waiting behind 8 upstreams of 64 slots, each call its own application
(of a type without a graph, so ranked by attained service), traffic between rounds.

    python benchmarks/actor_round_cost.py [--queued 10000] [--rounds 5] [--json OUT]

The core is filled as the benchmark fills it (no Ray: the core in this process, not started,
so that no periodic round runs but the ones timed); then, in turn, rounds over every waiting
call (`incremental_ranks = False`, what the code before did every 0.1 s) and over the
applications that changed since the last round, each after 500 calls ordered (releases and
new calls in batches of 100: about what the actor orders between two rounds at 5,000/s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import ray_scheduler as rs  # the benchmark's own config and driver
from hermes.ray_serve.protocol import Op
from hermes.ray_serve.scheduler import SchedulerCore
from hermes.testing.asgi_thread import serving
from hermes.testing.blocking_upstream import BlockingUpstream

OUT = Path(__file__).resolve().parent / "results" / "ray" / "round_cost.json"


async def _measure(url: str, queued: int, rounds: int) -> dict[str, Any]:
    core = SchedulerCore.from_config(rs.config(url, 0, queued, "gittins"))

    async def step(replica: str, ops: list[Op]) -> Any:
        return await core.step(replica, ops)

    driver = rs._Driver(step, queued)
    await driver.fill()
    gw = core.gateway
    times: dict[str, list[float]] = {"full": [], "incremental": []}
    for _ in range(rounds):
        for name in times:
            gw.incremental_ranks = name == "incremental"
            gw.rerank()  # what changed before this round's turn is ranked here
            await driver.rate(100, 5)
            t = time.perf_counter()
            gw.rerank()
            times[name].append((time.perf_counter() - t) * 1e3)
    return {
        name: {"median_ms": round(statistics.median(ts), 3), "ms": [round(t, 3) for t in ts]}
        for name, ts in times.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queued", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path, default=OUT)
    args = ap.parse_args()
    load = os.getloadavg()[0]
    with serving(BlockingUpstream(is_open=True).app) as url:
        rounds = asyncio.run(_measure(url, args.queued, args.rounds))
    out = {
        "queued": args.queued,
        "calls_ordered_between_rounds": 500,
        "rounds": rounds,
        "machine": {"cpus": os.cpu_count(), "load_1m": load, "load_1m_after": os.getloadavg()[0]},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
