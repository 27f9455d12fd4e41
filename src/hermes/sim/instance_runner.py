"""Binds one multi-model instance (`ModelInstance`) to the event loop, as `EngineRunner` binds
an engine: it plans steps and schedules their ends, the end of a model swap, and the moment
KV transfers free the GPU (`free_at_s`), and reports finished requests.

A shell decides when the instance plans (`plan(now)`), so that what it does at an iteration
boundary (evictions, pulls, swaps) comes before the next step. Work that must wait for a
boundary is `hold`-ed: it runs when the step in flight (or the swap) ends, before `on_event`.
A request added during a decode run cuts the run at the next iteration boundary.

All of an instance's events carry its `priority`, so that what several instances do at one
instant happens in a fixed order, whatever the order in which it was scheduled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal

from hermes.cluster.multi_model import KvTransfer, ModelInstance
from hermes.engine.request import EngineRequest
from hermes.engine.scheduler import Step
from hermes.sim.kernel import Event, EventLoop
from hermes.sim.metrics import InstanceFigures

# After arrivals (priority 0) at the same instant.
INSTANCE_PRIORITY = 1

InstanceEvent = Literal["step", "swap", "free"]
Done = Callable[[EngineRequest, float], None]
OnEvent = Callable[["InstanceRunner", float, InstanceEvent], None]
Held = Callable[[float], None]


class InstanceRunner:
    """`on_done(req, t)` for each request that finished in a step ending at t; then
    `on_event(runner, now, kind)` after a step ends ("step"), a swap ends ("swap") or KV
    transfers are over ("free")."""

    def __init__(
        self,
        loop: EventLoop,
        instance: ModelInstance,
        on_done: Done,
        on_event: OnEvent | None = None,
        *,
        priority: int = INSTANCE_PRIORITY,
    ) -> None:
        self.loop = loop
        self.instance = instance
        self.priority = priority
        self._on_done = on_done
        self._on_event = on_event
        self._step: Step | None = None
        self._step_event: Event | None = None
        self._swap_event: Event | None = None
        self._free_event: Event | None = None
        self._held: list[Held] = []
        self.output_tokens = 0

    @property
    def name(self) -> str:
        return self.instance.name

    @property
    def step(self) -> Step | None:
        """The step in flight."""
        return self._step

    @property
    def busy(self) -> bool:
        """A step is in flight or a model is loading."""
        return self._step is not None or self.instance.swapping

    @property
    def holding(self) -> bool:
        """Work is held for the next boundary."""
        return bool(self._held)

    @property
    def pending(self) -> bool:
        """An event of this instance is still to come."""
        return any(e is not None for e in (self._step_event, self._swap_event, self._free_event))

    # Inputs ---------------------------------------------------------------------------------

    def add(self, req: EngineRequest, now: float, model: str | None = None) -> bool:
        """`ModelInstance.add`; a decode run in flight ends at the next iteration boundary."""
        if not self.instance.add(req, now, model=model):
            return False
        step = self._step
        if step is not None and step.decode_run:
            end = self.instance.shorten(step, now)
            event = self._step_event
            if event is not None and end != event.time:
                event.cancel()
                self._step_event = self.loop.at(end, self._step_end, self.priority)
        return True

    def begin_swap(self, model: str, now: float) -> float:
        """`ModelInstance.begin_swap`; the swap's end is an event."""
        end = self.instance.begin_swap(model, now)
        self._swap_event = self.loop.at(end, self._swap_end, self.priority)
        self._sync_free(now)
        return end

    def evict(self, requests: Iterable[EngineRequest], now: float) -> KvTransfer:
        """`ModelInstance.evict` (no step may be in flight: `hold` it until one ends)."""
        out = self.instance.evict(requests, now)
        self._sync_free(now)
        return out

    def restore(self, requests: Iterable[EngineRequest], now: float) -> KvTransfer:
        """`ModelInstance.restore` (no step may be in flight: `hold` it until one ends)."""
        out = self.instance.restore(requests, now)
        self._sync_free(now)
        return out

    def hold(self, work: Held) -> None:
        """Run `work(now)` at the next boundary: when the step in flight or the swap ends."""
        self._held.append(work)

    def plan(self, now: float) -> Step | None:
        """Start the next step if none is in flight, no model is loading and transfers are
        over; None if there is nothing to do (or it cannot start yet)."""
        if self.busy or now < self.instance.free_at_s:
            return None
        step = self.instance.plan(now)
        if step is not None:
            self._step = step
            self._step_event = self.loop.at(step.end_s, self._step_end, self.priority)
        return step

    def stop(self) -> None:
        """Cancel every event still to come (the run is over)."""
        for event in (self._step_event, self._swap_event, self._free_event):
            if event is not None:
                event.cancel()
        self._step_event = self._swap_event = self._free_event = None

    def figures(self, now: float) -> InstanceFigures:
        stats = self.instance.stats
        return InstanceFigures(
            stats.warm_swaps, stats.cold_swaps, stats.swap_s, self.instance.utilisation(now)
        )

    # Events ---------------------------------------------------------------------------------

    def _step_end(self, now: float) -> None:
        step = self._step
        assert step is not None
        self._step = self._step_event = None
        result = self.instance.complete(step)
        self.output_tokens += result.tokens
        for req in result.finished:
            self._on_done(req, step.end_s)
        self._boundary(now, "step")

    def _swap_end(self, now: float) -> None:
        self._swap_event = None
        self.instance.complete_swap(now)
        self._boundary(now, "swap")

    def _free(self, now: float) -> None:
        self._free_event = None
        if self._on_event is not None:
            self._on_event(self, now, "free")

    def _boundary(self, now: float, kind: InstanceEvent) -> None:
        if not self.busy and self._held:
            held, self._held = self._held, []
            for work in held:
                work(now)
        if self._on_event is not None:
            self._on_event(self, now, kind)

    def _sync_free(self, now: float) -> None:
        """One event at `free_at_s` while it is ahead (it only moves later), unless a swap
        ends then (the swap's end is the event)."""
        free = self.instance.free_at_s
        swap = self.instance.swap_in_progress
        want = free > now and (swap is None or swap.end_s != free)
        event = self._free_event
        if event is not None and want and event.time == free:
            return
        if event is not None:
            event.cancel()
        self._free_event = self.loop.at(free, self._free, self.priority) if want else None
