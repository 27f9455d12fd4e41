"""Binds one engine to the event loop: plans steps, times them, and reports finished requests.

Any engine that keeps the engine contract (`engine.interface.LLMEngine`) runs here.
Outside inputs (new requests, a priority change, an abort) cut a decode run in flight at the
next iteration boundary, so the engine sees them exactly when a real one would. Two hooks let
a study act at iteration boundaries without driving the engine itself: `before_plan(now)` runs
right before each plan (top up a queue, take a snapshot, `stop` the runner), `on_step(result,
now)` after each completed step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Generic, overload

from typing_extensions import TypeVar

from hermes.cluster.router import ReplicaLoad
from hermes.engine.interface import LLMEngine
from hermes.engine.request import EngineRequest, RequestState
from hermes.engine.scheduler import Engine
from hermes.engine.step import Step, StepResult
from hermes.sim.kernel import Event, EventLoop

# Step ends run after other events of the same instant, so that arrivals at time t are
# queued before the engine plans its next iteration at t.
STEP_END_PRIORITY = 1


# Typed by the engine it runs, so that a shell reads that engine's own figures.
E = TypeVar("E", bound=LLMEngine, default=Engine)
Done = Callable[[EngineRequest, float], None]
BeforePlan = Callable[[float], None]
OnStep = Callable[[StepResult, float], None]


class EngineRunner(Generic[E]):
    def __init__(
        self,
        loop: EventLoop,
        engine: E,
        name: str,
        on_done: Done,
        *,
        before_plan: BeforePlan | None = None,
        on_step: OnStep | None = None,
    ) -> None:
        self.loop = loop
        self.engine = engine
        self.name = name
        self._on_done = on_done
        self._before_plan = before_plan
        self._on_step = on_step
        self._step: Step | None = None
        self._event: Event | None = None
        self._busy = False  # in a step end or a hook: the plan that follows sees every input
        self.stopped = False
        self.requests: list[EngineRequest] = []

    # Inputs ---------------------------------------------------------------------------------

    def submit(self, req: EngineRequest, now: float) -> bool:
        """Queue `req` on the engine; False (and `on_done` at once) if the engine rejects it."""
        accepted = self._add(req, now)
        if accepted:
            self._input(now)
        return accepted

    def submit_all(self, reqs: Iterable[EngineRequest], now: float) -> int:
        """Queue requests that arrive together, so that one plan sees them all; how many the
        engine accepted."""
        accepted = sum(self._add(r, now) for r in reqs)
        if accepted:
            self._input(now)
        return accepted

    def set_priority(self, req: EngineRequest, priority: float, now: float) -> None:
        if req.priority != priority:
            self.engine.set_priority(req, priority)
            # Only queued requests' order changes what the next iteration does.
            if req.state in (RequestState.WAITING, RequestState.SWAPPED):
                self._input(now)

    def abort(self, req: EngineRequest, now: float) -> bool:
        """Drop `req` for good (no `on_done`); False if the engine does not hold it."""
        if not self.engine.abort(req, now):
            return False
        self._input(now)  # the batch shrinks at the next iteration boundary
        return True

    def wake(self, now: float) -> None:
        """Plan now if no step is in flight (an idle engine reaching a moment that matters)."""
        if self._step is None and not self._busy:
            self._plan(now)

    def stop(self) -> None:
        """Plan nothing more; a step in flight still completes."""
        self.stopped = True

    # Queries --------------------------------------------------------------------------------

    def load(self) -> ReplicaLoad:
        e = self.engine
        return ReplicaLoad(e.outstanding, e.kv_used_fraction, e.queued_tokens)

    # The loop -------------------------------------------------------------------------------

    def _add(self, req: EngineRequest, now: float) -> bool:
        self.requests.append(req)
        if self.engine.add(req, now):
            return True
        self._on_done(req, now)
        return False

    def _input(self, now: float) -> None:
        if self._busy:
            return  # the plan that follows has this input in view
        step = self._step
        if step is None:
            self._plan(now)
        elif step.decode_run and now < step.end_s:
            end = self.engine.shorten(step, now)
            if self._event is not None and end != self._event.time:
                self._event.cancel()
                self._event = self.loop.at(end, self._end, STEP_END_PRIORITY)

    def _plan(self, now: float) -> None:
        if self._before_plan is not None and not self.stopped:
            self._busy = True
            try:
                self._before_plan(now)
            finally:
                self._busy = False
        step = None if self.stopped else self.engine.plan(now)
        self._step = step
        self._event = (
            None if step is None else self.loop.at(step.end_s, self._end, STEP_END_PRIORITY)
        )

    def _end(self, now: float) -> None:
        step = self._step
        assert step is not None
        self._busy = True
        try:
            result = self.engine.complete(step)
            for req in result.finished:
                self._on_done(req, now)
            if self._on_step is not None:
                self._on_step(result, now)
        finally:
            self._busy = False
        self._plan(now)


class ReplicaLoads(Sequence[ReplicaLoad]):
    """Replicas' loads, each read when a router asks (round-robin asks for none)."""

    def __init__(self, runners: Sequence[EngineRunner[LLMEngine]]) -> None:
        self._runners = runners

    def __len__(self) -> int:
        return len(self._runners)

    @overload
    def __getitem__(self, i: int) -> ReplicaLoad: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[ReplicaLoad]: ...

    def __getitem__(self, i: int | slice) -> ReplicaLoad | Sequence[ReplicaLoad]:
        if isinstance(i, slice):
            return [r.load() for r in self._runners[i]]
        return self._runners[i].load()
