"""The admission controller (issue 15): parsing, fixed limits, and the adaptive controller's
properties on a synthetic engine whose iteration takes a + b*c seconds for c sequences."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hermes.policies.admission import (
    AdmissionOptions,
    AutoLimit,
    FixedLimit,
    Unlimited,
    make_admission,
    split_admission,
)
from hermes.sim.admission_synthetic import Phase, run_synthetic


def fixed_best(phases: list[Phase], seed: int) -> tuple[float, float]:
    """(mean latency of the best fixed limit, of no limit) over a sweep of fixed limits."""
    lat = {
        n: run_synthetic(FixedLimit(n), phases, seed).mean_latency for n in (4, 8, 16, 32, 64, 256)
    }
    return min(lat.values()), lat[256]


# Parsing ---------------------------------------------------------------------------------


def test_split_admission() -> None:
    assert split_admission("gittins+auto") == ("gittins", "auto")
    assert split_admission("gittins+16") == ("gittins", "16")
    assert split_admission("gittins") == ("gittins", None)
    assert split_admission("lstf+AUTO") == ("lstf", "auto")


@pytest.mark.parametrize("bad", ["gittins+", "gittins+x", "gittins+0", "+auto", "gittins+-3"])
def test_split_admission_refuses(bad: str) -> None:
    with pytest.raises(ValueError, match="admission suffix"):
        split_admission(bad)


def test_make_admission() -> None:
    assert isinstance(make_admission("auto", 256), AutoLimit)
    assert make_admission("16", 256).limit == 16
    assert make_admission(8, 256).limit == 8
    none = make_admission(None, 256)
    assert isinstance(none, Unlimited)
    assert none.limit == 256
    assert make_admission("none", 64).limit == 64
    for bad in ("x", "0", -1, "1.5", True):
        with pytest.raises(ValueError, match="admission"):
            make_admission(bad, 256)
    with pytest.raises(ValueError, match="max_limit"):
        make_admission("auto", 0)


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="target_utilization"):
        AdmissionOptions(target_utilization=0)
    with pytest.raises(ValueError, match="min_limit"):
        AdmissionOptions(min_limit=0)


def test_fixed_limit_ignores_observations() -> None:
    ctl = FixedLimit(16)
    assert ctl.observe(0.0, in_engine=300, waiting=1000, output_tokens=10) == 16
    assert ctl.describe() == {"kind": "fixed", "limit": 16}


# The adaptive controller ---------------------------------------------------------------------


@given(
    events=st.lists(
        st.tuples(
            st.floats(0, 5, allow_nan=False),
            st.integers(0, 400),
            st.integers(0, 400),
            st.integers(0, 10_000),
        ),
        max_size=80,
    ),
    max_limit=st.integers(1, 300),
    initial=st.none() | st.integers(1, 400),
)
def test_limit_stays_between_one_and_max(
    events: list[tuple[float, int, int, int]], max_limit: int, initial: int | None
) -> None:
    ctl = AutoLimit(max_limit, AdmissionOptions(initial_limit=initial))
    now, tokens = 0.0, 0
    for dt, in_engine, waiting, more in events:
        now += dt
        tokens += more
        limit = ctl.observe(now, in_engine=in_engine, waiting=waiting, output_tokens=tokens)
        assert 1 <= limit <= max_limit
        assert limit == ctl.limit
    assert ctl.describe()["limit"] == ctl.limit


@given(
    a=st.floats(0.005, 0.05),
    b=st.floats(0.0, 0.002),
    calls=st.integers(1, 40),
    tokens=st.floats(1, 50),
    initial=st.integers(1, 256),
    seed=st.integers(0, 2**16),
)
def test_every_call_runs(
    a: float, b: float, calls: int, tokens: float, initial: int, seed: int
) -> None:
    """A burst of calls, then nothing: the queue drains to empty (no call starves), from
    any starting limit."""
    ctl = AutoLimit(256, AdmissionOptions(initial_limit=initial))
    run = run_synthetic(ctl, [Phase(0.5, calls / 0.5, tokens, a, b)], seed)
    assert run.left == 0
    assert len(run.latencies) == run.arrived


# (a, b) of an engine where the weights dominate an iteration, one where each sequence's
# KV reads do, and one between; loads as a share of the capacity at 256 sequences.
ENGINES = [(0.02, 0.0001), (0.005, 0.001), (0.01, 0.0004)]


@pytest.mark.parametrize(("a", "b"), ENGINES)
@pytest.mark.parametrize("load", [0.3, 0.85])
def test_converges_on_a_stationary_engine(a: float, b: float, load: float) -> None:
    """Offered load below capacity: the fit finds the engine's line, and the calls' mean
    latency is within 10 % of the best fixed limit's and no worse than no limit's by 3 %."""
    cap = 256 / (a + 256 * b)
    phases = [Phase(120.0, load * cap / 100, 100.0, a, b)]
    ctl = AutoLimit(256)
    run = run_synthetic(ctl, phases, seed=1)
    best, unlimited = fixed_best(phases, seed=1)
    assert run.mean_latency <= 1.10 * best
    assert run.mean_latency <= 1.03 * unlimited
    d = ctl.describe()
    fitted_a, fitted_b = float(d["iteration_a_s"]), float(d["iteration_b_s"])
    # The line is fitted over the concurrencies seen; where the engine is flat (b small)
    # the intercept is what matters.
    assert fitted_a + 50 * fitted_b == pytest.approx(a + 50 * b, rel=0.25)


def test_throughput_floor_tracks_a_step_in_load() -> None:
    """Demand quadruples, then falls back: the throughput floor (the smallest limit whose
    capacity covers the demand) follows it up and down."""
    a, b = 0.005, 0.001
    low, high = Phase(60.0, 2.0, 100.0, a, b), Phase(60.0, 8.0, 100.0, a, b)
    floors: list[tuple[float, int]] = []

    class Spy(AutoLimit):
        def observe(self, now: float, **kw: int) -> int:
            limit = super().observe(now, **kw)
            floors.append((now, int(self.describe().get("throughput_floor", 0))))
            return limit

    run_synthetic(Spy(256), [low, high, low], seed=3, drain=False)

    def mean(start: float) -> float:
        window = [f for t, f in floors if start <= t < start + 30]
        return sum(window) / len(window)

    before, during, after = mean(30.0), mean(90.0), mean(150.0)
    assert during > 2 * before
    assert during > 2 * after
    assert during >= math.floor(high.demand * a / (1 - high.demand * b))


def test_tracks_a_slower_engine() -> None:
    """Each sequence gets four times as costly at the same demand: the fit follows the new
    line, and the queue is still served."""
    fast = Phase(60.0, 4.0, 100.0, 0.01, 0.0002)
    slow = Phase(90.0, 4.0, 100.0, 0.01, 0.0008)
    ctl = AutoLimit(256)
    run = run_synthetic(ctl, [fast, slow], seed=2)
    d = ctl.describe()
    assert float(d["iteration_b_s"]) == pytest.approx(0.0008, rel=0.3)
    assert run.left == 0
    best, _ = fixed_best([fast, slow], seed=2)
    assert run.mean_latency <= 1.10 * best


def test_a_burst_is_served_in_policy_order() -> None:
    """Where each sequence's own cost dominates, a burst of calls is let in a few at a time
    (about sqrt(N a / b)), so that the short ones finish first."""
    a, b = 0.005, 0.002
    ctl = AutoLimit(256)
    # Learn the line on a moderate load, then a burst of 200 calls in half a second.
    run = run_synthetic(ctl, [Phase(60.0, 3.0, 100.0, a, b), Phase(0.5, 400.0, 100.0, a, b)], 4)
    burst = run.mean_limit(60.5, 62.0)
    assert burst < 100
    assert burst >= math.sqrt(100 * a / b)
    assert run.left == 0


def test_overload_opens_to_the_knee() -> None:
    """Demand beyond any capacity: the limit climbs to the knee, where more calls would buy
    under 3 % throughput, and stays there."""
    a, b = 0.02, 0.0002
    ctl = AutoLimit(256, AdmissionOptions(initial_limit=4))
    run = run_synthetic(ctl, [Phase(60.0, 100.0, 100.0, a, b)], seed=5, drain=False)
    eps, m = ctl.options.knee_eps, 256
    knee = (1 - eps) * m * a / (a + eps * m * b)
    assert 0.7 * knee <= run.mean_limit(40.0, 60.0) <= 1.2 * knee + 1


def test_check_ranking_checks_both_parts() -> None:
    from hermes.policies.registry import check_ranking

    assert check_ranking("gittins+auto") == ("gittins", "auto")
    assert check_ranking("lstf+16") == ("lstf", "16")
    assert check_ranking("vllm") == ("vllm", None)
    with pytest.raises(ValueError, match="unknown policy 'nope'"):
        check_ranking("nope+auto")
    with pytest.raises(ValueError, match="admission suffix"):
        check_ranking("gittins+many")


def test_a_quiet_spell_keeps_the_learned_slope() -> None:
    """Under load the fit learns the per-sequence cost; a long light spell after it, one or
    two calls at a time, cannot tell a slope, and the learned one is kept (the limit does
    not jump back to the ceiling)."""
    a, b = 0.01, 0.0004
    busy, quiet = Phase(60.0, 8.0, 100.0, a, b), Phase(120.0, 0.3, 100.0, a, b)
    ctl = AutoLimit(256)
    run_synthetic(ctl, [busy], seed=6, drain=False)
    learned = float(ctl.describe()["iteration_b_s"])
    assert learned == pytest.approx(b, rel=0.3)
    ctl2 = AutoLimit(256)
    run = run_synthetic(ctl2, [busy, quiet], seed=6)
    assert float(ctl2.describe()["iteration_b_s"]) == pytest.approx(b, rel=0.3)
    assert run.mean_limit(120.0, 180.0) < 64
