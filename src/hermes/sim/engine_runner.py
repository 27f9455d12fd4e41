"""Binds one `Engine` to the event loop: plans steps, times them, and reports finished requests.

Outside inputs (a new request, a priority change) cut a decode run in flight at the next
iteration boundary, so the engine sees them exactly when a real one would.
"""

from __future__ import annotations

from collections.abc import Callable

from hermes.cluster.router import ReplicaLoad
from hermes.engine.request import EngineRequest, RequestState
from hermes.engine.scheduler import Engine, Step
from hermes.sim.kernel import Event, EventLoop

# Step ends run after other events of the same instant, so that arrivals at time t are
# queued before the engine plans its next iteration at t.
STEP_END_PRIORITY = 1

Done = Callable[[EngineRequest, float], None]


class EngineRunner:
    def __init__(self, loop: EventLoop, engine: Engine, name: str, on_done: Done) -> None:
        self.loop = loop
        self.engine = engine
        self.name = name
        self._on_done = on_done
        self._step: Step | None = None
        self._event: Event | None = None
        self._completing = False
        self.requests: list[EngineRequest] = []

    def submit(self, req: EngineRequest, now: float) -> None:
        self.requests.append(req)
        if not self.engine.add(req, now):
            self._on_done(req, now)
            return
        self._input(now)

    def set_priority(self, req: EngineRequest, priority: float, now: float) -> None:
        if req.priority != priority:
            self.engine.set_priority(req, priority)
            # Only queued requests' order changes what the next iteration does.
            if req.state in (RequestState.WAITING, RequestState.SWAPPED):
                self._input(now)

    def load(self) -> ReplicaLoad:
        e = self.engine
        return ReplicaLoad(
            outstanding=e.outstanding,
            kv_used=e.gpu.used / e.gpu.total if e.gpu.total else 1.0,
            queued_tokens=sum(r.num_tokens - r.num_computed for r in e.waiting),
        )

    def _input(self, now: float) -> None:
        if self._completing:
            return  # the step end in progress plans next, with this input in view
        step = self._step
        if step is None:
            self._plan(now)
        elif step.decode_run and now < step.end_s:
            end = self.engine.shorten(step, now)
            if self._event is not None and end != self._event.time:
                self._event.cancel()
                self._event = self.loop.at(end, self._end, STEP_END_PRIORITY)

    def _plan(self, now: float) -> None:
        step = self.engine.plan(now)
        self._step = step
        self._event = (
            None if step is None else self.loop.at(step.end_s, self._end, STEP_END_PRIORITY)
        )

    def _end(self, now: float) -> None:
        step = self._step
        assert step is not None
        self._completing = True
        try:
            result = self.engine.complete(step)
            for req in result.finished:
                self._on_done(req, now)
        finally:
            self._completing = False
        self._plan(now)
