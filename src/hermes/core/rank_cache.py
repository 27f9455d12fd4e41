"""Gittins ranks of applications in progress, cached so that re-ranking thousands is cheap.

An application's rank depends on its type, its PDGraph state (stage, unfinished calls, and the
runs refinement conditions on) and the service attained by its unfinished calls. The remaining-
demand distribution is sampled once per state; the rank is computed once per attained-service
bucket of that distribution. Buckets are ``1/grid`` of the distribution's largest sample wide
and the rank of a bucket is the exact rank at its lower edge: that rounding is the only
approximation (``grid=0`` turns it off).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from hermes.core.demand_sampler import DemandModel, DemandState, Progress
from hermes.core.gittins import DemandDistribution


@dataclass(slots=True)
class _Entry:
    dist: DemandDistribution
    step: float  # attained-service bucket width; 0 = exact
    ranks: dict[int, float] = field(default_factory=dict)

    def rank(self, attained: float) -> float:
        if self.step <= 0.0:
            return self.dist.gittins(attained)
        b = int(attained / self.step)
        r = self.ranks.get(b)
        if r is None:
            r = self.ranks[b] = self.dist.gittins(b * self.step)
        return r


class GittinsRanker:
    """Ranks (lower first) of applications by the Gittins index of their remaining demand."""

    def __init__(
        self,
        models: Mapping[str, DemandModel],
        *,
        samples: int = 1000,
        seed: int = 0,
        grid: int = 512,
        refine: bool = True,
    ) -> None:
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        if grid < 0:
            raise ValueError(f"grid must be >= 0, got {grid}")
        self.models = models
        self.samples = samples
        self.seed = seed
        self.grid = grid
        self.refine = refine
        self._entries: dict[tuple[str, DemandState], _Entry] = {}

    def _entry(self, app: str, progress: Progress) -> _Entry:
        model = self.models.get(app)
        if model is None:
            raise KeyError(f"no PDGraph for application type {app!r}")
        state = model.state(progress, self.refine)
        key = (app, state)
        entry = self._entries.get(key)
        if entry is None:
            # A generator per state, seeded from the state itself, so a rank does not depend on
            # the order in which states were first seen.
            label = f"{app}|{state.label()}"
            rng = np.random.default_rng([self.seed, zlib.crc32(label.encode())])
            demand = model.remaining(progress, self.samples, rng, refine=self.refine)
            dist = DemandDistribution(demand)
            top = float(dist.support[-1])
            step = top / self.grid if self.grid and top > 0 else 0.0
            entry = self._entries[key] = _Entry(dist, step)
        return entry

    def distribution(self, app: str, progress: Progress) -> DemandDistribution:
        """The remaining-demand distribution an application at ``progress`` is ranked by."""
        return self._entry(app, progress).dist

    def rank(self, app: str, progress: Progress, attained: float = 0.0) -> float:
        """Gittins rank given ``attained`` seconds of service to the unfinished calls so far."""
        return self._entry(app, progress).rank(attained)

    def rank_many(self, items: Sequence[tuple[str, Progress, float]]) -> list[float]:
        return [self._entry(app, p).rank(a) for app, p, a in items]

    def clear(self) -> None:
        """Forget cached states (e.g. after the graphs learned new runs)."""
        self._entries.clear()
