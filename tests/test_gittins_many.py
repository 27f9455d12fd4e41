"""Batched Gittins ranks (``DemandDistribution.gittins_many``) against the scalar definition."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from hermes.core.gittins import DemandDistribution, suffix_hull_successors

SHAPES = ("grid", "lognormal", "pareto", "geometric", "power", "uniform", "constant")


@st.composite
def distributions(draw: st.DrawFn) -> tuple[NDArray[np.float64], NDArray[np.float64] | None]:
    """Samples (and maybe weights) shaped to stress the hull: heavy ties, heavy tails, supports
    whose every point is a hull vertex (geometric, power), negative values, one point."""
    n = draw(st.one_of(st.integers(1, 12), st.integers(13, 300), st.just(1000)))
    shape = draw(st.sampled_from(SHAPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    raw: NDArray[Any]
    if shape == "grid":
        raw = rng.integers(0, max(2, n // 4), n) * draw(st.sampled_from([1.0, 0.1, 1e-3, 37.0]))
    elif shape == "lognormal":
        raw = rng.lognormal(0.0, draw(st.sampled_from([0.1, 1.0, 3.0])), n)
    elif shape == "pareto":
        raw = np.round(rng.pareto(0.5, n), 3)
    elif shape == "geometric":
        raw = 1.5 ** rng.integers(0, 80, n).astype(np.float64)
    elif shape == "power":
        raw = (np.arange(n) + rng.uniform(0, 1, n)) ** draw(st.sampled_from([2.0, 3.0, 4.0]))
    elif shape == "uniform":
        raw = rng.uniform(-5.0, 1e4, n)
    else:
        raw = np.full(n, draw(st.floats(-10, 1e4)))
    x = np.asarray(raw, dtype=np.float64)
    kind = draw(st.sampled_from(["none", "integers", "reals"]))
    if kind == "none":
        return x, None
    w = rng.integers(0, 4, n).astype(np.float64) if kind == "integers" else rng.exponential(size=n)
    w[rng.random(n) < 0.2] = 0.0
    w[rng.integers(n)] = 1.0  # not all zero
    return x, w


def queries(dist: DemandDistribution, rng: np.random.Generator) -> NDArray[np.float64]:
    """Support points, their float neighbours, points in between, and values past the end."""
    x = dist.support
    lo, hi = float(x[0]), float(x[-1])
    span = max(hi - lo, 1.0)
    return np.concatenate([
        x,
        np.nextafter(x, -np.inf),
        np.nextafter(x, np.inf),
        (x[:-1] + x[1:]) / 2,
        rng.uniform(lo - span, hi + span, 50),
        [lo - 1.0, 0.0, hi, hi + 1.0, 2 * abs(hi) + 1.0, 1e300],
    ])  # fmt: skip


def assert_matches_scalar(dist: DemandDistribution, attained: NDArray[np.float64]) -> None:
    got = dist.gittins_many(attained)
    want = np.array([dist.gittins(float(a)) for a in attained])
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=0.0)


@settings(max_examples=300, deadline=None)
@given(distributions(), st.integers(0, 2**32 - 1))
def test_gittins_many_equals_gittins(dw: tuple[NDArray[np.float64], NDArray[np.float64] | None],
                                     seed: int) -> None:  # fmt: skip
    x, w = dw
    dist = DemandDistribution(x, w)
    assert_matches_scalar(dist, queries(dist, np.random.default_rng(seed)))


@given(
    st.lists(st.floats(0, 1e4, allow_subnormal=False), min_size=1, max_size=40),
    st.data(),
)
def test_gittins_many_equals_gittins_on_lists(samples: list[float], data: st.DataObject) -> None:
    weights = data.draw(
        st.none()
        | st.lists(st.sampled_from([0.0, 0.5, 1.0, 3.0]), min_size=len(samples),
                   max_size=len(samples)).filter(lambda w: any(v > 0 for v in w))
    )  # fmt: skip
    attained = data.draw(st.lists(st.sampled_from(samples) | st.floats(-1, 2e4), max_size=30))
    assert_matches_scalar(DemandDistribution(samples, weights), np.array(attained))


@settings(deadline=None)
@given(distributions())
def test_suffix_hulls_are_lower_convex_hulls(
    dw: tuple[NDArray[np.float64], NDArray[np.float64] | None],
) -> None:
    dist = DemandDistribution(*dw)
    t = dist.rank_tables()
    w, q = t.hull_w, t.hull_q
    succ = suffix_hull_successors(w, q)
    n = w.size
    assert succ[-1] == n - 1
    assert np.all(succ[:-1] > np.arange(n - 1))
    for k in range(0, n - 1, max(1, n // 25)):
        path = [k]
        while path[-1] != n - 1:
            path.append(int(succ[path[-1]]))
        # Every point of the suffix lies on or above each hull edge over it (up to rounding).
        for a, b in itertools.pairwise(path):
            slope = (q[b] - q[a]) / (w[b] - w[a])
            between = np.arange(a, b + 1)
            line = q[a] + slope * (w[between] - w[a])
            assert np.all(q[between] >= line - 1e-9 * (np.abs(q[between]) + np.abs(line)))
        slopes = np.diff(q[path]) / np.diff(w[path])
        assert np.all(np.diff(slopes) >= -1e-9 * (np.abs(slopes[1:]) + np.abs(slopes[:-1])))
    # The jump table saturates at the last point and lifts far enough for the deepest hull.
    depth = np.zeros(n, dtype=np.intp)
    for k in range(n - 2, -1, -1):
        depth[k] = depth[succ[k]] + 1
    assert 2 ** t.jump.shape[0] >= depth.max()
    np.testing.assert_array_equal(t.jump[0], succ)


def test_gittins_many_keeps_shape_and_edge_values() -> None:
    dist = DemandDistribution([1.0, 2.0, 10.0])
    got = dist.gittins_many([[0.0, 1.5], [10.0, 11.0]])
    assert got.shape == (2, 2)
    np.testing.assert_allclose(got, [[2.5, 1.0], [0.0, 0.0]])
    assert dist.gittins_many(1.5).shape == ()
    assert dist.gittins_many([]).shape == (0,)
    # NaN and infinities rank as ``gittins`` ranks them.
    for a in (np.nan, np.inf, -np.inf):
        assert dist.gittins_many([a])[0] == dist.gittins(a)


def test_deep_hull_needs_many_levels() -> None:
    # Every point of a cubic support is on every suffix hull: 999-vertex hulls, 9 levels.
    dist = DemandDistribution(np.arange(1000.0) ** 3)
    assert dist.rank_tables().jump.shape[0] >= 9
    assert_matches_scalar(dist, np.linspace(-1.0, 1.01e9, 4001))


@pytest.mark.parametrize("n", [1, 2, 5])
def test_tiny_distributions(n: int) -> None:
    dist = DemandDistribution(np.arange(1.0, n + 1))
    assert_matches_scalar(dist, np.linspace(-1, n + 1, 97))
