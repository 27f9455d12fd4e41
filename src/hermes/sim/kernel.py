"""The simulator's event loop: a heap of (time, priority, sequence, event).

Ties at one instant are broken by priority (lower first), then by the order of scheduling, so
a simulation is deterministic. Each loop owns its clock and heap: two simulations in one process
never interfere.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field

Callback = Callable[[float], None]


@dataclass(order=True, slots=True)
class Event:
    time: float
    priority: int
    seq: int
    callback: Callback = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        """The event stays in the heap but does nothing when its time comes."""
        self.cancelled = True


class EventLoop:
    """A discrete-event loop with a virtual clock (seconds)."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._heap: list[Event] = []
        self._seq = 0
        self.processed = 0

    @property
    def now(self) -> float:
        return self._now

    def __len__(self) -> int:
        return len(self._heap)

    def at(self, time: float, callback: Callback, priority: int = 0) -> Event:
        """Run ``callback(time)`` at virtual ``time`` (not before now)."""
        if not time >= self._now or math.isinf(time):
            raise ValueError(f"cannot schedule at {time!r}: now is {self._now!r}")
        event = Event(time, priority, self._seq, callback)
        self._seq += 1
        heapq.heappush(self._heap, event)
        return event

    def after(self, delay: float, callback: Callback, priority: int = 0) -> Event:
        if not delay >= 0:
            raise ValueError(f"delay must be >= 0, got {delay!r}")
        return self.at(self._now + delay, callback, priority)

    def run(self, until: float = math.inf) -> float:
        """Process events in order until none is left or the next is later than ``until``.

        Returns the virtual time reached: the last event's time, or ``until`` if it is finite
        and events remain beyond it.
        """
        heap = self._heap
        while heap and heap[0].time <= until:
            event = heapq.heappop(heap)
            if event.cancelled:
                continue
            self._now = event.time
            self.processed += 1
            event.callback(event.time)
        if heap and math.isfinite(until):
            self._now = max(self._now, until)
        return self._now
