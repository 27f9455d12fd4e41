"""Deadline policies (Hermes-DDL). Applications without a deadline queue behind every one
that has a deadline, in arrival order.

- `edf`: earliest deadline first.
- `lstf`: least slack first, slack = deadline − now − worst-case remaining time: the largest
  critical path (each stage as long as its longest call) among the PDGraph's samples of what
  is left, so an application with much left to do starts early enough. An application whose
  slack is negative queues behind every one with slack left (by deadline): under overload,
  serving the likely-late first makes the others late too. Without a PDGraph for the type it
  is the deadline alone, as in `edf`.
"""

from __future__ import annotations

from hermes.policies.base import NO_DEADLINE, AppView, BasePolicy, CallInfo, PolicyContext
from hermes.policies.demand_state import AppDemand

# Applications whose slack ran out queue behind those with slack, ahead of those without.
_LATE = NO_DEADLINE / 2


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
    view_ranked = False  # slack shrinks with `now`: every round re-ranks every call

    def __init__(self, ctx: PolicyContext) -> None:
        self._demand = AppDemand(ctx)

    def priority(self, call: CallInfo, app: AppView | None, now: float) -> float:
        if app is None or app.deadline_s is None:
            return _no_deadline(call, app)
        worst = self._demand.worst_time(app)
        if worst is None:
            return app.deadline_s - now
        # The current stage's unfinished calls run in parallel: each has had about an equal
        # share of the service they attained.
        done = app.attained_s / max(1, app.unfinished_calls)
        slack = app.deadline_s - now - max(0.0, worst - done)
        if slack < 0:
            # Its deadline is lost if its demand turns out as large as sampled; going first
            # would only make others miss theirs too, so it yields to those with slack left.
            return _LATE + app.deadline_s
        return slack

    def on_done(self, app: AppView, now: float) -> None:
        self._demand.forget(app)
