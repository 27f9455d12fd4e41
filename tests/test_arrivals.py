"""Arrival processes, trace replay at other intensities, and workload mixes.

Statistical checks use a fixed seed and a tolerance of several standard errors, so they are
deterministic and do not depend on timing.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.typing import NDArray

from hermes.workloads.arrivals import (
    compress_to_window,
    gamma_arrivals,
    poisson_arrivals,
    rescale,
    with_arrivals,
)
from hermes.workloads.mix import sample_mix, weights_from_counts
from hermes.workloads.request_traces import TraceRequest

rates = st.floats(min_value=1e-3, max_value=1e4)
cvs = st.floats(min_value=0.1, max_value=8.0)
counts = st.integers(min_value=0, max_value=500)
seeds = st.integers(min_value=0, max_value=2**32 - 1)
starts = st.floats(min_value=0.0, max_value=1e6)
sorted_times = st.lists(
    st.floats(min_value=0.0, max_value=1e6, allow_nan=False), min_size=0, max_size=50
).map(sorted)


# --- Poisson and gamma processes ----------------------------------------------------------


@given(rate=rates, n=counts, seed=seeds, start=starts)
def test_poisson_shape_and_order(rate: float, n: int, seed: int, start: float) -> None:
    t = poisson_arrivals(rate, n, np.random.default_rng(seed), start_s=start)
    assert t.shape == (n,)
    assert t.dtype == np.float64
    assert np.all(np.diff(t) >= 0)
    assert np.all(t >= start)


@given(rate=rates, cv=cvs, n=counts, seed=seeds, start=starts)
def test_gamma_shape_and_order(rate: float, cv: float, n: int, seed: int, start: float) -> None:
    t = gamma_arrivals(rate, cv, n, np.random.default_rng(seed), start_s=start)
    assert t.shape == (n,)
    assert np.all(np.diff(t) >= 0)
    assert np.all(t >= start)


@given(rate=rates, cv=cvs, n=counts, seed=seeds)
def test_same_seed_same_arrivals(rate: float, cv: float, n: int, seed: int) -> None:
    def draw(seed: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        rng = np.random.default_rng(seed)
        return poisson_arrivals(rate, n, rng), gamma_arrivals(rate, cv, n, rng)

    for a, b in zip(draw(seed), draw(seed), strict=True):
        np.testing.assert_array_equal(a, b)


def gaps_of(t: NDArray[np.float64], start: float) -> NDArray[np.float64]:
    return np.diff(t, prepend=start)


@pytest.mark.parametrize("rate", [0.01, 1.0, 37.5, 5000.0])
def test_poisson_mean_gap(rate: float) -> None:
    n = 200_000
    gaps = gaps_of(poisson_arrivals(rate, n, np.random.default_rng(7), start_s=10.0), 10.0)
    # The sample mean of n exponential gaps has standard error (1/rate)/√n.
    assert abs(gaps.mean() * rate - 1) < 5 / math.sqrt(n)


@pytest.mark.parametrize("cv", [0.5, 1.0, 2.0, 4.0])
@pytest.mark.parametrize("rate", [0.2, 40.0])
def test_gamma_mean_gap_and_cv(rate: float, cv: float) -> None:
    n = 400_000
    gaps = gaps_of(gamma_arrivals(rate, cv, n, np.random.default_rng(11)), 0.0)
    assert abs(gaps.mean() * rate - 1) < 5 * cv / math.sqrt(n)
    # The sample CV is noisier than the mean at high cv (excess kurtosis 6·cv²); at n = 4e5
    # and cv = 4 its relative standard error is about 1 %, so 5 % is a wide margin.
    sample_cv = gaps.std(ddof=1) / gaps.mean()
    assert sample_cv == pytest.approx(cv, rel=0.05)


def test_empty_draw() -> None:
    rng = np.random.default_rng(0)
    assert poisson_arrivals(1.0, 0, rng).shape == (0,)
    assert gamma_arrivals(1.0, 4.0, 0, rng).shape == (0,)


@pytest.mark.parametrize(
    ("kwargs", "fault"),
    [
        ({"rate_per_s": 0.0}, "rate_per_s must be > 0, got 0.0"),
        ({"rate_per_s": -2.0}, "rate_per_s must be > 0"),
        ({"rate_per_s": math.nan}, "rate_per_s must be a finite number, got nan"),
        ({"rate_per_s": math.inf}, "rate_per_s must be a finite number"),
        ({"cv": 0.0}, "cv must be > 0, got 0.0"),
        ({"cv": -1.0}, "cv must be > 0"),
        ({"n": -1}, "n must be >= 0, got -1"),
        ({"n": 2.5}, "n must be an integer, got 2.5"),
        ({"n": True}, "n must be an integer"),
        ({"start_s": math.nan}, "start_s must be a finite number"),
    ],
)
def test_parameters_are_validated(kwargs: dict[str, float], fault: str) -> None:
    args: dict[str, object] = {"rate_per_s": 1.0, "cv": 2.0, "n": 10, "start_s": 0.0}
    args.update(kwargs)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=fault):
        gamma_arrivals(rng=rng, **args)  # type: ignore[arg-type]
    if "cv" not in kwargs:
        del args["cv"]
        with pytest.raises(ValueError, match=fault):
            poisson_arrivals(rng=rng, **args)  # type: ignore[arg-type]


# --- replay at another intensity ----------------------------------------------------------


@given(times=sorted_times, factor=st.floats(min_value=1e-3, max_value=1e3))
def test_rescale_keeps_first_and_order(times: list[float], factor: float) -> None:
    out = rescale(times, factor)
    assert out.shape == (len(times),)
    assert np.all(np.diff(out) >= 0)
    if times:
        assert out[0] == times[0]
        span = times[-1] - times[0]
        assert out[-1] - out[0] == pytest.approx(span * factor, rel=1e-9, abs=1e-9)


@given(times=sorted_times, window=st.floats(min_value=1e-3, max_value=1e6))
def test_compress_to_window(times: list[float], window: float) -> None:
    out = compress_to_window(times, window)
    assert out.shape == (len(times),)
    assert np.all(np.diff(out) >= 0)
    if times:
        assert out[0] == times[0]
        if times[-1] > times[0]:
            assert out[-1] == times[0] + window
        else:
            np.testing.assert_array_equal(out, times)


def test_intensity_k_packs_a_trace_into_window_over_k() -> None:
    t = poisson_arrivals(2.0, 1000, np.random.default_rng(3))
    t -= t[0]
    window = float(t[-1])
    for k in (2.0, 4.0, 10.0):
        packed = compress_to_window(t, window / k)
        # k times the intensity: the same arrivals, every gap 1/k as long.
        np.testing.assert_allclose(np.diff(packed), np.diff(t) / k, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(packed, rescale(t, 1 / k), rtol=1e-12, atol=1e-12)


def test_helpers_do_not_mutate_their_input() -> None:
    t = np.array([1.0, 2.0, 4.0])
    rescale(t, 3.0)[:] = 0
    compress_to_window(t, 1.0)[:] = 0
    np.testing.assert_array_equal(t, [1.0, 2.0, 4.0])


@pytest.mark.parametrize(
    ("times", "fault"),
    [
        ([0.0, 2.0, 1.0], r"times must be non-decreasing: times\[2\] = 1.0 < times\[1\] = 2.0"),
        ([0.0, math.nan], r"times\[1\] = nan is not finite"),
        ([[0.0, 1.0]], "times must be 1-D"),
    ],
)
def test_replay_helpers_validate(times: list[object], fault: str) -> None:
    with pytest.raises(ValueError, match=fault):
        rescale(times, 2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=fault):
        compress_to_window(times, 2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="factor must be > 0"):
        rescale([0.0], 0.0)
    with pytest.raises(ValueError, match="window_s must be > 0"):
        compress_to_window([0.0], -1.0)


def test_with_arrivals() -> None:
    trace = [TraceRequest(0.0, 100, 5, (1, 2)), TraceRequest(9.0, 200, 6)]
    out = with_arrivals(trace, np.array([0.5, 0.75]))
    assert out == [TraceRequest(0.5, 100, 5, (1, 2)), TraceRequest(0.75, 200, 6)]
    assert all(type(r.arrival_s) is float for r in out)
    assert trace[1].arrival_s == 9.0
    assert with_arrivals([], []) == []
    with pytest.raises(ValueError, match="2 requests but 1 times"):
        with_arrivals(trace, [1.0])
    with pytest.raises(ValueError, match=r"times\[1\] = -1.0 is not a finite time >= 0"):
        with_arrivals(trace, [1.0, -1.0])


# --- mixes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "weights",
    [
        {"a": 1.0},
        {"chat": 0.5, "code": 0.3, "agent": 0.2},
        {"x": 3.0, "never": 0.0, "y": 1.0, "rare": 0.01, "also_never": 0.0},
        {"u1": 1, "u2": 1, "u3": 1, "u4": 1, "u5": 1, "u6": 1, "u7": 1},
    ],
)
def test_mix_frequencies_match_weights(weights: dict[str, float]) -> None:
    n = 100_000
    drawn = Counter(sample_mix(weights, n, np.random.default_rng(2024)))
    assert sum(drawn.values()) == n
    total = sum(weights.values())
    for name, w in weights.items():
        p = w / total
        if p == 0:
            assert drawn[name] == 0
            continue
        se = math.sqrt(n * p * (1 - p))
        assert abs(drawn[name] - n * p) <= 4 * se, name


@given(
    weights=st.dictionaries(
        st.text(min_size=1, max_size=5), st.floats(min_value=0, max_value=1e6), min_size=1
    ).filter(lambda w: sum(w.values()) > 0),
    n=st.integers(0, 300),
    seed=seeds,
)
def test_mix_draws_only_positive_items(weights: dict[str, float], n: int, seed: int) -> None:
    draw = sample_mix(weights, n, np.random.default_rng(seed))
    assert len(draw) == n
    assert set(draw) <= {k for k, w in weights.items() if w > 0}
    assert draw == sample_mix(weights, n, np.random.default_rng(seed))


@pytest.mark.parametrize(
    ("weights", "fault"),
    [
        ({}, "no items"),
        ({"a": 1.0, "b": -0.5}, "weight of 'b' is negative"),
        ({"a": 0.0, "b": 0.0}, "every weight is zero"),
        ({"a": 1.0, "bad": math.nan}, "weight of 'bad' must be a finite number"),
        ({"a": math.inf}, "weight of 'a' must be a finite number"),
        ({"a": 1e308, "b": 1e308}, "too large"),
        ({"a": "1"}, "weight of 'a' must be a finite number"),
    ],
)
def test_mix_weights_are_validated(weights: dict[str, float], fault: str) -> None:
    with pytest.raises(ValueError, match=fault):
        sample_mix(weights, 5, np.random.default_rng(0))


def test_mix_n_is_validated() -> None:
    with pytest.raises(ValueError, match="n must be >= 0"):
        sample_mix({"a": 1.0}, -1, np.random.default_rng(0))


def test_weights_from_counts() -> None:
    assert weights_from_counts({"a": 3, "b": 1, "c": 0}) == {"a": 0.75, "b": 0.25, "c": 0.0}
    counted = Counter(["x", "y", "x", "x"])
    assert weights_from_counts(counted) == {"x": 0.75, "y": 0.25}
    with pytest.raises(ValueError, match="count of 'b' must be an integer"):
        weights_from_counts({"a": 1, "b": 1.5})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="count of 'b' is negative"):
        weights_from_counts({"a": 1, "b": -1})
    with pytest.raises(ValueError, match="every count is zero"):
        weights_from_counts({"a": 0})
    with pytest.raises(ValueError, match="no items"):
        weights_from_counts({})
