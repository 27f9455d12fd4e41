"""The admission controller (issue 15): parsing, fixed limits, and the adaptive controller's
properties on a synthetic engine whose iteration takes a + b*c seconds for c sequences."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

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


@dataclass
class Load:
    a: float  # seconds per iteration, fixed part
    b: float  # seconds per iteration per sequence
    rate: float  # calls per second (evenly spaced)
    tokens: int  # output tokens per call


def run_engine(
    ctl: AutoLimit | FixedLimit,
    phases: list[tuple[float, Load]],
    *,
    drain: bool = False,
) -> tuple[list[tuple[float, int]], int, int, int]:
    """A synthetic engine behind `ctl`: calls arrive evenly, wait FIFO outside the engine,
    enter while fewer than the limit run (a lower limit never preempts), and each iteration
    over c calls takes a + b c seconds and gives each one token. Returns the (time, limit)
    trace, the calls that arrived, finished, and are still outstanding."""
    now, produced, finished, arrived = 0.0, 0, 0, 0
    queue: deque[int] = deque()
    running: list[int] = []
    trace: list[tuple[float, int]] = []
    next_arrival, end = 0.0, 0.0
    for duration, load in phases:
        end += duration
        while now < end or (drain and (queue or running) and load is phases[-1][1]):
            while next_arrival <= now and now < end:
                queue.append(load.tokens)
                arrived += 1
                next_arrival += 1.0 / load.rate
            while queue and len(running) < ctl.limit:
                running.append(queue.popleft())
            if not running:
                now = min(next_arrival, end) if now < end else now + 0.01
                ctl.observe(now, in_engine=0, waiting=len(queue), output_tokens=produced)
                continue
            now += load.a + load.b * len(running)
            produced += len(running)
            running = [r - 1 for r in running]
            finished += sum(1 for r in running if r == 0)
            running = [r for r in running if r > 0]
            limit = ctl.observe(
                now, in_engine=len(running), waiting=len(queue), output_tokens=produced
            )
            trace.append((now, limit))
    return trace, arrived, finished, len(queue) + len(running)


def needed(load: Load, utilization: float) -> float:
    """The analytic smallest c whose capacity c / (a + b c) covers demand / utilization."""
    d = load.rate * load.tokens / utilization
    return d * load.a / (1 - d * load.b)


def mean_limit(trace: list[tuple[float, int]], start: float, stop: float) -> float:
    window = [lim for t, lim in trace if start <= t < stop]
    return sum(window) / len(window)


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
    b=st.floats(0.0, 0.001),
    calls=st.integers(1, 60),
    tokens=st.integers(1, 50),
)
def test_every_call_runs(a: float, b: float, calls: int, tokens: int) -> None:
    """A burst of calls, then nothing: the queue drains to empty (no call starves)."""
    ctl = AutoLimit(256, AdmissionOptions(initial_limit=1))
    burst = Load(a, b, rate=calls / 0.5, tokens=tokens)
    _, arrived, finished, left = run_engine(ctl, [(0.5, burst)], drain=True)
    assert left == 0
    assert finished == arrived >= 1


@pytest.mark.parametrize(
    "load",
    [Load(0.02, 0.0002, rate=5.0, tokens=100), Load(0.03, 0.0001, rate=2.0, tokens=300)],
)
def test_converges_on_a_stationary_engine(load: Load) -> None:
    """Offered load below capacity: the limit settles near the smallest c whose capacity
    covers the demand with the headroom asked for, far below the 256 it starts at."""
    ctl = AutoLimit(256)
    trace, _, _, _ = run_engine(ctl, [(120.0, load)])
    settled = mean_limit(trace, 60.0, 120.0)
    best = needed(load, ctl.options.target_utilization)
    assert math.floor(needed(load, 1.0)) <= settled <= 1.5 * best + 2, (settled, best)
    assert ctl.limit < 64


def test_tracks_a_step_in_load() -> None:
    low = Load(0.02, 0.0002, rate=2.0, tokens=100)
    high = Load(0.02, 0.0002, rate=8.0, tokens=100)
    ctl = AutoLimit(256)
    trace, _, _, _ = run_engine(ctl, [(60.0, low), (60.0, high), (60.0, low)])
    before, during, after = (mean_limit(trace, s, s + 30) for s in (30.0, 90.0, 150.0))
    assert during > 1.8 * before
    assert during > 1.8 * after
    assert needed(high, 1.0) <= during <= 1.5 * needed(high, 0.75) + 2


def test_tracks_a_slower_engine() -> None:
    """The engine gets three times slower per sequence at the same demand: more calls must be
    in it to keep up, and the limit follows."""
    fast = Load(0.02, 0.0001, rate=5.0, tokens=100)
    slow = Load(0.02, 0.0006, rate=5.0, tokens=100)
    ctl = AutoLimit(256)
    trace, _, _, left = run_engine(ctl, [(60.0, fast), (90.0, slow)])
    assert mean_limit(trace, 120.0, 150.0) > 1.5 * mean_limit(trace, 30.0, 60.0)
    assert left < 40  # the queue is served, not growing without bound


def test_overload_opens_to_the_knee() -> None:
    """Demand beyond any capacity: the limit climbs to the knee, where more calls would buy
    under 3 % throughput, not to max_limit (the ranking keeps ordering the rest)."""
    load = Load(0.02, 0.0002, rate=100.0, tokens=100)
    ctl = AutoLimit(256, AdmissionOptions(initial_limit=4))
    trace, _, _, _ = run_engine(ctl, [(60.0, load)])
    a, b, eps, m = load.a, load.b, ctl.options.knee_eps, 256
    knee = (1 - eps) * m * a / (a + eps * m * b)
    assert 0.7 * knee <= mean_limit(trace, 40.0, 60.0) <= 1.2 * knee + 1
