"""`gittins`: Hermes. Each application is ranked by the Gittins index of its remaining-demand
distribution (from its PDGraph, refined online by what its finished stages showed) at the
service its unfinished calls have attained; all its calls inherit the rank.

The Gittins index minimises mean completion time when demands are uncertain: it serves the
application whose next quantum of service has the best chance of finishing it, per unit of
expected investment. Types or stages without a PDGraph fall back to least attained service.
"""

from __future__ import annotations

from hermes.policies.base import AppView, BasePolicy, CallInfo, PolicyContext
from hermes.policies.demand_state import AppDemand


class Gittins(BasePolicy):
    name = "gittins"
    dynamic = True

    def __init__(self, ctx: PolicyContext) -> None:
        self._demand = AppDemand(ctx)

    def priority(self, call: CallInfo, app: AppView | None, now: float) -> float:
        if app is None:
            return call.arrival_s
        state = self._demand.state(app)
        if state is None:
            return app.total_attained_s
        return state.rank(app.attained_s)

    def on_done(self, app: AppView, now: float) -> None:
        self._demand.forget(app)


class SRJFMean(BasePolicy):
    """`srjf-mean`: shortest remaining expected demand, E[X − a | X > a] from the PDGraph."""

    name = "srjf-mean"
    dynamic = True

    def __init__(self, ctx: PolicyContext) -> None:
        self._demand = AppDemand(ctx)

    def priority(self, call: CallInfo, app: AppView | None, now: float) -> float:
        if app is None:
            return call.arrival_s
        dist = self._demand.distribution(app)
        if dist is None:
            return app.total_attained_s
        return dist.mean_remaining(app.attained_s)

    def on_done(self, app: AppView, now: float) -> None:
        self._demand.forget(app)
