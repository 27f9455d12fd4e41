"""`vllm`: request-level first come, first served, what serving engines do today."""

from __future__ import annotations

from hermes.policies.base import CallInfo


class FCFS:
    name = "vllm"

    def priority(self, call: CallInfo, now: float) -> float:
        return call.arrival_s
