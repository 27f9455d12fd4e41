"""Agent loops as long as the measured runs: docs/apps.md's per-run llm calls (one per thought)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hermes.workloads.template_dists import LoopLength
from hermes.workloads.templates import generate_runs

RUNS = 3000

# docs/apps.md, per run: llm calls (mean, p50, p95, max).
PER_RUN_CALLS = {"react_alfw": (15.7, 15, 25, 43)}


@pytest.mark.parametrize("app", sorted(PER_RUN_CALLS))
def test_sampled_episodes_have_the_measured_mean_p50_p95_and_max(app: str) -> None:
    mean, p50, p95, most = PER_RUN_CALLS[app]
    calls = np.array([r.llm_call_count for r in generate_runs(app, RUNS, seed=11)])
    # The mean of 3000 draws: within 4 standard errors (sd about 5 steps).
    assert abs(calls.mean() - mean) <= 4 * calls.std() / np.sqrt(RUNS)
    assert np.percentile(calls, 50) == p50
    assert np.percentile(calls, 95) == p95
    assert calls.max() <= most
    assert calls.min() >= 1


def test_alfw_is_narrower_than_a_geometric_loop_of_the_same_mean() -> None:
    calls = np.array([r.llm_call_count for r in generate_runs("react_alfw", RUNS, seed=12)])
    geometric = np.minimum(np.random.default_rng(0).geometric(1 / 15.7, RUNS), 43)
    assert np.percentile(calls, 95) < np.percentile(geometric, 95) - 10
    assert np.percentile(calls, 50) > np.percentile(geometric, 50)


@settings(max_examples=60, deadline=None)
@given(
    p50=st.integers(1, 30),
    spread=st.floats(1.05, 3.0),
    slack=st.floats(0.0, 1.0),
    cap_extra=st.integers(0, 40),
)
def test_the_fit_meets_the_mean_exactly_on_1_to_cap(
    p50: int, spread: float, slack: float, cap_extra: int
) -> None:
    p95 = p50 * spread
    cap = int(np.ceil(p95)) + cap_extra
    # A mean between the p50 and the p95, as a right-skewed length has.
    mean = max(p50, 1.01) + slack * (p95 - max(p50, 1.01)) * 0.5
    if not 1 < mean < cap:
        return
    loop = LoopLength(mean, p50, p95, cap)
    pmf = loop.pmf
    assert pmf.shape == (cap,)
    assert np.all(pmf >= 0)
    assert pmf.sum() == pytest.approx(1.0)
    assert float(np.dot(np.arange(1, cap + 1), pmf)) == pytest.approx(mean, rel=1e-6)
    survival = loop.survival()
    assert survival[0] == pytest.approx(1.0)
    assert np.all(np.diff(survival) <= 1e-12)
    rng = np.random.default_rng(p50)
    assert all(1 <= loop.sample(rng) <= cap for _ in range(20))


def test_impossible_fits_are_refused() -> None:
    with pytest.raises(ValueError, match="p50 < p95"):
        _ = LoopLength(10, 25, 15, 43).pmf
    with pytest.raises(ValueError, match="mean < cap"):
        _ = LoopLength(50, 15, 25, 43).pmf
