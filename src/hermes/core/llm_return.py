"""When an application that has just left an LLM stage will send its next LLM call: the
chance it does at all, and samples of how long its tool stages keep it away first. What a
KV retention policy weighs: keep the application's KV on the GPU until it comes back, move it
to CPU memory, or let it go.

Times are the tool stages' durations in seconds (what keeps the application away).
"""

from __future__ import annotations

import math

import numpy as np

from hermes.core.demand_sampler import DemandModel
from hermes.types import FloatArray

END = "<end>"
# A walk that has not come back after this many tool stages stops there (a lower bound).
MAX_TOOL_STAGES = 100


def tool_durations(model: DemandModel, stage: str) -> FloatArray:
    """The durations (s) of the calls tool stage `stage` has shown (wall time: a tool call's
    demand on the engine is nil, its time away is what counts here)."""
    return np.array([d for _, d, _ in model.graph.nodes[stage].calls], dtype=np.float64)


def _tool_time(model: DemandModel, stage: str, rng: np.random.Generator) -> float:
    """One visit of tool stage `stage`: its longest call of a fan-out drawn from its visits."""
    node = model.graph.nodes[stage]
    fanouts = [f for _, f in node.fanouts]
    durations = tool_durations(model, stage)
    if not fanouts or durations.size == 0:
        return 0.0
    fan = fanouts[int(rng.integers(len(fanouts)))]
    return float(durations[rng.integers(durations.size, size=max(1, fan))].max())


def llm_return_samples(
    model: DemandModel, start: str, n: int, rng: np.random.Generator
) -> FloatArray:
    """`n` samples of the time from now until the application's next LLM stage starts, when
    it is about to run stage `start` (a tool stage: its time counts; an LLM stage: 0).
    `inf` for a walk that ends first."""
    g = model.graph
    out = np.full(n, math.inf)
    steps: dict[str, tuple[list[str], FloatArray]] = {}
    for k in range(n):
        at, t = start, 0.0
        for _ in range(MAX_TOOL_STAGES):
            node = g.nodes.get(at)
            if node is None:  # the end, or a stage never seen
                break
            if node.kind == "llm":
                out[k] = t
                break
            t += _tool_time(model, at, rng)
            step = steps.get(at)
            if step is None:
                probs = g.transition_probabilities(at)
                step = steps[at] = (list(probs), np.cumsum(list(probs.values())))
            names, cum = step
            if not names:
                break
            pick = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
            at = names[min(pick, len(names) - 1)]
    return out
