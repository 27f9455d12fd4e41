"""GPUs that several models share, inside a larger simulation: the simulation hands each call
for one of their models to the queue policy (`sim.queue_shell.QueueShell` on the same event
loop), which decides which GPU pulls it and when a GPU swaps models. The call's own request
object runs on the chosen GPU's engine, so the simulation sees its tokens and finish time as
from any other engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from hermes.cluster.multi_model import ModelInstance, MultiModelConfig
from hermes.engine.cost_model import StepCostModel
from hermes.engine.request import EngineRequest
from hermes.policies.qlm.policy import QueuePolicy
from hermes.sim.kernel import EventLoop
from hermes.sim.queue_shell import QueueShell
from hermes.workloads.qlm_workloads import QlmRequest


class SharedCluster:
    """`count` instances that serve `costs`' models (one active at a time each); the first
    instances start with the models active in turn."""

    def __init__(
        self,
        loop: EventLoop,
        costs: Mapping[str, StepCostModel],
        config: MultiModelConfig,
        count: int,
        policy: QueuePolicy,
        on_done: Callable[[EngineRequest, float], None],
        *,
        name: str = "shared",
        decide_interval_s: float = 1.0,
        default_slo_s: float = 3600.0,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        models = list(costs)
        self.models = tuple(models)
        self.instances = [
            ModelInstance(costs, config, active=models[i % len(models)], name=f"{name}/{i}")
            for i in range(count)
        ]
        self.default_slo_s = default_slo_s
        self.shell = QueueShell(
            [],
            policy,
            self.instances,
            timer=timer,
            decide_interval_s=decide_interval_s,
            loop=loop,
            on_done=on_done,
        )
        self._submitted = 0

    def submit(self, req: EngineRequest, model: str, slo_s: float | None, now: float) -> None:
        """`req` for `model` arrives now; `slo_s` is its completion SLO (default if None)."""
        spec = QlmRequest(
            id=self._submitted,
            model=model,
            slo_class=req.slo_class,
            slo_s=self.default_slo_s if slo_s is None else slo_s,
            prompt_tokens=req.prompt_tokens,
            output_tokens=req.output_tokens,
            arrival_s=now,
        )
        self._submitted += 1
        self.shell.submit(spec, req, now)

    def results(self, now: float) -> dict[str, object]:
        out: dict[str, object] = {
            "models": list(self.models),
            "instances": [i.name for i in self.instances],
            "requests": self._submitted,
        }
        out.update(self.shell.figures(now))
        return out
