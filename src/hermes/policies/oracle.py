"""`oracle`: clairvoyant shortest remaining demand. It reads each run's future (the true
tokens and tool times still to come), so it is a bound to measure against, not a policy
anyone can deploy."""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np

from hermes.core.demand_cost import DemandCost, LinearCost
from hermes.core.runs import AppRun, LLMCall, Stage, ToolCall
from hermes.policies.base import AppView, BasePolicy, CallInfo, PolicyContext


def stage_cost(stage: Stage, cost: DemandCost) -> float:
    """Seconds of service a whole stage needs, as the demand cost weighs it."""
    llm = [c for c in stage.calls if isinstance(c, LLMCall)]
    tools = [c for c in stage.calls if isinstance(c, ToolCall)]
    total = 0.0
    if llm:
        p = np.array([c.prompt_tokens for c in llm], dtype=np.float64)
        o = np.array([c.completion_tokens for c in llm], dtype=np.float64)
        total += float(cost.llm_calls_s(p, o).sum())
    if tools:
        d = np.array([c.duration_s for c in tools], dtype=np.float64)
        total += float(cost.tool_calls_s(d).sum())
    return total


class Oracle(BasePolicy):
    name = "oracle"
    dynamic = True
    view_ranked = True  # the run's stages left, less the current stage's service

    def __init__(self, ctx: PolicyContext) -> None:
        self._cost = ctx.cost or LinearCost()
        self._suffix: dict[Hashable, list[float]] = {}

    def _suffix_costs(self, app: AppView, run: AppRun) -> list[float]:
        suffix = self._suffix.get(app.app_id)
        if suffix is None:
            costs = [stage_cost(s, self._cost) for s in run.stages]
            suffix = [sum(costs[i:]) for i in range(len(costs) + 1)]
            self._suffix[app.app_id] = suffix
        return suffix

    def priority(self, call: CallInfo, app: AppView | None, now: float) -> float:
        if app is None or app.run is None:
            return call.arrival_s
        suffix = self._suffix_costs(app, app.run)
        i = max(app.stage_index, 0)
        return max(0.0, suffix[i] - app.stage_service_s)

    def on_done(self, app: AppView, now: float) -> None:
        self._suffix.pop(app.app_id, None)
