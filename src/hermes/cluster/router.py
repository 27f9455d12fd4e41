"""Routers: which replica of a model takes the next request.

Each router sees a load snapshot per replica, and what it may know of the request (its
application), and returns an index; it never touches engines.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ReplicaLoad:
    outstanding: int  # requests running, waiting or swapped
    kv_used: float  # fraction of KV blocks in use, 0..1
    queued_tokens: int  # prompt tokens waiting to be prefilled


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What a router may know of the request it places."""

    session: Hashable | None = None  # the application it belongs to; None: a plain request
    # Tokens of its prompt that replica i's prefix cache holds (None: unknown).
    cached: Callable[[int], int] | None = None


ANONYMOUS = RouteRequest()


class Router(Protocol):
    def choose(self, replicas: Sequence[ReplicaLoad], request: RouteRequest = ANONYMOUS) -> int: ...


class RoundRobin:
    def __init__(self) -> None:
        self._next = 0

    def choose(self, replicas: Sequence[ReplicaLoad], request: RouteRequest = ANONYMOUS) -> int:
        i = self._next % len(replicas)
        self._next = i + 1
        return i


class LeastOutstanding:
    """Fewest requests in the engine; ties to the lowest index."""

    def choose(self, replicas: Sequence[ReplicaLoad], request: RouteRequest = ANONYMOUS) -> int:
        return _least_outstanding(replicas)


def _least_outstanding(replicas: Sequence[ReplicaLoad]) -> int:
    return min(range(len(replicas)), key=lambda i: (replicas[i].outstanding, i))


class LeastKV:
    """Least KV memory in use, then fewest tokens queued: the replica with the most room."""

    def choose(self, replicas: Sequence[ReplicaLoad], request: RouteRequest = ANONYMOUS) -> int:
        return min(
            range(len(replicas)),
            key=lambda i: (replicas[i].kv_used, replicas[i].queued_tokens, i),
        )


# A sticky replica may have this many more outstanding requests than the least loaded one.
SESSION_MAX_EXCESS = 8


class SessionAffinity:
    """Session routing: an application's calls go to the replica that served it (where its
    KV and its cached prefix are), unless that replica has more than `max_excess` outstanding
    requests over the least loaded one; then the least loaded, which becomes its replica. An
    application's first call, and a request of none, go to the least loaded."""

    def __init__(self, max_excess: int = SESSION_MAX_EXCESS) -> None:
        if max_excess < 0:
            raise ValueError(f"max_excess must be >= 0, got {max_excess!r}")
        self.max_excess = max_excess
        self._home: dict[Hashable, int] = {}
        self.sticky = 0  # calls sent to their application's replica
        self.moved = 0  # calls of a known application sent elsewhere by the load guard

    def choose(self, replicas: Sequence[ReplicaLoad], request: RouteRequest = ANONYMOUS) -> int:
        least = _least_outstanding(replicas)
        session = request.session
        if session is None:
            return least
        home = self._home.get(session)
        if home is not None and home < len(replicas):
            if replicas[home].outstanding - replicas[least].outstanding <= self.max_excess:
                self.sticky += 1
                return home
            self.moved += 1
        self._home[session] = least
        return least

    def forget(self, session: Hashable) -> None:
        """The application is over: its replica need not be remembered."""
        self._home.pop(session, None)


# A replica with the longest cached prefix may have this many more outstanding requests than
# the least loaded one.
PREFIX_MAX_EXCESS = 8


class PrefixAffinity:
    """Prefix-aware routing (as llm-d's and SGLang's routers): among the replicas within
    `max_excess` outstanding requests of the least loaded, the one whose prefix cache holds
    the longest prefix of the request's prompt; ties, and requests with nothing cached, go to
    the least loaded."""

    def __init__(self, max_excess: int = PREFIX_MAX_EXCESS) -> None:
        if max_excess < 0:
            raise ValueError(f"max_excess must be >= 0, got {max_excess!r}")
        self.max_excess = max_excess

    def choose(self, replicas: Sequence[ReplicaLoad], request: RouteRequest = ANONYMOUS) -> int:
        least = _least_outstanding(replicas)
        cached = request.cached
        if cached is None:
            return least
        bound = replicas[least].outstanding + self.max_excess
        near = [i for i in range(len(replicas)) if replicas[i].outstanding <= bound]
        return max(near, key=lambda i: (cached(i), -replicas[i].outstanding, -i))


ROUTERS: dict[str, Callable[[], Router]] = {
    "round-robin": RoundRobin,
    "least-outstanding": LeastOutstanding,
    "least-kv": LeastKV,
    "session": SessionAffinity,
    "prefix": PrefixAffinity,
}


def make_router(name: str) -> Router:
    try:
        return ROUTERS[name]()
    except KeyError:
        raise ValueError(f"unknown router {name!r}; known: {', '.join(ROUTERS)}") from None
