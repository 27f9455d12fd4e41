"""A measured window: cumulative counters read at the first iteration boundaries at or after
its start and end, and when a run that measures it may stop."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Window:
    """Measure what happens in [start_s, end_s); give the requests that arrived in it up to
    `drain_s` after end_s to finish."""

    start_s: float
    end_s: float
    drain_s: float

    def __post_init__(self) -> None:
        if not 0 <= self.start_s < self.end_s or self.drain_s < 0:
            raise ValueError(f"Window: need 0 <= start_s < end_s and drain_s >= 0, got {self}")

    @property
    def stop_s(self) -> float:
        return self.end_s + self.drain_s

    def contains(self, t: float) -> bool:
        return self.start_s <= t < self.end_s


@dataclass(frozen=True, slots=True)
class Snapshot:
    at_s: float
    counters: Mapping[str, int]


class WindowMeter:
    """Call `boundary(now)` at every iteration boundary (a runner's `before_plan`); it returns
    True once the run should stop: at the first boundary at or after `window.stop_s`, or after
    `window.end_s` as soon as `settled()` (everything measured has finished).

    `read()` gives the cumulative counters; `delta(name)` is a counter's growth between the
    first boundaries at or after the window's start and end, over `span_s`. A boundary never
    reached is taken at the window's edge with the counters at `close(now)`.
    """

    def __init__(
        self,
        window: Window,
        read: Callable[[], Mapping[str, int]],
        settled: Callable[[], bool],
    ) -> None:
        self.window = window
        self._read = read
        self._settled = settled
        self.first: Snapshot | None = None
        self.last: Snapshot | None = None
        self.stopped_s: float | None = None

    def boundary(self, now: float) -> bool:
        w = self.window
        if self.first is None and now >= w.start_s:
            self.first = Snapshot(now, self._read())
        if self.last is None and now >= w.end_s:
            self.last = Snapshot(now, self._read())
        if now >= w.stop_s or (self.last is not None and self._settled()):
            self.stopped_s = now
            return True
        return False

    def close(self) -> None:
        """Take the snapshots not taken yet (the run ended early), at the window's edges."""
        if self.first is None:
            self.first = Snapshot(self.window.start_s, self._read())
        if self.last is None:
            self.last = Snapshot(self.window.end_s, self._read())

    @property
    def span_s(self) -> float:
        first, last = self._edges()
        return last.at_s - first.at_s

    def delta(self, name: str) -> int:
        first, last = self._edges()
        return last.counters[name] - first.counters[name]

    def _edges(self) -> tuple[Snapshot, Snapshot]:
        if self.first is None or self.last is None:
            raise RuntimeError("WindowMeter: close() it first")
        return self.first, self.last
