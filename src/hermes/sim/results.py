"""The result JSON of a simulation, from its parts."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from hermes.sim.metrics import app_figures, engine_figures, request_summary, tool_figures
from hermes.sim.prefix_figures import prefix_cache_figures
from hermes.sim.stream_figures import stream_results

if TYPE_CHECKING:
    from hermes.sim.simulation import Simulation


def simulation_results(sim: Simulation) -> dict[str, object]:
    """Every figure of a run: requests, engines, prefix caches, applications, tools, streams,
    shared GPUs and KV retention."""
    runners = [r for g in sim.groups.values() for r in g.runners]
    values = [r.engine.itl_samples() for r in runners]
    itl = (
        np.concatenate([v for v, _ in values]) if values else np.empty(0),
        np.concatenate([w for _, w in values]) if values else np.empty(0),
    )
    out = request_summary(sim.requests, itl, sim.slo)
    span = float(out["makespan_s"])  # type: ignore[arg-type]
    out["instances"] = [
        {
            **engine_figures(r.name, r.engine, len(r.requests), span),
            "prefix_cache": prefix_cache_figures([r]),
            **({"admission": sim.admissions[r.name].figures()} if r.name in sim.admissions else {}),
        }
        for r in runners
    ]
    out["prefix_cache"] = prefix_cache_figures(runners)
    now = sim.loop.now
    if sim.apps:
        apps = app_figures(list(sim.apps.values()))
        out["apps"] = apps
        out["act"] = apps["act"]
    if sim.tools:
        backends = list(sim.tools.values())
        out["tools"] = {
            name: tool_figures(t.pool, t.cold_wait_s, now) for name, t in sorted(sim.tools.items())
        }
        out["tools_total"] = {
            "warm_instance_s": sum(t.pool.warm_instance_seconds(now) for t in backends),
            "cold_wait_s": sum(t.cold_wait_s for t in backends),
            "cold_starts": sum(t.pool.cold_starts for t in backends),
        }
    out.update(stream_results(sim.streams, out.get("slo_attainment"), now))
    clusters = list({id(c): c for c in sim.shared.values()}.values())
    shared = [c.results(now) for c in clusters]
    if shared:
        out["shared_gpus"] = shared
    out["model_swaps"] = sum(int(s["model_swaps"]) for s in shared)  # type: ignore[call-overload]
    if sim.kv_retention is not None:
        out["kv_retention"] = sim.kv_retention.figures()
    out["events"] = sim.loop.processed
    return out
