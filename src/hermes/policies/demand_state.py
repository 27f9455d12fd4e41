"""The remaining-demand distribution of an application in progress, cached per application.

Shared by the PDGraph policies (gittins, srjf-mean, lstf): the distribution changes only when
the application's stage or number of unfinished calls does, so it is looked up once per
change, not once per ranking round.
"""

from __future__ import annotations

import zlib
from collections.abc import Hashable

import numpy as np

from hermes.core.demand_sampler import DemandState, Progress
from hermes.core.gittins import DemandDistribution
from hermes.core.rank_cache import GittinsRanker, RankState
from hermes.policies.base import AppView, PolicyContext


class AppDemand:
    def __init__(self, ctx: PolicyContext) -> None:
        self.ranker = GittinsRanker(
            ctx.models, samples=ctx.samples, seed=ctx.seed, refine=ctx.refine
        )
        self._cache: dict[Hashable, tuple[tuple[int, int], RankState | None]] = {}
        self._worst: dict[Hashable, tuple[tuple[int, int], float | None]] = {}
        self._worst_by_state: dict[tuple[str, DemandState], float] = {}

    def state(self, app: AppView) -> RankState | None:
        """The app's rank state, or None when its type or stage has no PDGraph to go by."""
        # The stage index moves with every stage, so it covers the visit counts too (a loop's
        # next visit is a new stage); the ranker keys its shared states on the counts.
        key = (app.stage_index, app.unfinished_calls)
        hit = self._cache.get(app.app_id)
        if hit is not None and hit[0] == key:
            return hit[1]
        state: RankState | None = None
        if app.app in self.ranker.models and app.stage is not None:
            progress = Progress(app.stage.name, app.unfinished_calls, tuple(app.finished))
            try:
                state = self.ranker.state(app.app, progress)
            except ValueError:  # a stage the graph never saw: no prediction
                state = None
        self._cache[app.app_id] = (key, state)
        return state

    def distribution(self, app: AppView) -> DemandDistribution | None:
        state = self.state(app)
        return None if state is None else state.dist

    def worst_time(self, app: AppView) -> float | None:
        """The largest sampled critical-path time still to come (each stage as long as its
        longest call, in demand-cost seconds); None without a PDGraph to go by."""
        key = (app.stage_index, app.unfinished_calls)
        hit = self._worst.get(app.app_id)
        if hit is not None and hit[0] == key:
            return hit[1]
        value: float | None = None
        r = self.ranker
        model = r.models.get(app.app)
        if model is not None and app.stage is not None:
            progress = Progress(app.stage.name, app.unfinished_calls, tuple(app.finished))
            try:
                state = model.state(progress, r.refine)
                value = self._worst_by_state.get((app.app, state))
                if value is None:
                    # Seeded from the state, as the ranker does, so order of arrival is moot.
                    label = f"{app.app}|{state.label()}|cp"
                    rng = np.random.default_rng([r.seed, zlib.crc32(label.encode())])
                    cp = model.remaining(
                        progress, r.samples, rng, refine=r.refine, critical_path=True
                    )
                    value = self._worst_by_state[(app.app, state)] = float(cp.max())
            except ValueError:  # a stage the graph never saw: no prediction
                value = None
        self._worst[app.app_id] = (key, value)
        return value

    def forget(self, app: AppView) -> None:
        self._cache.pop(app.app_id, None)
        self._worst.pop(app.app_id, None)
