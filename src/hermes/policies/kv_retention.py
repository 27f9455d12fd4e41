"""KV retention: what happens to an application's KV cache when it leaves the engine for a
tool stage. Pure: the shell asks at the end of each LLM stage and carries the answer out.

- `lru` (vLLM's default): nothing; the blocks wait on the free queue like any others.
- `ttl` (Continuum): keep them on the GPU for a time chosen from the tool's durations (a high
  quantile of the next tool stage's calls, as the PDGraph has seen them), whatever follows.
- `pdgraph` (Hermes): walk the application's PDGraph from the tool stage it enters to its next
  LLM stage. If it comes back with probability below `k`, let go; if it comes back soon
  enough (a high quantile within `max_pin_s`), keep the blocks on the GPU that long; if
  later, move them to CPU memory now and load them back shortly before it is expected. An
  application that is done, or unlikely to come back, has its own blocks (not the prefix its
  type shares) dropped at once, so that they go before blocks someone will read again.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from hermes.core.llm_return import llm_return_samples, tool_durations
from hermes.policies.base import AppView, PolicyContext

QUANTILE = 90  # the hold covers this share of the return times seen
DEFAULT_TTL_S = 10.0  # ttl without a graph to learn the tool's durations from


@dataclass(frozen=True, slots=True)
class Retention:
    """`pin_s`: keep the blocks on the GPU this long (0: not); `offload`: move them to CPU
    memory now; `prefetch_in_s`: load them back after this long (None: not)."""

    pin_s: float = 0.0
    offload: bool = False
    prefetch_in_s: float | None = None
    forget: bool = False  # drop the application's own cached blocks now
    # When memory runs short, pins of applications expected back later give way first;
    # None: in the order pinned.
    back_in_s: float | None = None
    # The pin also gives way to a waiting call the scheduler ranks ahead of the application:
    # the application would wait behind that call anyway.
    by_rank: bool = False


LET_GO = Retention()
FORGET = Retention(forget=True)


class RetentionPolicy(Protocol):
    name: str
    forgets_finished: bool  # drop a finished application's own blocks at once

    def on_llm_stage_done(self, app: AppView, next_stage: str | None, now: float) -> Retention:
        """`app` finished an LLM stage and runs `next_stage` next (None: it is done)."""
        ...


class LruRetention:
    name = "lru"
    forgets_finished = False

    def on_llm_stage_done(self, app: AppView, next_stage: str | None, now: float) -> Retention:
        return LET_GO


class _Learned:
    """Per (application type, stage, graph version): a decision computed once."""

    def __init__(self, ctx: PolicyContext) -> None:
        self.ctx = ctx
        self._cache: dict[tuple[str, str, int], Retention] = {}

    def on_llm_stage_done(self, app: AppView, next_stage: str | None, now: float) -> Retention:
        model = self.ctx.models.get(app.app)
        if next_stage is None:
            return LET_GO
        version = -1 if model is None else model.graph.version
        key = (app.app, next_stage, version)
        out = self._cache.get(key)
        if out is None:
            out = self._cache[key] = self._decide(app.app, next_stage)
        return out

    def _samples(self, app_type: str, next_stage: str) -> np.ndarray:
        model = self.ctx.models.get(app_type)
        if model is None or next_stage not in model.graph.nodes:
            return np.zeros(0)
        rng = np.random.default_rng(
            [self.ctx.seed, zlib.crc32(f"{app_type}|{next_stage}".encode())]
        )
        return llm_return_samples(model, next_stage, self.ctx.samples, rng)

    def _decide(self, app_type: str, next_stage: str) -> Retention:
        raise NotImplementedError


class TtlRetention(_Learned):
    name = "ttl"
    forgets_finished = False

    def _decide(self, app_type: str, next_stage: str) -> Retention:
        model = self.ctx.models.get(app_type)
        if model is None or next_stage not in model.graph.nodes:
            return Retention(pin_s=DEFAULT_TTL_S)
        if model.graph.nodes[next_stage].kind == "llm":
            return LET_GO  # no tool stage between: the next call comes at once
        durations = tool_durations(model, next_stage)
        if durations.size == 0:
            return Retention(pin_s=DEFAULT_TTL_S)
        return Retention(pin_s=float(np.percentile(durations, QUANTILE, method="inverted_cdf")))


class PDGraphRetention(_Learned):
    name = "pdgraph"
    forgets_finished = True

    def __init__(self, ctx: PolicyContext, k: float = 0.5, max_pin_s: float = 30.0) -> None:
        super().__init__(ctx)
        if not 0 < k <= 1:
            raise ValueError(f"k must be in (0, 1], got {k!r}")
        self.k = k
        self.max_pin_s = max_pin_s

    def _decide(self, app_type: str, next_stage: str) -> Retention:
        t = self._samples(app_type, next_stage)
        back = t[np.isfinite(t)]
        if t.size == 0:
            return LET_GO
        if back.size / t.size < self.k:
            return FORGET
        hold = float(np.percentile(back, QUANTILE, method="inverted_cdf"))
        if hold <= 0:
            return LET_GO  # an LLM stage follows at once
        if hold <= self.max_pin_s:
            return Retention(pin_s=hold, back_in_s=float(np.median(back)), by_rank=True)
        soon = float(np.percentile(back, 100 - QUANTILE, method="inverted_cdf"))
        return Retention(offload=True, prefetch_in_s=soon)


RETENTIONS: dict[str, Callable[[PolicyContext], RetentionPolicy]] = {
    "lru": lambda ctx: LruRetention(),
    "ttl": TtlRetention,
    "pdgraph": PDGraphRetention,
}


def make_retention(name: str, ctx: PolicyContext) -> RetentionPolicy:
    try:
        return RETENTIONS[name](ctx)
    except KeyError:
        known = ", ".join(RETENTIONS)
        raise ValueError(f"unknown KV retention {name!r}; known: {known}") from None
