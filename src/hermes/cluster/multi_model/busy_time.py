"""An instance's busy time: completed steps, and swaps and KV transfers, which are booked when
they start and may still be under way."""

from __future__ import annotations


class BusyTime:
    __slots__ = ("_closed_s", "_open")

    def __init__(self) -> None:
        self._closed_s = 0.0
        self._open: list[tuple[float, float]] = []  # swaps and transfers not yet folded

    def add_done(self, seconds: float) -> None:
        """Seconds of work already over (a completed step)."""
        self._closed_s += seconds

    def add_interval(self, start: float, end: float) -> None:
        """Work over [start, end], which may lie partly in the future (a swap, a transfer)."""
        self._open.append((start, end))

    def fold(self, now: float) -> None:
        """Move intervals that ended by `now` into the closed total."""
        still: list[tuple[float, float]] = []
        for start, end in self._open:
            if end <= now:
                self._closed_s += end - start
            else:
                still.append((start, end))
        self._open = still

    def up_to(self, now: float) -> float:
        """Busy seconds up to `now`."""
        busy = self._closed_s
        for start, end in self._open:
            busy += max(0.0, min(end, now) - start)
        return busy
