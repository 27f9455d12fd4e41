"""How many calls per second one policy-ordered queue can order: the gateway's pure Dispatcher
(`gateway.dispatch`, the object a single scheduler holds) with 10,000 calls queued.

    python benchmarks/dispatch_scale.py [--json OUT] [--calls 50000] [--repeats 3]

Steady state: every upstream full (a limit of 8 calls each), `queued` calls waiting; each
step one call ends (`release`: its slot goes to the best-ranked waiting call) and a new call
arrives (`submit`, at a random rank), so the queue stays at its size. A step is one call
ordered: one arrival placed in policy order and one grant made. Reported: calls ordered per
second of wall time and per second of CPU time (best of `--repeats`; on a shared machine the
CPU figure is the one to compare, other work stretches the wall), by queue size and by
number of upstreams, and the time of a
re-rank of every waiting call (what a dynamic policy's ranking round costs the queue, the
policy's own rank computations apart: those are `bench hermes`'s overhead experiment).
Single-threaded Python on this machine's one core: a floor for what one scheduler process
can do, with no network or serialisation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import numpy as np

from hermes.gateway.dispatch import Dispatcher, Upstream, Waiting

OUT = Path(__file__).resolve().parent / "results" / "scaling" / "dispatch_scale.json"
SLOTS = 8  # calls each upstream holds at once


def _filled(upstreams: int, queued: int, rng: np.random.Generator) -> tuple[Dispatcher, list[str]]:
    """A dispatcher with every upstream full and `queued` calls waiting; the upstream of each
    call running, in grant order."""
    d = Dispatcher([Upstream(f"u{i}", frozenset({"m"}), SLOTS) for i in range(upstreams)])
    d.limit = queued + 1
    running: list[str] = []
    for i, p in enumerate(rng.random(upstreams * SLOTS + queued).tolist()):
        _, grants = d.submit(i, "m", p)
        running += [g.upstream for g in grants]
    assert d.queued == queued
    assert len(running) == upstreams * SLOTS
    return d, running


def calls_per_second(upstreams: int, queued: int, calls: int, seed: int) -> tuple[float, float]:
    """Calls ordered per second of wall time and per second of this process's CPU time."""
    rng = np.random.default_rng(seed)
    d, running = _filled(upstreams, queued, rng)
    ends = rng.integers(len(running), size=calls).tolist()
    ranks = rng.random(calls).tolist()
    key = len(running) + queued
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(calls):
        # A random running call ends; its slot goes to the best waiting call.
        at = ends[i]
        (grant,) = d.release(running[at])
        running[at] = grant.upstream
        d.submit(key + i, "m", ranks[i])
    elapsed, cpu_s = time.perf_counter() - start, time.process_time() - cpu
    assert d.queued == queued
    return calls / elapsed, calls / cpu_s


def rerank_ms(queued: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    d, _ = _filled(8, queued, rng)
    fresh: dict[Hashable, float] = dict(enumerate(rng.random(queued + 8 * SLOTS).tolist()))

    def rank(w: Waiting) -> float:
        return fresh[w.key]

    start = time.perf_counter()
    d.rerank(rank)
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", type=Path, default=OUT)
    p.add_argument("--calls", type=int, default=50_000)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    rows: list[dict[str, Any]] = []
    for upstreams, queued in ((64, 1_000), (64, 10_000), (64, 100_000), (8, 10_000), (512, 10_000)):
        runs = [calls_per_second(upstreams, queued, a.calls, r) for r in range(a.repeats)]
        best = max(w for w, _ in runs)
        best_cpu = max(c for _, c in runs)
        rerank = min(rerank_ms(queued, r) for r in range(a.repeats))
        row = {
            "upstreams": upstreams,
            "queued": queued,
            "calls_per_s": best,
            "calls_per_cpu_s": best_cpu,
            "cpu_us_per_call": 1e6 / best_cpu,
            "rerank_ms": rerank,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "load_average_after": os.getloadavg(),
        },
        "slots_per_upstream": SLOTS,
        "calls_timed": a.calls,
        "rows": rows,
    }
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
