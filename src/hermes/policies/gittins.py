"""`gittins`: Hermes. Each application is ranked by the Gittins index of its remaining-demand
distribution (from its PDGraph, refined online by what its finished stages showed) at the
service its unfinished calls have attained; all its calls inherit the rank.

The Gittins index minimises mean completion time when demands are uncertain: it serves the
application whose next quantum of service has the best chance of finishing it, per unit of
expected investment. Types or stages without a PDGraph fall back to least attained service.
"""

from __future__ import annotations

from collections.abc import Sequence

from hermes.core.rank_cache import RankState
from hermes.policies.base import AppView, BasePolicy, CallInfo, PolicyContext
from hermes.policies.demand_state import AppDemand


class _DemandRanked(BasePolicy):
    """Ranks from the application's remaining-demand distribution at its attained service;
    least attained service for types or stages without a PDGraph."""

    dynamic = True
    # The state is cached per application and (stage, unfinished calls) (`AppDemand`): a
    # graph that learns moves no rank until the application's view changes.
    view_ranked = True

    def __init__(self, ctx: PolicyContext) -> None:
        self._demand = AppDemand(ctx)

    def priority(self, call: CallInfo, app: AppView | None, now: float) -> float:
        if app is None:
            return call.arrival_s
        state = self._demand.state(app)
        if state is None:
            return app.total_attained_s
        return self._rank(state, app.attained_s)

    def _rank(self, state: RankState, attained: float) -> float:
        raise NotImplementedError

    def _rank_batch(self, states: list[RankState], attained: list[float]) -> list[float]:
        return [self._rank(st, a) for st, a in zip(states, attained, strict=True)]

    def rank_apps(self, apps: Sequence[AppView], now: float) -> list[float]:
        ranks = [0.0] * len(apps)
        known: list[int] = []
        states: list[RankState] = []
        for i, app in enumerate(apps):
            state = self._demand.state(app)
            if state is None:
                ranks[i] = app.total_attained_s
            else:
                known.append(i)
                states.append(state)
        if known:
            batch = self._rank_batch(states, [apps[i].attained_s for i in known])
            for i, r in zip(known, batch, strict=True):
                ranks[i] = r
        return ranks

    def on_done(self, app: AppView, now: float) -> None:
        self._demand.forget(app)


class Gittins(_DemandRanked):
    name = "gittins"

    def _rank(self, state: RankState, attained: float) -> float:
        return state.rank(attained)

    def _rank_batch(self, states: list[RankState], attained: list[float]) -> list[float]:
        # The whole round in a few vectorised passes: ≤ 2 ms for 10,000 applications.
        ranks: list[float] = self._demand.ranker.rank_states(states, attained).tolist()
        return ranks


class SRJFMean(_DemandRanked):
    """`srjf-mean`: shortest remaining expected demand, E[X − a | X > a] from the PDGraph."""

    name = "srjf-mean"

    def _rank(self, state: RankState, attained: float) -> float:
        return state.dist.mean_remaining(attained)
