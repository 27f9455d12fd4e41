"""Aging: a bound on how long a call can be overtaken.

A ranking policy orders calls by their rank alone, so a call whose rank stays worse than that
of every newcomer waits for as long as newcomers keep coming: under `gittins`, a stream of
untagged calls (no demand to come, rank 0) starves tagged applications whose calls carry the
rank of all the work still ahead of them. Aging caps that wait: a call that has waited
`max_wait_s` goes ahead of every call that has waited less, and the calls so aged go first come,
first served among themselves. No call then waits behind calls newer than itself for longer
than `max_wait_s`; below that bound the policy's order is untouched.

Pure: the shell (the gateway's dispatcher, or a simulator) says when a call was queued and
what time it is now; `Aging` decides which calls are due and what rank they take.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# The rank of an aged call: ahead of any rank a policy gives (seconds of demand, deadlines,
# counters), behind only -inf (a retried call, which goes first). Aged calls tie on it and go
# in the order they were queued (the shell's sequence number breaks ties).
AGED_RANK = -1e300


@dataclass(frozen=True, slots=True)
class Aging:
    """`max_wait_s`: how long a call may wait before it goes ahead of every newer call; None:
    no aging (the policy's order alone)."""

    max_wait_s: float | None = 30.0

    def __post_init__(self) -> None:
        m = self.max_wait_s
        if m is not None and not (math.isfinite(m) and m > 0):
            raise ValueError(f"aging: max_wait_s must be a positive number of seconds, got {m!r}")

    @property
    def active(self) -> bool:
        return self.max_wait_s is not None

    def due(self, queued_s: float, rank: float, now: float) -> bool:
        """Whether a call queued at `queued_s`, ranked `rank`, is to be aged at `now`. A call
        that goes first already (rank AGED_RANK or below) needs no aging."""
        return (
            self.max_wait_s is not None and rank > AGED_RANK and now - queued_s >= self.max_wait_s
        )

    def rank(self, queued_s: float, rank: float, now: float) -> float:
        """The rank to order a call by at `now`: its own, or AGED_RANK once due."""
        return AGED_RANK if self.due(queued_s, rank, now) else rank
