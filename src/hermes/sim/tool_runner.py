"""Binds one `ToolPool` to the event loop: one timer at the pool's next wake-up."""

from __future__ import annotations

from collections.abc import Callable, Hashable

from hermes.cluster.tool_pool import CallFinished, CallStarted, ToolPool
from hermes.sim.kernel import Event, EventLoop

# (call id, finish time, the call's cold-start wait, the instance that served it)
Finished = Callable[[Hashable, float, float, int], None]


class ToolRunner:
    def __init__(self, loop: EventLoop, pool: ToolPool, on_finish: Finished) -> None:
        self.loop = loop
        self.pool = pool
        self._on_finish = on_finish
        self._timer: Event | None = None
        self._cold_wait: dict[Hashable, float] = {}  # calls started and not finished
        self.cold_wait_s = 0.0

    def submit(self, call_id: Hashable, duration_s: float, now: float) -> None:
        self._handle(self.pool.submit(call_id, duration_s, now))

    def prewarm(self, now: float, instances: int = 1, hold_s: float | None = None) -> int:
        started = self.pool.prewarm(now, instances, hold_s)
        self._handle([])
        return started

    def retain(self, instance: int, until: float, now: float) -> bool:
        kept = self.pool.retain(instance, until, now)
        self._handle([])
        return kept

    def _wake(self, now: float) -> None:
        self._timer = None
        self._handle(self.pool.advance(now))

    def _handle(self, effects: list[CallStarted | CallFinished]) -> None:
        for effect in effects:
            if isinstance(effect, CallStarted):
                self.cold_wait_s += effect.cold_wait_s
                self._cold_wait[effect.call_id] = effect.cold_wait_s
            else:
                cold = self._cold_wait.pop(effect.call_id, 0.0)
                self._on_finish(effect.call_id, effect.at, cold, effect.instance)
        wake = self.pool.next_wake()
        if self._timer is not None and (wake is None or self._timer.time != wake):
            self._timer.cancel()
            self._timer = None
        if wake is not None and self._timer is None:
            self._timer = self.loop.at(max(wake, self.loop.now), self._wake)
