"""A synthetic engine behind an admission controller: the smallest model that shows what a
limit does, for the controller's tests and `benchmarks/admission_sweep.py`.

Calls arrive as a Poisson stream (or phases of streams), each wanting a number of output
tokens drawn from an exponential distribution; they wait outside the engine in policy order
(shortest first, as a ranking policy with good demand estimates would order them, or first
come first served) and enter while fewer than the limit run; a lower limit never preempts.
Each iteration over c running calls takes a + b*c seconds and gives each one token. The
controller observes after every iteration, as the simulator's shell does.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from hermes.policies.admission import Admission

Order = Literal["sjf", "fcfs"]


@dataclass(frozen=True, slots=True)
class Phase:
    """`duration_s` of arrivals at `rate` calls per second, `tokens` output tokens on average,
    on an engine whose iteration over c calls takes `a + b * c` seconds."""

    duration_s: float
    rate: float
    tokens: float
    a: float
    b: float

    @property
    def demand(self) -> float:
        """Output tokens per second asked for."""
        return self.rate * self.tokens

    def capacity(self, c: int) -> float:
        """Output tokens per second at c calls in the engine."""
        return c / (self.a + self.b * c)


@dataclass(slots=True)
class SyntheticRun:
    latencies: list[float] = field(default_factory=list)  # completion - arrival, per call
    trace: list[tuple[float, int]] = field(default_factory=list)  # (time, limit) per iteration
    arrived: int = 0
    left: int = 0  # calls not finished when the run stopped
    end_s: float = 0.0  # the last completion

    @property
    def mean_latency(self) -> float:
        return float(np.mean(self.latencies)) if self.latencies else math.inf

    def mean_limit(self, start: float, stop: float) -> float:
        window = [lim for t, lim in self.trace if start <= t < stop]
        return float(np.mean(window)) if window else math.nan


def run_synthetic(
    ctl: Admission,
    phases: list[Phase],
    seed: int = 0,
    *,
    order: Order = "sjf",
    drain: bool = True,
) -> SyntheticRun:
    """Arrivals through `phases`, then (with `drain`) until every call has finished under the
    last phase's engine."""
    rng = np.random.default_rng(seed)
    arrivals: list[tuple[float, int, Phase]] = []
    t0 = 0.0
    for ph in phases:
        n = int(rng.poisson(ph.rate * ph.duration_s))
        times = np.sort(rng.uniform(t0, t0 + ph.duration_s, n))
        sizes = np.maximum(1, np.ceil(rng.exponential(ph.tokens, n))).astype(int)
        arrivals += [(float(t), int(k), ph) for t, k in zip(times, sizes, strict=True)]
        t0 += ph.duration_s
    out = SyntheticRun(arrived=len(arrivals))
    queue: list[tuple[float, int, float, int]] = []  # (key, seq, arrival, tokens)
    running: list[list[float]] = []  # [tokens left, arrival]
    now, produced, i, engine = 0.0, 0, 0, phases[0]
    while i < len(arrivals) or ((queue or running) and drain):
        while i < len(arrivals) and arrivals[i][0] <= now:
            t, k, engine = arrivals[i]
            heapq.heappush(queue, (k if order == "sjf" else t, i, t, k))
            i += 1
        limit = ctl.observe(now, in_engine=len(running), waiting=len(queue), output_tokens=produced)
        while queue and len(running) < limit:
            _, _, t, k = heapq.heappop(queue)
            running.append([float(k), t])
        if not running:
            if i < len(arrivals):
                now = arrivals[i][0]
            continue
        now += engine.a + engine.b * len(running)
        produced += len(running)
        for r in running:
            r[0] -= 1
        for r in running:
            if r[0] <= 0:
                out.latencies.append(now - r[1])
        running = [r for r in running if r[0] > 0]
        out.trace.append((now, limit))
        out.end_s = now
        if not drain and i >= len(arrivals) and now >= t0:
            break
    out.left = len(queue) + len(running)
    return out
