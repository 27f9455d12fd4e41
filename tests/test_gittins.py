"""Properties of the exact Gittins index (issue: foundation, item 4)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hermes import gittins_index
from hermes.core.gittins import DemandDistribution

demands = st.lists(
    st.floats(min_value=0.0, max_value=1e4, allow_nan=False, allow_subnormal=False),
    min_size=1,
    max_size=40,
)


def brute_force(samples: list[float], attained: float, deltas: list[float]) -> float:
    """The defining ratio evaluated at each Δ, straight from the definition."""
    alive = [x - attained for x in samples if x > attained]
    best = math.inf
    for d in deltas:
        if d <= 0:
            continue
        done = sum(1 for r in alive if r <= d)
        if done == 0:
            continue
        expected = sum(min(r, d) for r in alive) / len(alive)
        best = min(best, expected / (done / len(alive)))
    return best


def test_worked_example() -> None:
    assert gittins_index([1, 2, 10]) == pytest.approx(2.5)
    # Past 1: remaining {0.5, 8.5}; Δ = 0.5 gives E[min] = 0.5 over P = 0.5.
    assert gittins_index([1, 2, 10], attained=1.5) == pytest.approx(1.0)


@given(demands, st.floats(min_value=0, max_value=1e4))
def test_rank_at_most_mean_remaining(samples: list[float], attained: float) -> None:
    dist = DemandDistribution(samples)
    rank = dist.gittins(attained)
    assert rank <= dist.mean_remaining(attained) * (1 + 1e-9) + 1e-9


@given(st.floats(min_value=0.001, max_value=1e6), st.floats(min_value=0, max_value=1))
def test_deterministic_demand_gives_remaining(x: float, fraction: float) -> None:
    attained = x * fraction * 0.999
    assert gittins_index([x] * 5, attained) == pytest.approx(x - attained, rel=1e-9, abs=1e-9)


@given(demands, st.floats(min_value=0, max_value=1e4), st.randoms(use_true_random=False))
def test_invariant_under_permutation(samples: list[float], attained: float, rnd: object) -> None:
    shuffled = list(samples)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert gittins_index(shuffled, attained) == pytest.approx(
        gittins_index(samples, attained), rel=1e-9, abs=1e-9
    )


@given(demands, st.floats(min_value=0, max_value=1e4), st.integers(min_value=2, max_value=5))
def test_invariant_under_duplication(samples: list[float], attained: float, k: int) -> None:
    assert gittins_index(samples * k, attained) == pytest.approx(
        gittins_index(samples, attained), rel=1e-9, abs=1e-9
    )


@given(demands, st.floats(min_value=0, max_value=1e4), st.integers(min_value=1, max_value=4))
def test_integer_weights_equal_duplication(samples: list[float], attained: float, k: int) -> None:
    weights = [1.0 + (i % k) for i in range(len(samples))]
    expanded = [x for x, w in zip(samples, weights, strict=True) for _ in range(int(w))]
    assert gittins_index(samples, attained, weights) == pytest.approx(
        gittins_index(expanded, attained), rel=1e-9, abs=1e-9
    )


@given(
    demands,
    st.floats(min_value=0, max_value=1e4),
    st.floats(min_value=1e-3, max_value=1e3),
)
def test_scaling_demand_scales_rank(samples: list[float], attained: float, c: float) -> None:
    scaled = gittins_index([c * x for x in samples], c * attained)
    assert scaled == pytest.approx(c * gittins_index(samples, attained), rel=1e-7, abs=1e-7)


@settings(max_examples=300)
@given(
    st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=12),
    st.integers(min_value=0, max_value=50),
)
def test_agrees_with_brute_force(samples_int: list[int], attained_int: int) -> None:
    samples = [float(s) for s in samples_int]
    attained = float(attained_int) / 2
    # Δ at every support point of X − a, and on a fine grid between them.
    deltas = [x - attained for x in samples] + [i / 8 for i in range(1, 8 * 52)]
    expected = brute_force(samples, attained, deltas)
    rank = gittins_index(samples, attained)
    if math.isinf(expected):
        assert rank == 0.0  # attained service is past every sample
    else:
        assert rank == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_past_every_sample_ranks_zero() -> None:
    assert gittins_index([1.0, 2.0], attained=3.0) == 0.0


@pytest.mark.parametrize(
    ("samples", "weights", "message"),
    [
        ([], None, "at least one"),
        ([1.0, math.nan], None, "finite"),
        ([1.0, 2.0], [1.0], "weights for"),
        ([1.0, 2.0], [0.0, 0.0], "not all zero"),
        ([1.0, 2.0], [-1.0, 2.0], "non-negative"),
    ],
)
def test_rejects_bad_distributions(
    samples: list[float], weights: list[float] | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        DemandDistribution(samples, weights)
