"""Gittins ranks of applications in progress, cached so that re-ranking thousands is cheap.

An application's rank depends on its type, its PDGraph state (stage, unfinished calls, and the
runs refinement conditions on) and the service attained by its unfinished calls. The remaining-
demand distribution is sampled once per state (``RankState``); a scheduler keeps each
application's ``RankState`` until the application's progress changes, so a ranking round costs
one cached lookup per application.

Ranks are cached per attained value of each state, so they are exact. ``quantum_s`` can round
attained service down to a multiple of itself to share cache entries, but the Gittins index
jumps whenever attained service passes a support point, and benchmarks/gittins_ranking.py
measured that even 1 ms of rounding moves ranks by up to seconds; exact costs no more.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from hermes.core.demand_sampler import DemandModel, DemandState, Progress
from hermes.core.gittins import DemandDistribution

DEFAULT_QUANTUM_S = 0.0  # exact: rounding attained service moves ranks across support points
_MAX_CACHED_RANKS = 4096  # per state; beyond that the cache is emptied and refilled


@dataclass(slots=True)
class RankState:
    """The remaining-demand distribution of one application state, with its cached ranks."""

    dist: DemandDistribution
    quantum_s: float
    _ranks: dict[float, float] = field(default_factory=dict)

    def rank(self, attained: float = 0.0) -> float:
        """Gittins rank given ``attained`` seconds of service to the unfinished calls so far."""
        a = attained if self.quantum_s <= 0.0 else self.quantum_s * int(attained / self.quantum_s)
        r = self._ranks.get(a)
        if r is None:
            if len(self._ranks) >= _MAX_CACHED_RANKS:
                self._ranks.clear()
            r = self._ranks[a] = self.dist.gittins(a)
        return r


class GittinsRanker:
    """Ranks (lower first) of applications by the Gittins index of their remaining demand."""

    def __init__(
        self,
        models: Mapping[str, DemandModel],
        *,
        samples: int = 1000,
        seed: int = 0,
        quantum_s: float = DEFAULT_QUANTUM_S,
        refine: bool = True,
    ) -> None:
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        if not quantum_s >= 0:
            raise ValueError(f"quantum_s must be >= 0, got {quantum_s}")
        self.models = models
        self.samples = samples
        self.seed = seed
        self.quantum_s = quantum_s
        self.refine = refine
        self._states: dict[tuple[str, DemandState], RankState] = {}
        self._versions: dict[str, int] = {}

    def state(self, app: str, progress: Progress) -> RankState:
        """The rank state of an application of type ``app`` at ``progress`` (cached)."""
        model = self.models.get(app)
        if model is None:
            raise KeyError(f"no PDGraph for application type {app!r}")
        demand_state = model.state(progress, self.refine)
        if self._versions.get(app) != demand_state.graph_version:
            # The graph learned since: states of its older versions can never be asked again.
            self._versions[app] = demand_state.graph_version
            for stale in [k for k in self._states if k[0] == app]:
                del self._states[stale]
        key = (app, demand_state)
        state = self._states.get(key)
        if state is None:
            # A generator per state, seeded from the state itself, so that a rank does not
            # depend on the order in which states were first seen.
            label = f"{app}|{demand_state.label()}"
            rng = np.random.default_rng([self.seed, zlib.crc32(label.encode())])
            demand = model.remaining(progress, self.samples, rng, refine=self.refine)
            state = self._states[key] = RankState(DemandDistribution(demand), self.quantum_s)
        return state

    def distribution(self, app: str, progress: Progress) -> DemandDistribution:
        """The remaining-demand distribution an application at ``progress`` is ranked by."""
        return self.state(app, progress).dist

    def rank(self, app: str, progress: Progress, attained: float = 0.0) -> float:
        return self.state(app, progress).rank(attained)

    def rank_many(self, items: Sequence[tuple[str, Progress, float]]) -> list[float]:
        return [self.state(app, p).rank(a) for app, p, a in items]

    @property
    def cached_states(self) -> int:
        return len(self._states)

    def clear(self) -> None:
        """Forget every cached state."""
        self._states.clear()
        self._versions.clear()
