"""Ranking rounds: ``GittinsRanker.rank_states`` / ``RankPool`` against one rank at a time."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from hermes import AppRun, LLMCall, Stage
from hermes.core.demand_cost import LinearCost
from hermes.core.demand_sampler import DemandModel, Progress
from hermes.core.gittins import DemandDistribution
from hermes.core.pdgraph import learn
from hermes.core.rank_cache import GittinsRanker, RankPool, RankState


def random_state(rng: np.random.Generator, quantum_s: float) -> RankState:
    """Sizes from 1 to 1500 points (so rows must widen), some with 20-level-deep hulls."""
    n = int(rng.choice([1, 2, 7, 100, 1000, 1500]))
    shape = rng.integers(4)
    raw: NDArray[Any]
    if shape == 0:
        raw = rng.lognormal(0.0, 1.0, n)
    elif shape == 1:
        raw = rng.integers(0, 5, n) * 0.25  # ties
    elif shape == 2:
        raw = (np.arange(n) + rng.random(n)) ** 3  # every point on the hull
    else:
        raw = rng.exponential(2.0, n)
    x = np.asarray(raw, dtype=np.float64)
    w = rng.integers(0, 3, n).astype(np.float64)
    w[0] = 1.0
    return RankState(DemandDistribution(x, w if rng.random() < 0.5 else None), quantum_s)


def attained_for(states: list[RankState], rng: np.random.Generator) -> NDArray[np.float64]:
    out = []
    for s in states:
        x = s.dist.support
        pick = rng.integers(4)
        if pick == 0:
            out.append(float(x[rng.integers(x.size)]))  # exactly a support point
        elif pick == 1:
            out.append(float(x[-1]) + float(rng.exponential()))  # past every sample
        else:
            out.append(float(rng.uniform(0.0, float(x[-1]) * 1.1 + 1.0)))
    return np.array(out)


def one_at_a_time(states: list[RankState], attained: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.array([s.rank(a) for s, a in zip(states, attained.tolist(), strict=True)])


@settings(max_examples=80, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 90),
    st.sampled_from([0.0, 0.05]),
    st.lists(st.integers(0, 400), min_size=1, max_size=6),
)
def test_rounds_equal_ranks_one_at_a_time(
    seed: int, n_states: int, quantum_s: float, round_sizes: list[int]
) -> None:
    rng = np.random.default_rng(seed)
    states = [random_state(rng, quantum_s * int(rng.integers(2))) for _ in range(n_states)]
    pool = RankPool()
    for size in round_sizes:
        # Each round draws from a random subset of the states: the pool grows, widens, deepens
        # and compacts between rounds.
        subset = rng.choice(n_states, size=int(rng.integers(1, n_states + 1)), replace=False)
        picked = [states[int(i)] for i in rng.choice(subset, size=size)]
        attained = attained_for(picked, rng)
        np.testing.assert_allclose(
            pool.ranks(picked, attained), one_at_a_time(picked, attained), rtol=1e-9, atol=0.0
        )


def test_pool_compacts_to_the_states_in_use() -> None:
    rng = np.random.default_rng(5)
    states = [random_state(rng, 0.0) for _ in range(200)]
    pool = RankPool()
    attained = attained_for(states, rng)
    np.testing.assert_allclose(pool.ranks(states, attained), one_at_a_time(states, attained))
    assert len(pool) == 200
    few = states[10:40] * 3
    attained = attained_for(few, rng)
    np.testing.assert_allclose(pool.ranks(few, attained), one_at_a_time(few, attained))
    assert len(pool) == 30
    attained = attained_for(states, rng)
    np.testing.assert_allclose(pool.ranks(states, attained), one_at_a_time(states, attained))
    assert len(pool) == 200


def test_rank_state_rank_many_rounds_like_rank() -> None:
    rng = np.random.default_rng(2)
    for quantum_s in (0.0, 0.05):
        state = random_state(rng, quantum_s)
        attained = attained_for([state] * 300, rng)
        np.testing.assert_allclose(
            state.rank_many(attained), one_at_a_time([state] * 300, attained), rtol=1e-9
        )


def test_pool_rejects_mismatched_lengths_and_handles_empty_rounds() -> None:
    state = RankState(DemandDistribution([1.0, 2.0]), 0.0)
    with pytest.raises(ValueError, match="3 attained values for 2 states"):
        RankPool().ranks([state, state], [0.0, 1.0, 2.0])
    assert RankPool().ranks([], []).shape == (0,)


def test_rank_states_are_identity_keyed() -> None:
    dist = DemandDistribution([1.0, 2.0, 10.0])
    a, b = RankState(dist, 0.0), RankState(dist, 0.0)
    assert a != b
    assert len({a, b}) == 2


COST = LinearCost(prefill_s_per_token=0.0, decode_s_per_token=0.01)


def test_ranker_rounds_equal_rank_many() -> None:
    rng = np.random.default_rng(4)
    runs = [
        AppRun(app, str(i), tuple(
            Stage(f"s{k}", "llm", "llm", tuple(LLMCall(0, int(rng.integers(1, 400)))
                                               for _ in range(int(rng.integers(1, 4)))))
            for k in range(1 + i % 3)
        ))
        for app in ("p", "q")
        for i in range(60)
    ]  # fmt: skip
    ranker = GittinsRanker({a: DemandModel(g, COST) for a, g in learn(runs).items()}, seed=1)
    items: list[tuple[str, Progress, float]] = []
    for _ in range(500):
        run = runs[int(rng.integers(len(runs)))]
        pos = int(rng.integers(len(run.stages)))
        stage = run.stages[pos]
        progress = Progress(stage.name, int(rng.integers(1, stage.fanout + 1)), run.stages[:pos])
        items.append((run.app, progress, float(rng.exponential(2.0))))
    expected = ranker.rank_many(items)
    np.testing.assert_allclose(ranker.rank_round(items), expected, rtol=1e-9)
    states = [ranker.state(app, p) for app, p, _ in items]
    np.testing.assert_allclose(
        ranker.rank_states(states, [a for _, _, a in items]), expected, rtol=1e-9
    )
    ranker.clear()
    np.testing.assert_allclose(ranker.rank_round(items), expected, rtol=1e-9)
