"""Arrival times: synthetic processes and the helpers that replay a trace at another intensity.

Pure: no I/O, no clock, no global random state. Every random function draws only from the
``numpy.random.Generator`` it is given, so one seed gives the same arrivals every time.

Arrival arrays are 1-D float64 seconds, non-decreasing. To replay a trace at k times its
intensity, pack the same arrivals into 1/k of the time: ``rescale(times, 1 / k)`` or, for
a trace spanning ``window_s``, ``compress_to_window(times, window_s / k)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real

import numpy as np
from numpy.typing import ArrayLike, NDArray

from hermes.workloads.request_traces import TraceRequest

__all__ = [
    "compress_to_window",
    "gamma_arrivals",
    "poisson_arrivals",
    "rescale",
    "with_arrivals",
]


def poisson_arrivals(
    rate_per_s: float, n: int, rng: np.random.Generator, start_s: float = 0.0
) -> NDArray[np.float64]:
    """``n`` arrivals of a Poisson process of ``rate_per_s`` that starts at ``start_s``.

    The first arrival comes one exponential gap after ``start_s``, not at it.
    """
    rate = _positive("rate_per_s", rate_per_s)
    count = _count("n", n)
    start = _finite("start_s", start_s)
    return start + np.cumsum(rng.exponential(1.0 / rate, size=count))


def gamma_arrivals(
    rate_per_s: float, cv: float, n: int, rng: np.random.Generator, start_s: float = 0.0
) -> NDArray[np.float64]:
    """``n`` arrivals with gamma inter-arrival gaps of mean ``1 / rate_per_s`` and
    coefficient of variation ``cv``.

    ``cv = 1`` is a Poisson process; ``cv > 1`` is burstier (at ``cv >= 4`` most gaps are
    near zero and a few are very long: tight bursts between lulls); ``cv < 1`` is more
    regular. Very large ``cv`` gives gaps that round to 0, i.e. simultaneous arrivals.
    """
    rate = _positive("rate_per_s", rate_per_s)
    c = _positive("cv", cv)
    count = _count("n", n)
    start = _finite("start_s", start_s)
    # Gamma(shape k, scale θ) has mean kθ and CV 1/√k, so k = 1/cv² and θ = cv²/rate.
    shape = 1.0 / (c * c)
    return start + np.cumsum(rng.gamma(shape, (c * c) / rate, size=count))


def rescale(times: ArrayLike, factor: float) -> NDArray[np.float64]:
    """Stretch (``factor > 1``) or compress (``factor < 1``) arrival times about the first one.

    Gaps are multiplied by ``factor``, so intensity is divided by it; the first arrival stays
    where it is. A new array is returned.
    """
    t = _arrivals("times", times)
    f = _positive("factor", factor)
    if t.size == 0:
        return t
    t0 = float(t[0])
    return t0 + (t - t0) * f


def compress_to_window(times: ArrayLike, window_s: float) -> NDArray[np.float64]:
    """Rescale arrival times so the first stays put and the last lands ``window_s`` later.

    Replaying a trace that spans ``W`` seconds at intensity ``k`` is
    ``compress_to_window(times, W / k)``. With fewer than two distinct times there is no span
    to scale and the times come back unchanged (as a new array).
    """
    t = _arrivals("times", times)
    w = _positive("window_s", window_s)
    if t.size == 0:
        return t
    t0 = float(t[0])
    span = float(t[-1]) - t0
    if span == 0:
        return t
    # Divide before multiplying so the last arrival is exactly t0 + window_s.
    return t0 + (t - t0) / span * w


def with_arrivals(requests: Sequence[TraceRequest], times: ArrayLike) -> list[TraceRequest]:
    """The requests with ``times[i]`` as the arrival of ``requests[i]``; tokens and prefix
    blocks are kept. Pairing is by position: nothing is re-sorted, so pass sorted times to get
    requests in arrival order.
    """
    t = np.asarray(times, dtype=np.float64)
    if t.ndim != 1:
        raise ValueError(f"times must be 1-D, got shape {t.shape}")
    if t.size != len(requests):
        raise ValueError(f"{len(requests)} requests but {t.size} times; they pair one to one")
    bad = np.flatnonzero(~(np.isfinite(t) & (t >= 0)))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"times[{i}] = {float(t[i])!r} is not a finite time >= 0")
    return [
        TraceRequest(float(s), r.prompt_tokens, r.output_tokens, r.prefix_blocks)
        for r, s in zip(requests, t.tolist(), strict=True)
    ]


def _arrivals(name: str, times: ArrayLike) -> NDArray[np.float64]:
    # Always a copy, so callers may mutate the result without touching their input.
    t = np.array(times, dtype=np.float64)
    if t.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {t.shape}")
    bad = np.flatnonzero(~np.isfinite(t))
    if bad.size:
        raise ValueError(f"{name}[{int(bad[0])}] = {float(t[bad[0]])!r} is not finite")
    back = np.flatnonzero(np.diff(t) < 0)
    if back.size:
        i = int(back[0]) + 1
        raise ValueError(
            f"{name} must be non-decreasing: {name}[{i}] = {float(t[i])!r}"
            f" < {name}[{i - 1}] = {float(t[i - 1])!r}"
        )
    return t


def _count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


def _finite(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _positive(name: str, value: float) -> float:
    v = _finite(name, value)
    if v <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return v
