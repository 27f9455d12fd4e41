"""GittinsRanker: cached ranks of applications in progress."""

from __future__ import annotations

import numpy as np
import pytest

from hermes import AppRun, LLMCall, Stage, ToolCall, gittins_index
from hermes.core.demand_cost import LinearCost
from hermes.core.demand_sampler import DemandModel, Progress
from hermes.core.pdgraph import learn
from hermes.core.rank_cache import GittinsRanker

COST = LinearCost(prefill_s_per_token=0.0, decode_s_per_token=0.01)


def models(runs: list[AppRun]) -> dict[str, DemandModel]:
    return {app: DemandModel(g, COST) for app, g in learn(runs).items()}


def fixed(app: str, tokens: int) -> AppRun:
    return AppRun(app, "1", (
        Stage("a", "llm", "llm", (LLMCall(0, tokens),)),
        Stage("t", "tool", "env", (ToolCall(1.0),)),
        Stage("b", "llm", "llm", (LLMCall(0, tokens), LLMCall(0, tokens))),
    ))  # fmt: skip


def test_deterministic_demand_ranks_by_remaining_service() -> None:
    ranker = GittinsRanker(models([fixed("short", 100), fixed("long", 300)]), quantum_s=0)
    # short: 1 s + 2 s of demand; long: 3 s + 6 s.
    assert ranker.rank("short", Progress()) == pytest.approx(3.0)
    assert ranker.rank("long", Progress()) == pytest.approx(9.0)
    assert ranker.rank("long", Progress("b", 1), attained=2.5) == pytest.approx(0.5)
    assert ranker.rank("short", Progress("a", 1), attained=0.25) == pytest.approx(2.75)


def test_quantum_rounds_attained_service_down() -> None:
    rng = np.random.default_rng(0)
    runs = [
        AppRun("r", str(i), tuple(
            Stage("x", "llm", "llm", (LLMCall(0, int(rng.integers(1, 500))),))
            for _ in range(1 + i % 4)
        ))
        for i in range(200)
    ]  # fmt: skip
    ms = models(runs)
    exact = GittinsRanker(ms, quantum_s=0, seed=3)
    step = 0.05
    rounded = GittinsRanker(ms, quantum_s=step, seed=3)
    dist = exact.distribution("r", Progress("x", 1))
    for a in np.linspace(0, float(dist.support[-1]) * 1.1, 97):
        r = rounded.rank("r", Progress("x", 1), float(a))
        # the rank of the bucket is the exact rank at the bucket's lower edge
        assert r == pytest.approx(dist.gittins(step * int(a / step)))
        assert exact.rank("r", Progress("x", 1), float(a)) == pytest.approx(dist.gittins(float(a)))


def test_ranks_do_not_depend_on_query_order() -> None:
    rng = np.random.default_rng(1)
    runs = [
        AppRun("q", str(i), (
            Stage("a", "llm", "llm", tuple(LLMCall(0, int(rng.integers(1, 99)))
                                           for _ in range(int(rng.integers(1, 5))))),
            Stage("b", "llm", "llm", (LLMCall(0, int(rng.integers(1, 99))),)),
        ))
        for i in range(50)
    ]  # fmt: skip
    items = [("q", Progress(), 0.0), ("q", Progress("a", 2), 0.1), ("q", Progress("b", 1), 0.2)]
    forward = GittinsRanker(models(runs), seed=7).rank_many(items)
    backward = GittinsRanker(models(runs), seed=7).rank_many(items[::-1])[::-1]
    assert forward == backward
    ranker = GittinsRanker(models(runs), seed=7, quantum_s=0)
    dist = ranker.distribution("q", Progress("a", 2))
    assert ranker.rank("q", Progress("a", 2), 0.1) == gittins_index(dist.support, 0.1)


def test_bad_arguments() -> None:
    ms = models([fixed("s", 1)])
    with pytest.raises(KeyError, match="no PDGraph for application type 'nope'"):
        GittinsRanker(ms).rank("nope", Progress())
    with pytest.raises(ValueError, match="samples"):
        GittinsRanker(ms, samples=0)
    with pytest.raises(ValueError, match="quantum_s"):
        GittinsRanker(ms, quantum_s=-1)


def test_learning_replaces_stale_states() -> None:
    ms = models([fixed("s", 100)])
    ranker = GittinsRanker(ms, quantum_s=0)
    assert ranker.rank("s", Progress()) == pytest.approx(3.0)
    ranker.rank("s", Progress("b", 1))
    assert ranker.cached_states == 2
    ms["s"].graph.observe(AppRun("s", "2", (Stage("a", "llm", "llm", (LLMCall(0, 100),)),)))
    # Now half the runs end after stage a: demand 1 s or 3 s, and the old states are gone.
    assert ranker.rank("s", Progress()) == pytest.approx(gittins_index([1.0, 3.0]), rel=0.1)
    assert ranker.cached_states == 1
