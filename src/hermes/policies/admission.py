"""Admission: how many calls one upstream (an engine replica) may hold in its engine now.

Calls beyond the limit wait outside the engine in the ranking policy's order, so the order
decides who runs; inside the engine every running call shares each iteration (processor
sharing), and no order helps. In decode an iteration over c sequences takes about
t(c) = a + b*c (a: the weights read once per iteration, b: each sequence's KV reads and
compute), so the engine's token throughput X(c) = c / t(c) climbs toward 1/b, and each running
call makes one token per t(c).

Which limit is best? Take N calls present, of L tokens each, served c at a time in policy
order: the groups finish every L t(c), so the mean completion time is about
L (a + b c) (N / c + 1) / 2, smallest at c* = sqrt(N a / b). Where the fixed cost dominates
(a / b large: short contexts, a big model's weights) running everything at once is best:
c* >= N, and nothing waits. Where each sequence's own cost dominates (long contexts, many
sequences) running them all slows every one of them, and a few at a time in the policy's
order finish most calls much sooner with little throughput lost. `AutoLimit` applies that rule
to what it measures:

- the line t(c): every interval, the time-weighted mean concurrency while busy and the output
  tokens made give one point (c, c / X); a least-squares fit with exponential forgetting (it
  follows an engine or a workload that changes) and a small ridge on b (with no spread in c
  yet, t is taken as flat: b = 0, and nothing is held back); once a slope is learned it is
  kept while the concurrency seen has too little spread to tell another (a quiet spell);
- N: the calls present now (in the engine and waiting), read at every observation, so a burst
  opens the limit at once;
- a floor for throughput: the output tokens served per second (smoothed) is the demand while
  the queue keeps up; the limit never falls below the smallest c whose capacity covers it at
  `target_utilization`, so a queue that grows keeps raising the limit;
- a ceiling: the knee, the smallest c within `knee_eps` of the throughput at `max_limit`.

The limit is max(1, min(knee, max(ceil(sqrt(N a / b)), the floor))); before the first fit
it is `initial_limit` (default `max_limit`: what the engine itself would take). A lower limit
never preempts (the shells only stop new admissions), and a call never waits on an empty engine
(the limit is at least 1). Pure: no clock, no I/O; the shell passes its time and what it saw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

AUTO = "auto"
NONE_SPECS = ("none", "")


@runtime_checkable
class Admission(Protocol):
    """How many calls one upstream may hold in its engine now."""

    @property
    def limit(self) -> int: ...

    def observe(
        self, now: float, *, in_engine: int, waiting: int, output_tokens: int, rt_in_engine: int = 0
    ) -> int: ...

    def record_call(
        self,
        now: float,
        *,
        ttft_s: float | None,
        tpot_s: float | None,
        prompt_tokens: int,
        output_tokens: int,
    ) -> None: ...

    def describe(self) -> dict[str, float | int | str]: ...


@dataclass(frozen=True, slots=True)
class AdmissionOptions:
    """The adaptive controller's knobs.

    interval_s: seconds between fits (rates are taken over this window, time-weighted).
    initial_limit: the limit before anything is measured (None: `max_limit`, what the engine
        itself takes, which does no harm while the controller learns).
    min_limit: the floor (>= 1: a call never waits on an empty engine).
    target_utilization: the throughput floor keeps the demand at most this share of the
        capacity at the limit (lower: more headroom for bursts).
    knee_eps: the ceiling is the smallest c with X(c) >= (1 - knee_eps) X(max_limit).
    forgetting: weight kept by past fit points per interval (1: never forget).
    demand_smoothing: weight of the newest interval's served rate in the demand estimate.
    ridge: how strongly b is pulled to 0 while the concurrency seen has little spread
        (in squared sequences).
    min_spread: below this standard deviation of the concurrency in the fit's points (in
        sequences) the slope b of the last fit that could tell one is kept (a quiet engine,
        its calls few and steady, does not forget what it learned under load).
    """

    interval_s: float = 1.0
    initial_limit: int | None = None
    min_limit: int = 1
    target_utilization: float = 0.8
    knee_eps: float = 0.03
    forgetting: float = 0.98
    demand_smoothing: float = 0.3
    ridge: float = 1.0
    min_spread: float = 2.0

    def __post_init__(self) -> None:
        checks = (
            ("interval_s", self.interval_s > 0 and math.isfinite(self.interval_s)),
            ("min_limit", self.min_limit >= 1),
            ("initial_limit", self.initial_limit is None or self.initial_limit >= 1),
            ("target_utilization", 0 < self.target_utilization <= 1),
            ("knee_eps", 0 < self.knee_eps < 1),
            ("forgetting", 0 < self.forgetting <= 1),
            ("demand_smoothing", 0 < self.demand_smoothing <= 1),
            ("ridge", self.ridge >= 0 and math.isfinite(self.ridge)),
            ("min_spread", self.min_spread >= 0 and math.isfinite(self.min_spread)),
        )
        bad = [name for name, ok in checks if not ok]
        if bad:
            raise ValueError(f"admission options out of range: {', '.join(bad)} ({self!r})")


class FixedLimit:
    """`+n`: the limit is always n."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"admission: a fixed limit must be >= 1, got {n}")
        self._n = n

    @property
    def limit(self) -> int:
        return self._n

    def observe(
        self, now: float, *, in_engine: int, waiting: int, output_tokens: int, rt_in_engine: int = 0
    ) -> int:
        return self._n

    def record_call(
        self,
        now: float,
        *,
        ttft_s: float | None,
        tpot_s: float | None,
        prompt_tokens: int,
        output_tokens: int,
    ) -> None:
        return None

    def describe(self) -> dict[str, float | int | str]:
        return {"kind": "fixed", "limit": self._n}


class Unlimited(FixedLimit):
    """No admission: the limit is what the engine itself takes (`max_limit`)."""

    def describe(self) -> dict[str, float | int | str]:
        return {"kind": "none", "limit": self.limit}


class _LineFit:
    """Weighted least squares of y = a + b*x with exponential forgetting and a ridge on b
    (sufficient statistics: O(1) per point)."""

    __slots__ = ("s0", "sx", "sxx", "sxy", "sy")

    def __init__(self) -> None:
        self.s0 = self.sx = self.sy = self.sxx = self.sxy = 0.0

    def add(self, x: float, y: float, keep: float) -> None:
        self.s0 = self.s0 * keep + 1.0
        self.sx = self.sx * keep + x
        self.sy = self.sy * keep + y
        self.sxx = self.sxx * keep + x * x
        self.sxy = self.sxy * keep + x * y

    def spread(self) -> float:
        """The standard deviation of the points' x (weighted)."""
        if self.s0 <= 0:
            return 0.0
        mx = self.sx / self.s0
        return math.sqrt(max(0.0, self.sxx / self.s0 - mx * mx))

    def line(
        self, ridge: float, min_spread: float = 0.0, slope: float | None = None
    ) -> tuple[float, float] | None:
        """(a, b) with a > 0 and b >= 0, or None before any point. While the points' x has a
        standard deviation under `min_spread` they cannot tell a slope: `slope` (the last one
        they could) is kept, and only the level is fitted."""
        if self.s0 <= 0:
            return None
        mx, my = self.sx / self.s0, self.sy / self.s0
        var = max(0.0, self.sxx - self.s0 * mx * mx)
        cov = self.sxy - self.s0 * mx * my
        if slope is not None and self.spread() < min_spread:
            b = slope
        else:
            b = max(0.0, cov / (var + ridge)) if var + ridge > 0 else 0.0
        a = my - b * mx
        if a <= 0:  # a line through the origin or below: keep a small positive intercept
            a = max(my * 1e-3, 1e-9)
            b = max(0.0, (my - a) / mx) if mx > 0 else 0.0
        return a, b


class AutoLimit:
    """`+auto`: about sqrt(N a / b) calls in the engine, within a throughput floor and the
    knee (see the module's description)."""

    def __init__(self, max_limit: int, options: AdmissionOptions | None = None) -> None:
        if max_limit < 1:
            raise ValueError(f"admission: max_limit must be >= 1, got {max_limit}")
        self.options = o = options or AdmissionOptions()
        self.max_limit = max_limit
        self._limit = min(max_limit, max(o.min_limit, o.initial_limit or max_limit))
        self._fit = _LineFit()
        self._line: tuple[float, float] | None = None  # (a, b) of the latest fit
        self._slope: float | None = None  # the last b the points' spread could tell
        self._ratio = math.inf  # a / b
        self._floor = o.min_limit  # the throughput floor
        self._knee = max_limit
        self._demand: float | None = None  # output tokens per second, smoothed
        self._last_now: float | None = None
        self._last_tokens = 0
        self._in_engine = 0
        self._present = 0
        self._win_start = 0.0
        self._reset_window(0.0)
        self.decisions = 0

    def _reset_window(self, now: float) -> None:
        self._win_start = now
        self._win_tokens = 0
        self._win_busy = 0.0  # seconds with a call in the engine
        self._win_conc = 0.0  # integral of in_engine over those seconds

    @property
    def limit(self) -> int:
        return self._limit

    def observe(
        self, now: float, *, in_engine: int, waiting: int, output_tokens: int, rt_in_engine: int = 0
    ) -> int:
        if self._last_now is None:
            self._last_now, self._last_tokens = now, output_tokens
            self._reset_window(now)
        dt = now - self._last_now
        if dt > 0:
            # The state since the last observation is the one seen then (piecewise constant).
            if self._in_engine > 0:
                self._win_busy += dt
                self._win_conc += self._in_engine * dt
            self._last_now = now
        self._win_tokens += max(0, output_tokens - self._last_tokens)
        self._last_tokens = max(self._last_tokens, output_tokens)
        self._in_engine = max(0, in_engine)
        self._present = self._in_engine + max(0, waiting)
        if now - self._win_start >= self.options.interval_s:
            self._fit_interval(now - self._win_start)
            self._reset_window(now)
        if self._line is not None:
            self._limit = self._choose(self._present)
        return self._limit

    def record_call(
        self,
        now: float,
        *,
        ttft_s: float | None,
        tpot_s: float | None,
        prompt_tokens: int,
        output_tokens: int,
    ) -> None:
        return None  # the throughput the shell reports carries what the controller uses

    def _choose(self, present: int) -> int:
        """The limit for `present` calls: sqrt(N a / b) within the floor and the knee."""
        ratio = self._ratio
        best = self.max_limit if ratio == math.inf else math.ceil(math.sqrt(present * ratio))
        best = max(best, self._floor)
        return max(self.options.min_limit, min(best, self._knee, self.max_limit))

    def _fit_interval(self, span: float) -> None:
        o = self.options
        self.decisions += 1
        served = self._win_tokens / span
        w = o.demand_smoothing
        self._demand = served if self._demand is None else w * served + (1 - w) * self._demand
        if self._win_busy > 0.2 * span and self._win_tokens > 0:
            c = self._win_conc / self._win_busy
            self._fit.add(c, c * self._win_busy / self._win_tokens, o.forgetting)
        line = self._fit.line(o.ridge, o.min_spread, self._slope)
        if line is None:
            return
        self._line = a, b = line
        if self._fit.spread() >= o.min_spread:
            self._slope = b  # learned from concurrencies far enough apart to tell it
        self._ratio = a / b if b > 0 else math.inf
        self._knee = self._knee_of(a, b)
        self._floor = self._needed(self._demand / o.target_utilization, a, b)

    def _needed(self, demand: float, a: float, b: float) -> int:
        """The smallest c with c / (a + b c) >= demand."""
        if demand <= 0:
            return 1
        if demand * b >= 1:
            return self.max_limit
        return max(1, math.ceil(demand * a / (1 - demand * b) - 1e-9))

    def _knee_of(self, a: float, b: float) -> int:
        """The smallest c with X(c) >= (1 - eps) X(max_limit)."""
        eps, m = self.options.knee_eps, self.max_limit
        return max(1, min(m, math.ceil((1 - eps) * m * a / (a + eps * m * b) - 1e-9)))

    def describe(self) -> dict[str, float | int | str]:
        out: dict[str, float | int | str] = {"kind": "auto", "limit": self._limit}
        if self._line is not None:
            a, b = self._line
            out |= {"iteration_a_s": a, "iteration_b_s": b, "knee": self._knee}
            out["throughput_floor"] = self._floor
        if self._demand is not None:
            out["demand_tokens_per_s"] = self._demand
        return out


def make_admission(
    spec: str | int | None, max_limit: int, options: AdmissionOptions | None = None
) -> Admission:
    """`auto` -> AutoLimit; an int or its digits -> FixedLimit; None or `none` -> Unlimited."""
    if max_limit < 1:
        raise ValueError(f"admission: max_limit must be >= 1, got {max_limit}")
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in NONE_SPECS):
        return Unlimited(max_limit)
    if isinstance(spec, bool):
        raise ValueError(f"admission: expected 'auto', 'none' or a positive integer, got {spec!r}")
    if isinstance(spec, int):
        n = spec
    elif spec.strip().lower() == AUTO:
        return AutoLimit(max_limit, options)
    elif spec.strip().isdigit():
        n = int(spec.strip())
    else:
        raise ValueError(f"admission: expected 'auto', 'none' or a positive integer, got {spec!r}")
    if n < 1:
        raise ValueError(f"admission: a fixed limit must be a positive integer, got {spec!r}")
    return FixedLimit(n)


def split_admission(policy_name: str) -> tuple[str, str | None]:
    """`gittins+auto` -> (`gittins`, `auto`); `gittins+16` -> (`gittins`, `16`); `gittins` ->
    (`gittins`, None). An empty or unknown suffix raises ValueError naming the name."""
    base, plus, suffix = policy_name.partition("+")
    if not plus:
        return policy_name, None
    s = suffix.strip().lower()
    if not base or not (s == AUTO or (s.isdigit() and int(s) >= 1)):
        raise ValueError(
            f"policy {policy_name!r}: the admission suffix must be '+auto' or '+N' "
            "(N a positive integer), after a policy name, e.g. 'gittins+auto' or 'gittins+16'"
        )
    return base, s if s == AUTO else str(int(s))
