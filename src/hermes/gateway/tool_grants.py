"""Capacity-managed tool backends: at most `capacity` tool stages run on a backend at once;
the others wait for a grant, in the ranking policy's order (as LLM calls wait for an upstream
slot) or first come first served (`order: fifo`).

A client asks for a grant when it starts a tool stage (`stage_started`) and gives it back when
the stage ends (`stage_finished`), when its application moves on to another stage, or when the
application ends; a grant held past `hold_timeout_s` is revoked, so that a client that vanished
mid-stage does not keep the slot forever.

Pure: time is an argument, and `ask`, `release` and `rerank` return the grants they made for
the shell to announce (`tool_admission`).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from itertools import count
from typing import Literal

GrantState = Literal["waiting", "granted", "released", "cancelled", "revoked"]
_RECENT = 10_000  # ended grants kept for polling


@dataclass(frozen=True, slots=True)
class ToolLimit:
    name: str
    capacity: int
    order: Literal["fifo", "policy"] = "policy"
    hold_timeout_s: float = 600.0


@dataclass(slots=True, eq=False)
class ToolGrant:
    """One tool stage's claim on a slot of `backend`."""

    id: str
    app_id: Hashable
    backend: str
    stage: object  # what the grant was asked for (the shell's stage record), by identity
    priority: float
    asked_s: float
    seq: int
    tiebreak: float = 0.0  # among equal priorities, lower first (the application's arrival)
    granted_s: float | None = None
    ended_s: float | None = None
    state: GrantState = "waiting"

    @property
    def waited_s(self) -> float | None:
        return None if self.granted_s is None else self.granted_s - self.asked_s


@dataclass(slots=True)
class _Backend:
    limit: ToolLimit
    running: dict[str, ToolGrant] = field(default_factory=dict)
    heap: list[tuple[float, float, int, ToolGrant]] = field(default_factory=list)
    waiting: int = 0


class ToolGrants:
    def __init__(self, limits: Iterable[ToolLimit]) -> None:
        self._backends: dict[str, _Backend] = {}
        for limit in limits:
            if limit.name in self._backends:
                raise ValueError(f"tool {limit.name!r} is configured twice")
            if limit.capacity < 1:
                raise ValueError(f"tool {limit.name!r}: capacity must be >= 1")
            self._backends[limit.name] = _Backend(limit)
        self._grants: dict[str, ToolGrant] = {}  # waiting or granted, by id
        self._recent: dict[str, ToolGrant] = {}  # ended, the latest _RECENT, oldest first
        self._by_app: dict[Hashable, list[ToolGrant]] = {}
        self._seq = count()

    # Queries ---------------------------------------------------------------------------------

    def manages(self, backend: str) -> bool:
        return backend in self._backends

    def get(self, grant_id: str) -> ToolGrant | None:
        """A grant waiting, granted, or ended not long ago."""
        return self._grants.get(grant_id) or self._recent.get(grant_id)

    def of_app(self, app_id: Hashable) -> list[ToolGrant]:
        return list(self._by_app.get(app_id, ()))

    def running(self, backend: str) -> int:
        return len(self._backends[backend].running)

    def waiting(self, backend: str) -> int:
        return self._backends[backend].waiting

    def position(self, grant: ToolGrant) -> int | None:
        """How many waiting grants of its backend go before it (0: next); None if not waiting."""
        if grant.state != "waiting":
            return None
        b = self._backends[grant.backend]
        key = (*_order(b, grant.priority, grant.tiebreak), grant.seq)
        return sum(1 for p, t, s, g in b.heap if g.state == "waiting" and (p, t, s) < key)

    def backends(self) -> list[str]:
        return list(self._backends)

    # Inputs ----------------------------------------------------------------------------------

    def ask(
        self,
        app_id: Hashable,
        backend: str,
        stage: object,
        priority: float,
        now: float,
        tiebreak: float = 0.0,
    ) -> tuple[ToolGrant, list[ToolGrant]]:
        """A grant for `app_id`'s stage on `backend` (KeyError if not managed), and the grants
        made now (it, if a slot was free). Equal priorities go by `tiebreak`, lower first,
        as the simulator's tool pools order them."""
        if math.isnan(priority) or math.isnan(tiebreak):
            raise ValueError("priority and tiebreak must not be NaN")
        b = self._backends[backend]
        seq = next(self._seq)
        g = ToolGrant(f"g{seq}", app_id, backend, stage, priority, now, seq, tiebreak)
        heapq.heappush(b.heap, (*_order(b, priority, tiebreak), seq, g))
        b.waiting += 1
        self._grants[g.id] = g
        self._by_app.setdefault(app_id, []).append(g)
        return g, self._fill(b, now)

    def release(
        self, grant: ToolGrant, now: float, why: GrantState = "released"
    ) -> list[ToolGrant]:
        """The grant is over (`why`: released by its client, cancelled while waiting, revoked);
        the grants the freed slot made. Releasing an ended grant does nothing."""
        if grant.state not in ("waiting", "granted"):
            return []
        b = self._backends[grant.backend]
        was = grant.state
        grant.state = "cancelled" if was == "waiting" and why == "released" else why
        grant.ended_s = now
        self._forget(grant)
        if was == "waiting":
            b.waiting -= 1  # stays in the heap until it reaches the top
            return []
        del b.running[grant.id]
        return self._fill(b, now)

    def release_app(
        self, app_id: Hashable, now: float, keep: object | None = None
    ) -> list[ToolGrant]:
        """Give back every grant of `app_id` but those for stage `keep`; the grants made."""
        made: list[ToolGrant] = []
        for g in self.of_app(app_id):
            if keep is None or g.stage is not keep:
                made += self.release(g, now)
        return made

    def overdue(self, now: float) -> list[ToolGrant]:
        """Grants held longer than their backend's `hold_timeout_s`."""
        return [
            g
            for b in self._backends.values()
            for g in b.running.values()
            if g.granted_s is not None and now - g.granted_s > b.limit.hold_timeout_s
        ]

    def rerank(self, priority: Callable[[ToolGrant], float]) -> None:
        """New priorities for the waiting grants of policy-ordered backends (a ranking round)."""
        for b in self._backends.values():
            if b.limit.order != "policy" or not b.waiting:
                continue
            fresh = []
            for _, tie, seq, g in b.heap:
                if g.state == "waiting":
                    g.priority = priority(g)
                    fresh.append((g.priority, tie, seq, g))
            heapq.heapify(fresh)
            b.heap = fresh

    # Internals -------------------------------------------------------------------------------

    def _fill(self, b: _Backend, now: float) -> list[ToolGrant]:
        made = []
        while len(b.running) < b.limit.capacity and b.heap:
            *_, g = heapq.heappop(b.heap)
            if g.state != "waiting":
                continue  # cancelled while it waited
            g.state = "granted"
            g.granted_s = now
            b.waiting -= 1
            b.running[g.id] = g
            made.append(g)
        return made

    def _forget(self, grant: ToolGrant) -> None:
        self._grants.pop(grant.id, None)
        self._recent[grant.id] = grant
        if len(self._recent) > _RECENT:
            del self._recent[next(iter(self._recent))]
        mine = self._by_app.get(grant.app_id)
        if mine is not None:
            mine.remove(grant)
            if not mine:
                del self._by_app[grant.app_id]


def _order(b: _Backend, priority: float, tiebreak: float) -> tuple[float, float]:
    """A waiting grant's place: by (priority, tie-break) where the backend orders by policy,
    else by asking alone (first come, first served)."""
    return (priority, tiebreak) if b.limit.order == "policy" else (0.0, 0.0)
