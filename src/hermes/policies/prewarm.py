"""Prewarm policies: how long an idle tool instance is kept, and which cold backends to start
warming, and when, as an application moves from stage to stage.

- `none`: nothing kept, nothing warmed ahead; every call that finds no warm instance waits.
- `keepalive`: an idle instance lives the backend's configured `keepalive_s` (the default).
- `on-queue`: when a stage starts, warm now every backend the PDGraph says the next stage
  may use (p_s > 0).
- `pdgraph` (Hermes): warm only backends with p_s ≥ k, as late as `prewarm_delay` allows; and
  keep the instance a call has just left (`retain_s`) when the next tool stage the application
  reaches, through any LLM stages, uses the same backend with p ≥ k: an instance that is
  already warm is prewarmed by keeping it. A ReAct loop (thought, act, thought, act, ...) then
  pays the cold start of its first act only, where looking one stage ahead can hide no more of
  each act's cold start than the short thought before it.

The last two keep no idle instance otherwise (TTL 0): they warm ahead instead. Each order holds
its instance, if unused, `hold_s` = p95(t_c) − delay + t_p (at least 1 s) after it is ready, so
it waits until a cold start past the stage's 95th-percentile end (the shell renews the hold
while the application is still in the stage: t_c counts service seconds, and a loaded engine
stretches them). The two differ only in their threshold and timing.

A retained instance is kept p95 of the time until the next tool stage starts, plus one cold
start: waiting longer than forecast is worth it for as long as a new instance would take to
warm up (the ski-rental rule), as the forecast's service seconds run slow on a loaded engine.
No cap: the hold is bounded by the forecast, and it is only made when the backend is likely
(p ≥ k) to be used next.

Policies are pure: time arrives as `now`, and randomness comes from a generator seeded per
(application type, stage, unfinished calls), or per (application type, stage, backend) for a
retention, so a decision does not depend on what came before.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from hermes.core.stage_forecast import (
    next_backend_probability,
    next_tool_probability,
    next_tool_time_samples,
    prewarm_delay,
    stage_time_samples,
)
from hermes.policies.base import AppView, PolicyContext
from hermes.types import FloatArray

MIN_HOLD_S = 1.0
HOLD_QUANTILE = 95
RETAIN_MARGIN_COLD_STARTS = 1.0  # a retained instance waits this many cold starts past p95


@dataclass(frozen=True, slots=True)
class PrewarmOrder:
    """Warm one instance of `backend` at `at_s`; if unused, keep it `hold_s` after it is ready."""

    backend: str
    at_s: float
    hold_s: float


class PrewarmPolicy(Protocol):
    name: str

    def keepalive_s(self, spec_keepalive_s: float) -> float:
        """The TTL of an instance that falls idle after a call."""
        ...

    def on_stage(self, app: AppView, now: float) -> list[PrewarmOrder]:
        """Orders for the backends `app`'s next stage may need; `app` has just begun a stage."""
        ...

    def retain_s(self, app: AppView, stage: str, backend: str, now: float) -> float:
        """How long to keep the instance of `backend` that has just served a call of `app`'s
        tool stage `stage` idle, at least, from now: past the TTL when longer (0: the TTL)."""
        ...


class NoPrewarm:
    name = "none"

    def keepalive_s(self, spec_keepalive_s: float) -> float:
        return 0.0

    def on_stage(self, app: AppView, now: float) -> list[PrewarmOrder]:
        return []

    def retain_s(self, app: AppView, stage: str, backend: str, now: float) -> float:
        return 0.0


class KeepAlive:
    name = "keepalive"

    def keepalive_s(self, spec_keepalive_s: float) -> float:
        return spec_keepalive_s

    def on_stage(self, app: AppView, now: float) -> list[PrewarmOrder]:
        return []

    def retain_s(self, app: AppView, stage: str, backend: str, now: float) -> float:
        return 0.0


# (backend, delay after the stage starts, hold)
_Plan = tuple[tuple[str, float, float], ...]


class _WarmAhead:
    """Orders from the PDGraph of the application's type; none for types or stages without
    one, or for backends that start warm."""

    name = "warm-ahead"

    def __init__(self, ctx: PolicyContext, k: float, cold_starts: Mapping[str, float]) -> None:
        self.ctx = ctx
        self.k = k
        self.cold_starts = dict(cold_starts)
        # Per application type: the graph version the plans were made for, and the plans.
        self._plans: dict[str, tuple[int, dict[tuple[str, int], _Plan]]] = {}

    def keepalive_s(self, spec_keepalive_s: float) -> float:
        return 0.0

    def on_stage(self, app: AppView, now: float) -> list[PrewarmOrder]:
        return [PrewarmOrder(b, now + delay, hold) for b, delay, hold in self._plan(app)]

    def retain_s(self, app: AppView, stage: str, backend: str, now: float) -> float:
        return 0.0

    def _delay(self, p_s: float, t_c: FloatArray, t_p: float) -> float | None:
        raise NotImplementedError

    def _plan(self, app: AppView) -> _Plan:
        model = self.ctx.models.get(app.app)
        stage = app.stage
        if model is None or stage is None or stage.name not in model.graph.nodes:
            return ()
        version = model.graph.version
        cached = self._plans.get(app.app)
        if cached is None or cached[0] != version:
            cached = self._plans[app.app] = (version, {})
        key = (stage.name, app.unfinished_calls)
        plan = cached[1].get(key)
        if plan is not None:
            return plan
        wanted = {
            b: p
            for b, p in next_backend_probability(model.graph, stage.name).items()
            if p > 0 and self.cold_starts.get(b, 0.0) > 0
        }
        plan = ()
        if wanted:
            label = f"{app.app}|{stage.name}|{app.unfinished_calls}"
            rng = np.random.default_rng([self.ctx.seed, zlib.crc32(label.encode())])
            t_c = stage_time_samples(model, stage.name, app.unfinished_calls, self.ctx.samples, rng)
            p95 = float(np.percentile(t_c, HOLD_QUANTILE, method="inverted_cdf"))
            orders = []
            for backend, p_s in wanted.items():
                t_p = self.cold_starts[backend]
                delay = self._delay(p_s, t_c, t_p)
                if delay is not None:
                    orders.append((backend, delay, max(MIN_HOLD_S, p95 - delay + t_p)))
            plan = tuple(orders)
        cached[1][key] = plan
        return plan


class OnQueue(_WarmAhead):
    name = "on-queue"

    def _delay(self, p_s: float, t_c: FloatArray, t_p: float) -> float | None:
        return 0.0


class PDGraphPrewarm(_WarmAhead):
    name = "pdgraph"

    def __init__(self, ctx: PolicyContext, k: float, cold_starts: Mapping[str, float]) -> None:
        super().__init__(ctx, k, cold_starts)
        # Per application type: the graph version, and the hold per (tool stage, backend).
        self._holds: dict[str, tuple[int, dict[tuple[str, str], float]]] = {}

    def _delay(self, p_s: float, t_c: FloatArray, t_p: float) -> float | None:
        return prewarm_delay(p_s, t_c, t_p, self.k)

    def retain_s(self, app: AppView, stage: str, backend: str, now: float) -> float:
        """Keep the instance when the next tool stage `app` reaches uses `backend` with p ≥ k:
        for p95 of the time until that stage starts plus one cold start of margin."""
        model = self.ctx.models.get(app.app)
        t_p = self.cold_starts.get(backend, 0.0)
        if model is None or t_p <= 0 or stage not in model.graph.nodes:
            return 0.0
        version = model.graph.version
        cached = self._holds.get(app.app)
        if cached is None or cached[0] != version:
            cached = self._holds[app.app] = (version, {})
        key = (stage, backend)
        hold = cached[1].get(key)
        if hold is None:
            hold = 0.0
            if next_tool_probability(model.graph, stage).get(backend, 0.0) >= self.k:
                label = f"{app.app}|{stage}|{backend}|retain"
                rng = np.random.default_rng([self.ctx.seed, zlib.crc32(label.encode())])
                t_c = next_tool_time_samples(model, stage, backend, self.ctx.samples, rng)
                if t_c.size:
                    p95 = float(np.percentile(t_c, HOLD_QUANTILE, method="inverted_cdf"))
                    hold = p95 + t_p * RETAIN_MARGIN_COLD_STARTS
            cached[1][key] = hold
        return hold


Factory = Callable[[PolicyContext, float, Mapping[str, float]], PrewarmPolicy]
_REGISTRY: dict[str, Factory] = {}


def register(name: str, factory: Factory) -> None:
    if name in _REGISTRY:
        raise ValueError(f"prewarm policy {name!r} is already registered")
    _REGISTRY[name] = factory


register("none", lambda ctx, k, cold: NoPrewarm())
register("keepalive", lambda ctx, k, cold: KeepAlive())
register("on-queue", OnQueue)
register("pdgraph", PDGraphPrewarm)
PREWARM_NAMES: tuple[str, ...] = ("none", "keepalive", "on-queue", "pdgraph")


def make_prewarm(
    name: str,
    ctx: PolicyContext | None = None,
    *,
    k: float = 0.5,
    cold_starts: Mapping[str, float] | None = None,
) -> PrewarmPolicy:
    """The prewarm policy `name`. `k` is pdgraph's threshold; `cold_starts` maps backends to
    their cold start in seconds (a backend not in it starts warm and is never ordered)."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown prewarm policy {name!r}; known: {', '.join(_REGISTRY)}"
        ) from None
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k must be in (0, 1], got {k!r}")
    return factory(ctx or PolicyContext(), k, cold_starts or {})
