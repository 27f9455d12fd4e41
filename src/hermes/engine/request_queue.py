"""Queues of requests waiting for an engine: first come first served, by priority, and by
SLO class (real-time apart from best-effort). Engines hold their waiting requests in one of
these instead of lists of their own; membership is by identity (requests compare by id).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from hermes.engine.request import EngineRequest


def priority_order(r: EngineRequest) -> tuple[float, float, int]:
    """Lower priority value first, then the earlier arrival, then the earlier submission."""
    return (r.priority, r.arrival_s, r.seq)


def _index(items: list[EngineRequest] | deque[EngineRequest], req: EngineRequest) -> int | None:
    return next((k for k, r in enumerate(items) if r is req), None)


def remove_request(items: list[EngineRequest], req: EngineRequest) -> bool:
    """Remove `req` (by identity: requests compare by id), keeping the order; False if it
    is not there."""
    k = _index(items, req)
    if k is None:
        return False
    del items[k]
    return True


class FcfsQueue:
    """Arrival order; a request that lost its place (its KV dropped) may go back in front."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: deque[EngineRequest] = deque()

    def push(self, req: EngineRequest) -> None:
        self._items.append(req)

    def push_front(self, req: EngineRequest) -> None:
        self._items.appendleft(req)

    def head(self) -> EngineRequest:
        return self._items[0]

    def pop(self) -> EngineRequest:
        return self._items.popleft()

    def remove(self, req: EngineRequest) -> bool:
        k = _index(self._items, req)
        if k is None:
            return False
        del self._items[k]
        return True

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[EngineRequest]:
        return iter(self._items)


class PriorityQueue:
    """`priority_order`, sorted lazily: pushes and re-ranks mark it, the next read sorts."""

    __slots__ = ("_items", "_sorted")

    def __init__(self) -> None:
        self._items: list[EngineRequest] = []
        self._sorted = True

    def push(self, req: EngineRequest) -> None:
        self._items.append(req)
        self._sorted = False

    def reordered(self) -> None:
        """A queued request's priority changed."""
        self._sorted = False

    def ordered(self) -> list[EngineRequest]:
        """The queue in order (the live list: read it, then `drop_head`)."""
        if not self._sorted:
            self._items.sort(key=priority_order)
            self._sorted = True
        return self._items

    def head(self) -> EngineRequest:
        return self.ordered()[0]

    def pop(self) -> EngineRequest:
        """Take the head off."""
        return self.ordered().pop(0)

    def push_front(self, req: EngineRequest) -> None:
        """A request that lost its place: its priority, not the call, decides where it goes."""
        self.push(req)

    @property
    def items(self) -> list[EngineRequest]:
        """The queued requests in no particular order (cheap: for counts and sums)."""
        return self._items

    def drop_head(self, count: int) -> None:
        """The first `count` requests of `ordered()` left the queue."""
        del self._items[:count]

    def remove(self, req: EngineRequest) -> bool:
        k = _index(self._items, req)
        if k is None:
            return False
        del self._items[k]  # removal keeps the order
        return True

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[EngineRequest]:
        return iter(self._items)


class ClassQueue:
    """Real-time requests (their order is decided per iteration, by slack) apart from
    best-effort ones (first come first served, or by priority when `be_by_priority`)."""

    __slots__ = ("be", "rt")

    def __init__(self, be_by_priority: bool = False) -> None:
        self.rt: list[EngineRequest] = []
        self.be: FcfsQueue | PriorityQueue = PriorityQueue() if be_by_priority else FcfsQueue()

    def push(self, req: EngineRequest) -> None:
        if req.slo_class == "rt":
            self.rt.append(req)
        else:
            self.be.push(req)

    def remove(self, req: EngineRequest) -> bool:
        k = _index(self.rt, req)
        if k is not None:
            del self.rt[k]
            return True
        return self.be.remove(req)

    def __len__(self) -> int:
        return len(self.rt) + len(self.be)

    def __iter__(self) -> Iterator[EngineRequest]:
        yield from self.rt
        yield from self.be
