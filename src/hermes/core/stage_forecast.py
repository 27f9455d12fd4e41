"""What an application in progress is about to do: which tool backends its next stage may use,
how long its current stage may still run, and how late a cold backend can start warming.

Hermes warms a backend as late as it can while the instance is still likely to be ready when
the next stage asks for it: p_s, the chance that the next stage uses the backend, times
P(t_c ≥ t_s + t_p), the chance that the current stage is still running when an instance
started t_s from now is ready t_p later, must reach a threshold k.

Times are in the demand cost's seconds of service, the unit ``DemandModel`` samples in.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from hermes.core.demand_cost import FloatArray
from hermes.core.demand_sampler import DemandModel
from hermes.core.pdgraph import PDGraph


def next_backend_probability(graph: PDGraph | DemandModel, stage: str) -> dict[str, float]:
    """P(the stage after ``stage`` is a tool stage on backend b), per tool backend b seen
    after it; backends never seen next are absent. Ordered by backend name."""
    g = graph.graph if isinstance(graph, DemandModel) else graph
    out: dict[str, float] = {}
    for dst, p in g.transition_probabilities(stage).items():
        node = g.nodes.get(dst)
        if node is not None and node.kind == "tool":
            out[node.backend] = out.get(node.backend, 0.0) + p
    return dict(sorted(out.items()))


def stage_time_samples(
    model: DemandModel, stage: str, unfinished_calls: int, n: int, rng: np.random.Generator
) -> FloatArray:
    """``n`` samples of how long ``stage`` runs from now: its unfinished calls run in parallel,
    so the stage lasts as long as the longest, each drawn from the calls ``stage`` has shown.
    A stage with no call left (or none ever seen) takes 0."""
    if unfinished_calls < 0:
        raise ValueError(f"unfinished_calls must be >= 0, got {unfinished_calls}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    costs = model.call_costs(stage)
    if unfinished_calls == 0 or costs.size == 0:
        return np.zeros(n, dtype=np.float64)
    draws = costs[rng.integers(costs.size, size=(n, unfinished_calls))]
    out: FloatArray = draws.max(axis=1)
    return out


def prewarm_delay(p_s: float, t_c_samples: ArrayLike, t_p: float, k: float) -> float | None:
    """The latest delay t_s ≥ 0 at which to start warming a backend of cold start ``t_p``.

    None when p_s < k: the backend is not likely enough to be needed. Otherwise the largest
    t_s with p_s · P(t_c ≥ t_s + t_p) ≥ k, P taken over the samples of the current stage's
    remaining time t_c; 0.0 when even t_s = 0 falls short (warm now: the backend is likely
    needed and the stage may end before a warm-up does).

    "≥" is the event "ready no later than needed". On an empirical distribution it makes the
    latest t_s exist (a sample minus t_p); for a continuous t_c it equals the strict form.
    """
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k must be in (0, 1], got {k!r}")
    if not 0.0 <= p_s <= 1.0 + 1e-9:  # a sum of transition probabilities may round above 1
        raise ValueError(f"p_s must be a probability, got {p_s!r}")
    if not 0.0 <= t_p < math.inf:
        raise ValueError(f"t_p must be finite and >= 0, got {t_p!r}")
    t_c = np.asarray(t_c_samples, dtype=np.float64).ravel()
    if t_c.size == 0:
        raise ValueError("t_c_samples must not be empty")
    if not np.isfinite(t_c).all():
        raise ValueError("t_c_samples must be finite")
    if p_s < k:
        return None
    n = t_c.size
    # The j-th largest sample x has at least j samples ≥ x: the first j that meets the bound
    # gives the latest x = t_s + t_p. j = n always does, as p_s ≥ k.
    longest_first = np.sort(t_c)[::-1]
    enough = p_s * (np.arange(1, n + 1) / n) >= k
    latest = float(longest_first[int(np.argmax(enough))]) - t_p
    return latest if latest > 0.0 else 0.0
