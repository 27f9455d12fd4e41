"""Deadline policies (Hermes-DDL). Applications without a deadline queue behind every one
that has a deadline, in arrival order.

- `edf`: earliest deadline first.
- `lstf`: least slack first, slack = deadline − now − worst-case remaining time, the largest
  remaining demand the PDGraph sampled (so an application with much left to do starts early
  enough). Without a PDGraph for the type it is the deadline alone, as in `edf`.
"""

from __future__ import annotations

from hermes.policies.base import NO_DEADLINE, AppView, BasePolicy, CallInfo, PolicyContext
from hermes.policies.demand_state import AppDemand


def _no_deadline(call: CallInfo, app: AppView | None) -> float:
    return NO_DEADLINE + (call.arrival_s if app is None else app.arrival_s)


class EDF(BasePolicy):
    name = "edf"

    def priority(self, call: CallInfo, app: AppView | None, now: float) -> float:
        if app is None or app.deadline_s is None:
            return _no_deadline(call, app)
        return app.deadline_s


class LSTF(BasePolicy):
    name = "lstf"
    dynamic = True

    def __init__(self, ctx: PolicyContext) -> None:
        self._demand = AppDemand(ctx)

    def priority(self, call: CallInfo, app: AppView | None, now: float) -> float:
        if app is None or app.deadline_s is None:
            return _no_deadline(call, app)
        dist = self._demand.distribution(app)
        worst = 0.0 if dist is None else max(0.0, float(dist.support[-1]) - app.attained_s)
        return app.deadline_s - now - worst

    def on_done(self, app: AppView, now: float) -> None:
        self._demand.forget(app)
