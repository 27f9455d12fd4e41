"""Routers: which replica of a model takes the next request.

Each router sees a load snapshot per replica and returns an index; it never touches engines.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ReplicaLoad:
    outstanding: int  # requests running, waiting or swapped
    kv_used: float  # fraction of KV blocks in use, 0..1
    queued_tokens: int  # prompt tokens waiting to be prefilled


class Router(Protocol):
    def choose(self, replicas: Sequence[ReplicaLoad]) -> int: ...


class RoundRobin:
    def __init__(self) -> None:
        self._next = 0

    def choose(self, replicas: Sequence[ReplicaLoad]) -> int:
        i = self._next % len(replicas)
        self._next = i + 1
        return i


class LeastOutstanding:
    """Fewest requests in the engine; ties to the lowest index."""

    def choose(self, replicas: Sequence[ReplicaLoad]) -> int:
        return min(range(len(replicas)), key=lambda i: (replicas[i].outstanding, i))


class LeastKV:
    """Least KV memory in use, then fewest tokens queued: the replica with the most room."""

    def choose(self, replicas: Sequence[ReplicaLoad]) -> int:
        return min(
            range(len(replicas)),
            key=lambda i: (replicas[i].kv_used, replicas[i].queued_tokens, i),
        )


ROUTERS: dict[str, Callable[[], Router]] = {
    "round-robin": RoundRobin,
    "least-outstanding": LeastOutstanding,
    "least-kv": LeastKV,
}


def make_router(name: str) -> Router:
    try:
        return ROUTERS[name]()
    except KeyError:
        raise ValueError(f"unknown router {name!r}; known: {', '.join(ROUTERS)}") from None
