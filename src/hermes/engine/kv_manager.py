"""The KV-manager seam: where an engine's requests keep their KV cache.

An engine asks a manager whether a request's KV can grow to a number of tokens, grows it,
and releases it; what sits behind that is the manager's business:
- `PagedKV`: vLLM's paged pool, whole blocks per request (`EngineRequest.blocks`), with CPU
  swap blocks for requests preempted by swap;
- `BidirKV`: BROS's bidirectional blocks (`bidir_kv.BidirBlockPool`), where real-time
  requests fill blocks from one end and best-effort ones from the other, and a suspended
  best-effort request keeps its KV in place until real-time growth overwrites it.
Both answer the same slot-level questions (`fits`, `grow`, `release`, `resident`), so an
engine's batch selection is written once; `lazy_suspend` says whether a preempted request's
KV can stay on the GPU (bidirectional) or must leave it whole (paged).
Mechanism only: which request gives way is the engine's (its policy's) choice.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Protocol

from hermes.engine.bidir_kv import BidirBlockPool
from hermes.engine.kv_pool import BlockPool
from hermes.engine.request import EngineRequest


class KVManager(Protocol):
    lazy_suspend: bool  # a suspended request's KV may stay on the GPU

    @property
    def block_size(self) -> int: ...

    @property
    def total_blocks(self) -> int: ...

    @property
    def used_blocks(self) -> int: ...

    @property
    def free_slots(self) -> int: ...

    @property
    def used_fraction(self) -> float: ...

    def blocks_for(self, tokens: int) -> int: ...

    def holds(self, r: EngineRequest) -> bool: ...

    def resident(self, r: EngineRequest) -> int: ...

    def slots_needed(self, r: EngineRequest, tokens: int) -> int: ...

    def fits(self, r: EngineRequest, tokens: int, reclaim: bool = False) -> bool: ...

    def grow(self, r: EngineRequest, tokens: int, reclaim: bool = False) -> dict[Hashable, int]:
        """Room for `tokens` tokens of `r`; per suspended owner, the slots overwritten."""
        ...

    def release(self, r: EngineRequest) -> None: ...

    def suspend(self, r: EngineRequest) -> None: ...

    def resume(self, r: EngineRequest) -> int: ...

    def check(self, running: list[EngineRequest]) -> None: ...


class PagedKV:
    """Whole blocks per request on the GPU; `cpu` holds swapped-out requests' blocks."""

    __slots__ = ("cpu", "gpu")
    lazy_suspend = False

    def __init__(self, gpu_blocks: int, cpu_blocks: int, block_size: int) -> None:
        self.gpu = BlockPool(gpu_blocks, block_size)
        self.cpu = BlockPool(cpu_blocks, block_size)

    @property
    def block_size(self) -> int:
        return self.gpu.block_size

    @property
    def total_blocks(self) -> int:
        return self.gpu.total

    @property
    def used_blocks(self) -> int:
        return self.gpu.used

    @property
    def free_slots(self) -> int:
        return self.gpu.free * self.gpu.block_size

    @property
    def used_fraction(self) -> float:
        return self.gpu.used / self.gpu.total if self.gpu.total else 1.0

    def blocks_for(self, tokens: int) -> int:
        return self.gpu.blocks_for(tokens)

    def need(self, r: EngineRequest, tokens: int) -> int:
        """New blocks `r` needs to hold `tokens` tokens."""
        return self.gpu.blocks_for(tokens) - r.blocks

    def holds(self, r: EngineRequest) -> bool:
        return r.blocks > 0

    def resident(self, r: EngineRequest) -> int:
        return r.blocks * self.gpu.block_size

    def slots_needed(self, r: EngineRequest, tokens: int) -> int:
        return self.need(r, tokens) * self.gpu.block_size

    def fits(self, r: EngineRequest, tokens: int, reclaim: bool = False) -> bool:
        return self.need(r, tokens) <= self.gpu.free

    def grow(self, r: EngineRequest, tokens: int, reclaim: bool = False) -> dict[Hashable, int]:
        need = self.need(r, tokens)
        if need > 0:
            self.gpu.allocate(need)
            r.blocks += need
        return {}

    def grow_all(self, requests: list[EngineRequest]) -> None:
        """Each of `requests` gets the blocks its computed tokens now need (a decode run's
        end: the run was planned so that they fit)."""
        bs = self.gpu.block_size
        total = 0
        for r in requests:
            new = -(-r.num_computed // bs) - r.blocks
            r.blocks += new
            total += new
        self.gpu.allocate(total)

    def give_back(self, r: EngineRequest, blocks: int) -> None:
        """Blocks handed to `r` for a chunk planned in this iteration go back: it was undone."""
        self.gpu.release(blocks)
        r.blocks -= blocks

    def release(self, r: EngineRequest) -> None:
        self.gpu.release(r.blocks)
        r.blocks = 0

    def release_swapped(self, r: EngineRequest) -> None:
        self.cpu.release(r.blocks)
        r.blocks = 0

    def swap_out(self, r: EngineRequest) -> bool:
        """Move `r`'s blocks to CPU memory if they fit there (True); else they are freed."""
        blocks = r.blocks
        self.gpu.release(blocks)
        if self.cpu.fits(blocks):
            self.cpu.allocate(blocks)
            return True
        r.blocks = 0
        return False

    def swap_in(self, r: EngineRequest, tokens: int) -> int:
        """Bring swapped-out `r` back with room for `tokens`; the blocks copied back."""
        copied = r.blocks
        self.cpu.release(copied)
        total = self.gpu.blocks_for(tokens)
        self.gpu.allocate(total)
        r.blocks = total
        return copied

    def suspend(self, r: EngineRequest) -> None:
        raise ValueError("PagedKV: a paged request cannot stay suspended on the GPU")

    def resume(self, r: EngineRequest) -> int:
        raise ValueError("PagedKV: a paged request cannot stay suspended on the GPU")

    def check(self, running: list[EngineRequest]) -> None:
        assert 0 <= self.gpu.free <= self.gpu.total, "GPU blocks out of range"
        assert self.gpu.used == sum(r.blocks for r in running), "GPU blocks leaked"


class BidirKV:
    """BROS's bidirectional blocks: real-time requests on the low side, best-effort on the
    high side; counted in slots, so `EngineRequest.blocks` stays 0."""

    __slots__ = ("pool",)
    lazy_suspend = True

    def __init__(self, gpu_blocks: int, block_size: int) -> None:
        self.pool = BidirBlockPool(gpu_blocks, block_size)

    @staticmethod
    def _side(r: EngineRequest) -> str:
        return "rt" if r.slo_class == "rt" else "be"

    @property
    def block_size(self) -> int:
        return self.pool.block_size

    @property
    def total_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def used_blocks(self) -> int:
        return self.pool.used_slots // self.pool.block_size

    @property
    def free_slots(self) -> int:
        return self.pool.free_slots

    @property
    def used_fraction(self) -> float:
        total = self.pool.num_blocks * self.pool.block_size
        return self.pool.used_slots / total if total else 1.0

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.pool.block_size)

    def holds(self, r: EngineRequest) -> bool:
        return r in self.pool

    def resident(self, r: EngineRequest) -> int:
        return self.pool.held(r) if r in self.pool else 0

    def slots_needed(self, r: EngineRequest, tokens: int) -> int:
        return max(0, tokens - self.resident(r))

    def fits(self, r: EngineRequest, tokens: int, reclaim: bool = False) -> bool:
        return self.pool.fits(r, self._side(r), tokens, reclaim)

    def grow(self, r: EngineRequest, tokens: int, reclaim: bool = False) -> dict[Hashable, int]:
        return self.pool.grow(r, self._side(r), tokens, reclaim).overwritten

    def release(self, r: EngineRequest) -> None:
        if r in self.pool:
            self.pool.release(r)
        r.blocks = 0

    def suspend(self, r: EngineRequest) -> None:
        self.pool.suspend(r)

    def resume(self, r: EngineRequest) -> int:
        return self.pool.resume(r)

    def check(self, running: list[EngineRequest]) -> None:
        self.pool.check_invariants()


class CpuSlots:
    """KV slots of preempted requests kept in CPU memory, bounded, per request."""

    __slots__ = ("_held", "total", "used")

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._held: dict[int, int] = {}  # id(request) -> slots

    def room(self, slots: int) -> bool:
        return self.used + slots <= self.total

    def put(self, r: EngineRequest, slots: int) -> None:
        key = id(r)
        self._held[key] = self._held.get(key, 0) + slots
        self.used += slots

    def held(self, r: EngineRequest) -> int:
        return self._held.get(id(r), 0)

    def drop(self, r: EngineRequest) -> int:
        """Forget `r`'s slots (restored or discarded); how many there were."""
        slots = self._held.pop(id(r), 0)
        self.used -= slots
        return slots

    def check(self) -> None:
        assert 0 <= self.used <= self.total, "CPU memory out of range"
        assert self.used == sum(self._held.values()), "CPU slots leaked"
