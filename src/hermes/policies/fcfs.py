"""`vllm`: request-level first come, first served, what serving engines do today."""

from __future__ import annotations

from hermes.policies.base import AppView, BasePolicy, CallInfo


class FCFS(BasePolicy):
    name = "vllm"

    def priority(self, call: CallInfo, app: AppView | None, now: float) -> float:
        return call.arrival_s
