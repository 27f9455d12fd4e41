"""One QLM experiment run on the simulator (`sim.queue_shell`), and its summary.

A request's SLO is on its completion: it meets it when it finishes within `slo_s` of its
arrival, as QLM's estimator predicts when a group has drained.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from hermes.cluster.multi_model import ModelInstance
from hermes.policies.qlm.policy import QueuePolicy
from hermes.sim.metrics import attainment_by_class, completion_slo_met
from hermes.sim.queue_operations import RunCounters
from hermes.sim.queue_shell import QlmRun, QueueShell
from hermes.workloads.qlm_workloads import QlmRequest

__all__ = ["QlmRun", "RunCounters", "simulate", "summary"]


def simulate(
    requests: Sequence[QlmRequest],
    policy: QueuePolicy,
    instances: Sequence[ModelInstance],
    *,
    horizon_s: float,
    decide_interval_s: float = 1.0,
    timer: Callable[[], float] = time.perf_counter,
) -> QlmRun:
    """Run until every request has finished or `horizon_s` of simulated time has passed.
    `timer` times each call to the policy's `decide` (the planner's wall cost)."""
    shell = QueueShell(
        requests, policy, instances, timer=timer, decide_interval_s=decide_interval_s
    )
    return shell.run(horizon_s)


def summary(run: QlmRun, window: tuple[float, float] | None = None) -> dict[str, Any]:
    """SLO attainment per class and overall, throughput, swaps, utilisation, decide times.
    `window`: only requests arriving in it count (all by default)."""
    lo, hi = window or (-math.inf, math.inf)
    rows = [
        (r, f) for r, f in zip(run.requests, run.finish_s, strict=True) if lo <= r.arrival_s < hi
    ]
    overall, by_class = attainment_by_class(
        [(r.slo_class, completion_slo_met(r.arrival_s, r.slo_s, f)) for r, f in rows]
    )
    done = [f for _, f in rows if f is not None]
    decide = np.asarray(run.counters.decide_s) * 1e3
    return {
        "requests": len(rows),
        "finished": len(done),
        "slo_attainment": overall,
        "slo_attainment_by_class": by_class,
        "throughput_req_s": len(done) / run.end_s if run.end_s > 0 else 0.0,
        "output_tokens_per_s": run.output_tokens / run.end_s if run.end_s > 0 else 0.0,
        "model_swaps": run.swaps,
        "swap_s": run.swap_s,
        "gpu_utilisation": run.utilisation,
        "decisions": run.counters.decisions,
        "decide_ms_p50": float(np.percentile(decide, 50)) if decide.size else None,
        "decide_ms_p95": float(np.percentile(decide, 95)) if decide.size else None,
        "decide_ms_max": float(decide.max()) if decide.size else None,
        "evictions": run.counters.evictions,
        "restores": run.counters.restores,
        "shell_restores": run.counters.shell_restores,
        "scale_out_recommendations": run.counters.scale_outs,
        "refused_operations": dict(sorted(run.counters.refused.items())),
        "end_s": run.end_s,
    }
