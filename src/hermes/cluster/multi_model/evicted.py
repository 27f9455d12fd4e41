"""Requests evicted from a multi-model instance and the KV they keep in CPU memory, within
the `cpu_kv_bytes` budget (docs/qlm.md, "Eviction and restore")."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from hermes.engine.request import EngineRequest


@dataclass(slots=True)
class EvictedRequest:
    req: EngineRequest
    model: str
    kv_bytes: float  # held in CPU memory (0: nothing computed, or dropped)


class EvictedStore:
    """Evicted requests by identity, oldest first, and the CPU memory their KV takes."""

    __slots__ = ("_entries", "budget_bytes", "used_bytes")

    def __init__(self, budget_bytes: float) -> None:
        self.budget_bytes = budget_bytes
        self.used_bytes = 0.0
        self._entries: dict[int, EvictedRequest] = {}

    def __contains__(self, req: EngineRequest) -> bool:
        return id(req) in self._entries

    def __bool__(self) -> bool:
        return bool(self._entries)

    @property
    def requests(self) -> tuple[EngineRequest, ...]:
        return tuple(e.req for e in self._entries.values())

    def get(self, req: EngineRequest) -> EvictedRequest | None:
        return self._entries.get(id(req))

    def keep(self, req: EngineRequest, model: str, kv_bytes: float) -> float:
        """Park `req` with its `kv_bytes` of KV if the budget has room; the bytes kept (0 when
        they are dropped, to be recomputed on restore)."""
        if kv_bytes > 0 and self.used_bytes + kv_bytes > self.budget_bytes:
            kv_bytes = 0.0
        self.used_bytes += kv_bytes
        self._entries[id(req)] = EvictedRequest(req, model, kv_bytes)
        return kv_bytes

    def take(self, req: EngineRequest) -> EvictedRequest:
        """Unpark `req` (it must be here); call `settle` after the last one of a batch."""
        entry = self._entries.pop(id(req))
        self.used_bytes -= entry.kv_bytes
        return entry

    def settle(self) -> None:
        if not self._entries:
            self.used_bytes = 0.0  # no float drift once the store is empty

    def drop(self, req: EngineRequest) -> bool:
        """Forget `req` and free its KV; False if it is not here."""
        entry = self._entries.pop(id(req), None)
        if entry is None:
            return False
        self.used_bytes = self.used_bytes - entry.kv_bytes if self._entries else 0.0
        return True


def check_evictable(reqs: tuple[EngineRequest, ...], queued: Collection[int], model: str) -> None:
    """Each request is queued or running on the active `model` (by identity), and named once."""
    seen: set[int] = set()
    for r in reqs:
        if id(r) not in queued:
            raise ValueError(
                f"ModelInstance.evict: request {r.id!r} is not queued or running on the "
                f"active model {model!r}"
            )
        if id(r) in seen:
            raise ValueError(f"ModelInstance.evict: request {r.id!r} listed twice")
        seen.add(id(r))


def check_restorable(reqs: tuple[EngineRequest, ...], store: EvictedStore, model: str) -> None:
    """Each request is evicted here, for the active `model`, and named once."""
    seen: set[int] = set()
    for r in reqs:
        entry = store.get(r)
        if entry is None:
            raise ValueError(f"ModelInstance.restore: request {r.id!r} is not evicted here")
        if entry.model != model:
            raise ValueError(
                f"ModelInstance.restore: request {r.id!r} is for {entry.model!r}; the "
                f"active model is {model!r}"
            )
        if id(r) in seen:
            raise ValueError(f"ModelInstance.restore: request {r.id!r} listed twice")
        seen.add(id(r))
