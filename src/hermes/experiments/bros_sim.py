"""One engine co-serving real-time (RT) requests from a trace and a standing best-effort (BE)
backlog, run on the simulator, and the RT capacity of an engine. How a run is measured:
docs/bros.md."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hermes.engine.cost_model import StepCostModel
from hermes.engine.engine_config import EngineConfig
from hermes.engine.interface import LLMEngine
from hermes.engine.request import EngineRequest
from hermes.engine.scheduler import Engine
from hermes.engine.step import StepResult
from hermes.experiments.bros_gateway import GatedBacklog, RtPaceGate
from hermes.experiments.bros_workload import LengthPool, PoolStream, RtTrace
from hermes.sim.engine_runner import STEP_END_PRIORITY, EngineRunner
from hermes.sim.kernel import EventLoop
from hermes.sim.request_streams import Backlog, LengthSource, RequestClass, TraceFeeder
from hermes.sim.window import Window, WindowMeter

# The co-served policies (`engine.catalog.ENGINE_KINDS`: RT and BE requests share each
# engine), and `split`: dedicated RT and BE instances.
# `bros-gateway`: `vllm` behind a gateway that holds BE calls back for RT's pace.
POLICIES = ("vllm", "vllm-priority", "split", "bros", "bros-nobidir", "bros-gateway")
# Past the start-up transient of a saturated engine.
CAPACITY_WINDOW = Window(300.0, 1200.0, 0.0)


@dataclass(frozen=True, slots=True)
class RunOutput:
    """What one engine did: every RT request (with its timestamps), and the BE output and
    preemptions over the measured span."""

    rt: list[EngineRequest]
    be_tokens: int
    be_finished: int
    span_s: float
    preemptions: int
    iterations: int
    end_s: float


class _CoServed:
    """The parts of one run on one event loop: the engine's runner, the RT trace's feeder,
    the BE backlog, and the window's meter, which stops the run."""

    def __init__(
        self,
        engine: LLMEngine,
        rt: RtTrace | None,
        be: LengthSource | None,
        window: Window,
        classes: tuple[RequestClass, RequestClass],
        be_backlog: int,
        gate: RtPaceGate | None = None,
    ) -> None:
        self.loop = loop = EventLoop()
        self.window = window
        self.engine = engine
        self.runner = EngineRunner(
            loop, engine, "co-served", self._done, before_plan=self._boundary, on_step=self._step
        )
        self.rt = None if rt is None else TraceFeeder(loop, self.runner, rt, classes[0])
        self.gate = gate
        backlog = Backlog if gate is None else GatedBacklog
        self.be = None if be is None else backlog(self.runner, be, classes[1], be_backlog)
        self._gated = 0  # RT requests handed to the gate so far
        arrivals = np.zeros(0) if rt is None else rt.arrival_s
        self.measured = int(
            np.count_nonzero((arrivals >= window.start_s) & (arrivals < window.end_s))
        )
        self.measured_done = 0  # RT requests of the window finished or rejected
        self.iterations = 0
        self.meter = WindowMeter(window, self._counters, self._settled)
        loop.at(0.0, self.runner.wake, STEP_END_PRIORITY)
        # An idle engine with nothing more to come ends its window at its end.
        loop.at(window.end_s, self.runner.wake, STEP_END_PRIORITY)

    def run(self) -> RunOutput:
        self.loop.run()
        meter = self.meter
        meter.close()
        return RunOutput(
            rt=[] if self.rt is None else self.rt.requests,
            be_tokens=meter.delta("be_tokens"),
            be_finished=meter.delta("be_finished"),
            span_s=meter.span_s,
            preemptions=meter.delta("preemptions"),
            iterations=self.iterations,
            end_s=self.loop.now if meter.stopped_s is None else meter.stopped_s,
        )

    def _boundary(self, now: float) -> None:
        if self.meter.boundary(now):
            self.runner.stop()
        elif self.be is not None:
            if self.gate is not None and isinstance(self.be, GatedBacklog):
                if self.rt is not None:
                    for req in self.rt.requests[self._gated :]:
                        self.gate.add(req)
                    self._gated = len(self.rt.requests)
                self.gate.update(now, self.be)
            self.be.top_up(now)

    def _done(self, req: EngineRequest, now: float) -> None:
        if self.be is not None and req.slo_class == self.be.cls.name:
            self.be.done(req)
        elif self.window.contains(req.arrival_s):
            self.measured_done += 1

    def _step(self, result: StepResult, now: float) -> None:
        self.iterations += 1

    def _counters(self) -> dict[str, int]:
        be = self.be
        return {
            "be_tokens": 0 if be is None else be.tokens,
            "be_finished": 0 if be is None else be.finished,
            "preemptions": self.engine.stats.preemptions,
        }

    def _settled(self) -> bool:
        return (self.rt is None or self.rt.exhausted) and self.measured_done == self.measured


def simulate(
    engine: LLMEngine,
    rt: RtTrace | None,
    be: LengthSource | None,
    window: Window,
    *,
    ttft_slo_s: float | None = None,
    tpot_slo_s: float | None = None,
    rt_priority: float = 0.0,
    be_priority: float = 0.0,
    be_backlog: int = 0,
    gate: RtPaceGate | None = None,
) -> RunOutput:
    """Run `engine` on the RT trace (None: no RT) with `be_backlog` BE requests from `be`
    (None: no BE) kept queued at every iteration boundary, measuring `window`. With a `gate`
    the BE requests wait at a gateway that lets the engine hold only as many as it allows."""
    if be is not None and be_backlog < 1:
        raise ValueError(f"simulate: be_backlog must be >= 1 with a BE stream, got {be_backlog}")
    classes = (
        RequestClass("rt", rt_priority, ttft_slo_s, tpot_slo_s),
        RequestClass("be", be_priority),
    )
    return _CoServed(engine, rt, be, window, classes, be_backlog, gate).run()


def rt_capacity(
    cost: StepCostModel,
    config: EngineConfig,
    pool: LengthPool,
    seed: int,
    window: Window = CAPACITY_WINDOW,
) -> float:
    """Requests per second one engine completes over `window`, FCFS, with RT-shaped requests
    (rows of `pool`) always queued and nothing else to do: the most RT load it can carry
    alone. Start the window late enough to leave the start-up transient behind."""
    run = simulate(
        Engine(cost, config),
        None,
        PoolStream(pool, seed),
        window,
        be_backlog=_backlog(config, pool),
    )
    return run.be_finished / run.span_s


def _backlog(config: EngineConfig, pool: LengthPool) -> int:
    """Enough queued requests that an iteration never runs out of prompts to admit."""
    shortest = max(1, int(pool.prompts.min()))
    return min(config.max_num_seqs, -(-config.max_num_batched_tokens // shortest) + 1)
