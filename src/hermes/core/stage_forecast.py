"""What an application in progress is about to do: which tool backends its next stage may use,
how long its current stage may still run, and how late a cold backend can start warming.

Hermes warms a backend as late as it can while the instance is still likely to be ready when
the next stage asks for it: p_s, the chance that the next stage uses the backend, times
P(t_c ≥ t_s + t_p), the chance that the current stage is still running when an instance
started t_s from now is ready t_p later, must reach a threshold k.

An instance that has just served a call is already warm: keeping it is prewarming it. Whether
to keep it depends on the next tool stage the application reaches, however many LLM stages lie
between: ``next_tool_probability`` solves that exactly as an absorbing Markov chain over the
LLM stages, and ``next_tool_time_samples`` draws the time until that tool stage starts.

Times are in the demand cost's seconds of service, the unit ``DemandModel`` samples in.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

from hermes.core.demand_sampler import DemandModel
from hermes.core.pdgraph import PDGraph
from hermes.types import FloatArray, IntArray

# A walk that has not reached a tool stage after this many LLM stages stops there. The chain
# leaves every loop with probability 1 (each learned run ends), so only a pathological graph
# gets near it; its samples are then lower bounds.
MAX_WALK_STAGES = 1000


def next_backend_probability(graph: PDGraph | DemandModel, stage: str) -> dict[str, float]:
    """P(the stage after ``stage`` needs backend b), per backend b seen after it: a tool
    stage's backend, or an LLM stage's model where the graph knows it (a model can be cold
    too: asleep, or a LoRA adapter not loaded). Backends never seen next are absent. Ordered
    by backend name."""
    g = graph.graph if isinstance(graph, DemandModel) else graph
    out: dict[str, float] = {}
    for dst, p in g.transition_probabilities(stage).items():
        node = g.nodes.get(dst)
        if node is None:
            continue
        backend = node.backend if node.kind == "tool" else node.model
        if backend is not None:
            out[backend] = out.get(backend, 0.0) + p
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


def _graph(graph: PDGraph | DemandModel) -> PDGraph:
    return graph.graph if isinstance(graph, DemandModel) else graph


def _absorption(g: PDGraph) -> tuple[list[str], list[str], FloatArray]:
    """The LLM stages, the tool backends, and H: H[i, b] = P(the first tool stage reached from
    LLM stage i is on backend b). The rest of row i is the chance of ending first.

    H solves H = R + Q H (Q: LLM to LLM transitions, R: LLM to tool, summed per backend); a
    stage without outgoing edges ends, as in ``DemandModel``."""
    llm = [name for name, node in g.nodes.items() if node.kind == "llm"]
    backends = sorted({node.backend for node in g.nodes.values() if node.kind == "tool"})
    at = {name: i for i, name in enumerate(llm)}
    col = {b: j for j, b in enumerate(backends)}
    q = np.zeros((len(llm), len(llm)))
    r = np.zeros((len(llm), len(backends)))
    for i, name in enumerate(llm):
        for dst, p in g.transition_probabilities(name).items():
            node = g.nodes.get(dst)
            if node is None:
                continue  # the end
            if node.kind == "llm":
                q[i, at[dst]] += p
            else:
                r[i, col[node.backend]] += p
    try:
        h = np.linalg.solve(np.eye(len(llm)) - q, r)
    except np.linalg.LinAlgError:
        raise ValueError(f"{g.app!r} has a loop of LLM stages that never exits") from None
    # Rounding may step just outside [0, 1], or leave dust where no tool stage is reachable.
    out: FloatArray = np.where(h < 1e-12, 0.0, np.minimum(h, 1.0))
    return llm, backends, out


def next_tool_probability(graph: PDGraph | DemandModel, stage: str) -> dict[str, float]:
    """P(the first tool stage after ``stage``, passing through any number of LLM stages, is on
    backend b), per backend with a positive chance; the rest is the chance that the application
    ends first. Exact: the LLM stages are the transient states of an absorbing Markov chain.
    Ordered by backend name; empty for an unknown stage."""
    g = _graph(graph)
    llm, backends, h = _absorption(g)
    at = {name: i for i, name in enumerate(llm)}
    out = dict.fromkeys(backends, 0.0)
    for dst, p in g.transition_probabilities(stage).items():
        node = g.nodes.get(dst)
        if node is None:
            continue
        if node.kind == "tool":
            out[node.backend] += p
        else:
            for b, via in zip(backends, h[at[dst]].tolist(), strict=True):
                out[b] += p * via
    return {b: p for b, p in out.items() if p > 0}


def next_tool_time_samples(
    model: DemandModel, stage: str, backend: str, n: int, rng: np.random.Generator
) -> FloatArray:
    """``n`` samples of the time from the end of ``stage`` until the application's next tool
    stage starts, given that that stage is on ``backend``: the LLM stages walked through on the
    way, each lasting its longest call (fan-out and calls drawn from what the stage has shown,
    as ``stage_time_samples`` draws them). 0 when a tool stage follows directly.

    The walk is conditioned on ending at ``backend`` (Doob's h-transform: each step is weighted
    by its chance of still getting there), so every sample counts. Empty when ``backend`` never
    comes next."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    g = model.graph
    llm, backends, h = _absorption(g)
    if backend not in backends or n == 0:
        return np.zeros(0, dtype=np.float64)
    via: dict[str, float] = dict(zip(llm, h[:, backends.index(backend)].tolist(), strict=True))

    def weight(dst: str) -> float:
        node = g.nodes.get(dst)
        if node is None:
            return 0.0
        if node.kind == "tool":
            return 1.0 if node.backend == backend else 0.0
        return via[dst]

    # Walkers sit at `stage` (index 0) or at an LLM stage (index 1 + its place in `llm`); per
    # index, the next indices (-1: the tool stage on `backend`, which ends the walk) and their
    # cumulative conditioned probabilities.
    index = {name: 1 + i for i, name in enumerate(llm)}
    steps: list[tuple[IntArray, FloatArray] | None] = []
    for src in [stage, *llm]:
        dsts, w = [], []
        for dst, p in g.transition_probabilities(src).items():
            if (x := p * weight(dst)) > 0:
                dsts.append(index.get(dst, -1))
                w.append(x)
        steps.append((np.array(dsts, dtype=np.int64), np.cumsum(w) / sum(w)) if dsts else None)
    if steps[0] is None:
        return np.zeros(0, dtype=np.float64)
    out = np.zeros(n, dtype=np.float64)
    cur = np.zeros(n, dtype=np.int64)
    live = np.arange(n)
    for _ in range(MAX_WALK_STAGES + 1):
        at = cur[live]
        for src in np.unique(at).tolist():
            step = steps[src]
            idx = live[at == src]
            if step is None:  # cannot happen with exact H; a walker stuck here just stops
                cur[idx] = -1
                continue
            dsts, cum = step
            pick = np.searchsorted(cum, rng.random(idx.size), side="right")
            cur[idx] = dsts[np.minimum(pick, dsts.size - 1)]
        live = live[cur[live] > 0]
        if live.size == 0:
            break
        at = cur[live]
        for node in np.unique(at).tolist():
            idx = live[at == node]
            out[idx] += _stage_samples(model, llm[node - 1], idx.size, rng)
    return out


def _stage_samples(model: DemandModel, stage: str, n: int, rng: np.random.Generator) -> FloatArray:
    """``n`` samples of one whole visit of ``stage``: a fan-out drawn from its visits, then that
    many calls, of which the longest."""
    fanouts = np.array([f for _, f in model.graph.nodes[stage].fanouts], dtype=np.int64)
    costs = model.call_costs(stage)
    out = np.zeros(n, dtype=np.float64)
    if fanouts.size == 0 or costs.size == 0:
        return out
    fan = fanouts[rng.integers(fanouts.size, size=n)]
    m = int(fan.sum())
    if m:
        owner = np.repeat(np.arange(n), fan)
        np.maximum.at(out, owner, costs[rng.integers(costs.size, size=m)])
    return out
