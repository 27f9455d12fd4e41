"""The gateway's queue: calls wait here, in policy order, for a slot on an upstream.

Each upstream (one engine replica) takes at most `concurrency` calls at once, so that calls
queue here, where the policy orders them, rather than inside the engine. A call may go to any
upstream serving its model; a freed slot goes to the best-ranked call that upstream can serve,
and a new call goes to the serving upstream with the most free slots (least outstanding work).

Pure: `submit`, `release`, `cancel` and `rerank` return the grants to carry out; the server
turns them into started upstream calls. Picking the best call is a heap pop (O(log n)); a
re-rank rebuilds the heaps in O(n).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str
    models: frozenset[str]
    concurrency: int


@dataclass(slots=True, eq=False)
class Waiting:
    """A queued call. `priority` is the policy's rank (lower first)."""

    key: Hashable
    model: str
    priority: float
    seq: int = 0
    cancelled: bool = False
    granted: bool = False


@dataclass(frozen=True, slots=True)
class Grant:
    call: Waiting
    upstream: str


class QueueFullError(Exception):
    """The queue holds `limit` calls already."""


@dataclass(slots=True)
class Dispatcher:
    upstreams: Sequence[Upstream]
    limit: int = 10_000
    _heaps: dict[str, list[tuple[float, int, Waiting]]] = field(default_factory=dict)
    _busy: dict[str, int] = field(default_factory=dict)
    _healthy: dict[str, bool] = field(default_factory=dict)
    _seq: int = 0
    _queued: int = 0

    def __post_init__(self) -> None:
        names = [u.name for u in self.upstreams]
        if len(set(names)) != len(names):
            raise ValueError(f"upstream names must be unique, got {names}")
        for u in self.upstreams:
            self._busy[u.name] = 0
            self._healthy[u.name] = True
            for m in u.models:
                self._heaps.setdefault(m, [])

    # Queries ---------------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def running(self) -> int:
        return sum(self._busy.values())

    def serves(self, model: str) -> bool:
        return model in self._heaps

    def models(self) -> list[str]:
        return sorted(self._heaps)

    def busy(self, upstream: str) -> int:
        return self._busy[upstream]

    def healthy(self, upstream: str) -> bool:
        return self._healthy[upstream]

    def waiting(self) -> Iterable[Waiting]:
        for heap in self._heaps.values():
            for _, _, w in heap:
                if not w.cancelled:
                    yield w

    # Inputs ----------------------------------------------------------------------------------

    def submit(self, key: Hashable, model: str, priority: float) -> tuple[Waiting, list[Grant]]:
        """Queue a call; KeyError for a model no upstream serves, QueueFullError when full."""
        if model not in self._heaps:
            raise KeyError(model)
        if self._queued >= self.limit:
            raise QueueFullError(self.limit)
        w = Waiting(key, model, priority, self._seq)
        self._seq += 1
        heapq.heappush(self._heaps[model], (priority, w.seq, w))
        self._queued += 1
        return w, self._fill(model)

    def release(self, upstream: str) -> list[Grant]:
        """A call on `upstream` ended: its slot goes to the best waiting call it can serve."""
        if self._busy[upstream] <= 0:
            raise ValueError(f"release of {upstream!r} without a call running there")
        self._busy[upstream] -= 1
        return self._fill_upstream(upstream)

    def cancel(self, call: Waiting) -> bool:
        """Drop a call still waiting (its client went away); False if it was granted."""
        if call.cancelled or call.granted:
            return False
        call.cancelled = True
        self._queued -= 1
        return True

    def set_health(self, upstream: str, healthy: bool) -> list[Grant]:
        """An unhealthy upstream gets no new calls; back to health, it fills its slots."""
        self._healthy[upstream] = healthy
        return self._fill_upstream(upstream) if healthy else []

    def rerank(self, priority: Callable[[Waiting], float]) -> None:
        """Give every waiting call a new priority (dynamic policies, once per round)."""
        for model, heap in self._heaps.items():
            fresh = []
            for _, seq, w in heap:
                if not w.cancelled:
                    w.priority = priority(w)
                    fresh.append((w.priority, seq, w))
            heapq.heapify(fresh)
            self._heaps[model] = fresh

    # Internals -------------------------------------------------------------------------------

    def _free(self, u: Upstream) -> int:
        return u.concurrency - self._busy[u.name] if self._healthy[u.name] else 0

    def _pop(self, model: str) -> Waiting | None:
        heap = self._heaps[model]
        while heap:
            _, _, w = heapq.heappop(heap)
            if not w.cancelled:
                self._queued -= 1
                w.granted = True
                return w
        return None

    def _fill(self, model: str) -> list[Grant]:
        grants: list[Grant] = []
        while True:
            free = [u for u in self.upstreams if model in u.models and self._free(u) > 0]
            if not free:
                return grants
            w = self._pop(model)
            if w is None:
                return grants
            best = max(free, key=self._free)
            self._busy[best.name] += 1
            grants.append(Grant(w, best.name))

    def _fill_upstream(self, name: str) -> list[Grant]:
        u = next(x for x in self.upstreams if x.name == name)
        grants: list[Grant] = []
        while self._free(u) > 0:
            # The best head among the models this upstream serves.
            heads = [(h[0][0], h[0][1], m) for m in u.models if (h := self._prune(m))]
            if not heads:
                break
            _, _, model = min(heads)
            w = self._pop(model)
            assert w is not None
            self._busy[name] += 1
            grants.append(Grant(w, name))
        return grants

    def _prune(self, model: str) -> list[tuple[float, int, Waiting]]:
        heap = self._heaps[model]
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
        return heap
