"""`plas`: program-level least attained service (Autellix): the application that has received
the least engine service so far goes first; it needs no demand prediction."""

from __future__ import annotations

from hermes.policies.base import AppView, BasePolicy, CallInfo


class PLAS(BasePolicy):
    name = "plas"
    dynamic = True
    view_ranked = True  # total attained service

    def priority(self, call: CallInfo, app: AppView | None, now: float) -> float:
        return call.arrival_s if app is None else app.total_attained_s
