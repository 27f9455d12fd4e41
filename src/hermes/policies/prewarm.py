"""Prewarm policies: how long an idle tool instance is kept, and which cold backends to start
warming, and when, as an application moves from stage to stage.

- `none`: nothing kept, nothing warmed ahead; every call that finds no warm instance waits.
- `keepalive`: an idle instance lives the backend's configured `keepalive_s` (the default).
- `on-queue`: when a stage starts, warm now every backend the PDGraph says the next stage
  may use (p_s > 0).
- `pdgraph` (Hermes): warm only backends with p_s ≥ k, as late as `prewarm_delay` allows.

The last two keep no idle instance (TTL 0): they warm ahead instead. Each order holds its
instance, if unused, `hold_s` = p95(t_c) − delay + t_p (at least 1 s) after it is ready, so it
waits until two cold starts past the stage's 95th-percentile end: t_c counts service seconds,
and a loaded engine stretches them. The two differ only in their threshold and timing.

Policies are pure: time arrives as `now`, and randomness comes from a generator seeded per
(application type, stage, unfinished calls), so an order does not depend on what came before.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from hermes.core.demand_cost import FloatArray
from hermes.core.stage_forecast import (
    next_backend_probability,
    prewarm_delay,
    stage_time_samples,
)
from hermes.policies.base import AppView, PolicyContext

MIN_HOLD_S = 1.0
HOLD_QUANTILE = 95


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


class NoPrewarm:
    name = "none"

    def keepalive_s(self, spec_keepalive_s: float) -> float:
        return 0.0

    def on_stage(self, app: AppView, now: float) -> list[PrewarmOrder]:
        return []


class KeepAlive:
    name = "keepalive"

    def keepalive_s(self, spec_keepalive_s: float) -> float:
        return spec_keepalive_s

    def on_stage(self, app: AppView, now: float) -> list[PrewarmOrder]:
        return []


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

    def _delay(self, p_s: float, t_c: FloatArray, t_p: float) -> float | None:
        return prewarm_delay(p_s, t_c, t_p, self.k)


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
