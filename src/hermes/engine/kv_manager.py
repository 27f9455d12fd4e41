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

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Protocol

from hermes.engine.bidir_kv import BidirBlockPool
from hermes.engine.kv_pool import BlockPool
from hermes.engine.prefix import block_hashes
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

    def add_blocks(self, r: EngineRequest, blocks: int) -> None:
        """`blocks` more for `r` (a count the caller has checked against `gpu.free`)."""
        self.gpu.allocate(blocks)
        r.blocks += blocks

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
        """Undo `add_blocks`: a chunk planned in this iteration was taken back."""
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


class _EvictingPool(BlockPool):
    """A paged pool whose free blocks may hold cached content: handing blocks out evicts
    the oldest cached contents that no longer fit among the free blocks."""

    __slots__ = ("on_allocate",)

    def __init__(self, total: int, block_size: int) -> None:
        super().__init__(total, block_size)
        self.on_allocate: Callable[[], None] = lambda: None

    def allocate(self, blocks: int) -> None:
        super().allocate(blocks)
        self.on_allocate()


class PrefixCachedKV(PagedKV):
    """vLLM V1's automatic prefix caching over the paged pool (docs/kv.md).

    A request whose `content` says what its tokens are keeps its full blocks of that content
    in a cache keyed by chained block hashes (`engine.prefix`). A block stays cached after
    its last holder lets go, on a least-recently-used queue of free blocks; a request's tail
    blocks go first, so they are evicted first. Admission serves a request's leading cached
    blocks from the cache (`take_hits`), sharing blocks that others still hold.

    Counting: `gpu` counts physical blocks; a free block may still hold cached content (the
    LRU queue is an overlay on the free count, evicted oldest first when free blocks run
    short). `EngineRequest.blocks` counts a request's blocks, shared ones included.
    """

    __slots__ = (
        "_hashes",
        "_held",
        "cpu_lru",
        "cpu_tier_blocks",
        "evictions",
        "lru",
        "refs",
        "reloaded",
    )

    def __init__(
        self, gpu_blocks: int, cpu_blocks: int, block_size: int, cpu_tier_blocks: int = 0
    ) -> None:
        super().__init__(gpu_blocks, cpu_blocks, block_size)
        # A CPU tier: cached blocks evicted from the GPU are kept here (least recently used
        # out first) and loaded back on a hit, at the cost of a copy over PCIe.
        self.cpu_tier_blocks = cpu_tier_blocks
        self.cpu_lru: OrderedDict[int, None] = OrderedDict()
        self.gpu = gpu = _EvictingPool(gpu_blocks, block_size)
        gpu.on_allocate = self._trim
        self.refs: dict[int, int] = {}  # cached block hash -> holders (0: free, in `lru`)
        self.lru: OrderedDict[int, None] = OrderedDict()  # free cached blocks, oldest first
        self._hashes: dict[int, list[int]] = {}  # id(request) -> its content's block hashes
        self._held: dict[int, list[int]] = {}  # id(request) -> cached blocks it holds, in order
        self.evictions = 0
        self.reloaded = 0  # blocks copied back from the CPU tier

    def _trim(self) -> None:
        """Free blocks were handed out: the oldest cached contents among them are gone
        (a free block with no content left goes out first)."""
        lru, refs = self.lru, self.refs
        while len(lru) > self.gpu.free:
            h, _ = lru.popitem(last=False)
            del refs[h]
            self.evictions += 1
            self._offload(h)

    def _offload(self, h: int) -> None:
        if self.cpu_tier_blocks <= 0:
            return
        cpu = self.cpu_lru
        cpu[h] = None
        cpu.move_to_end(h)
        if len(cpu) > self.cpu_tier_blocks:
            cpu.popitem(last=False)

    def hashes(self, r: EngineRequest) -> list[int]:
        key = id(r)
        h = self._hashes.get(key)
        if h is None:
            limit = r.prompt_tokens + r.output_tokens
            h = self._hashes[key] = block_hashes(r.content, self.gpu.block_size, limit)
        return h

    def cached_prefix(self, r: EngineRequest) -> tuple[int, int]:
        """(blocks of `r`'s prompt the cache holds, of those how many need a free GPU block:
        free cached ones and ones in the CPU tier) for a request about to be admitted; at
        least one prompt token is always left to compute."""
        if r.content is None or r.num_computed or r.blocks:
            return 0, 0
        cap = (r.prompt_tokens - 1) // self.gpu.block_size
        hits = free = 0
        refs, cpu = self.refs, self.cpu_lru
        for h in self.hashes(r)[:cap]:
            n = refs.get(h)
            if n is None and h not in cpu:
                break
            hits += 1
            free += not n
        return hits, free

    def cached_blocks(self, hashes: list[int]) -> int:
        """How many of the leading `hashes` this cache holds (on the GPU or the CPU tier):
        what a router weighs, without touching anything."""
        refs, cpu = self.refs, self.cpu_lru
        k = 0
        for h in hashes:
            if h not in refs and h not in cpu:
                break
            k += 1
        return k

    def take_hits(self, r: EngineRequest, hits: int) -> int:
        """`r` takes its first `hits` cached blocks (from `cached_prefix`); the blocks loaded
        back from the CPU tier."""
        refs, lru = self.refs, self.lru
        held = self._held.setdefault(id(r), [])
        loaded = 0
        for h in self.hashes(r)[:hits]:
            n = refs.get(h)
            if n is None:  # in the CPU tier: copied back into a fresh GPU block
                if h in self.cpu_lru:  # (an eviction this very loop made may have pushed
                    self.cpu_lru.move_to_end(h)  # it out; the copy is made all the same)
                self.gpu.allocate(1)
                loaded += 1
                n = 0
            elif n == 0:
                del lru[h]  # before the allocation, which must not evict it
                self.gpu.allocate(1)
            refs[h] = n + 1
            held.append(h)
        r.blocks += hits
        r.num_computed = hits * self.gpu.block_size
        self.reloaded += loaded
        return loaded

    def register(self, r: EngineRequest, tokens: int) -> None:
        """`r`'s blocks up to `tokens` tokens are (being) computed: its full blocks of shared
        content join the cache, where no other request put the same content first."""
        hashes = self.hashes(r)
        held = self._held.setdefault(id(r), [])
        upto = min(len(hashes), tokens // self.gpu.block_size)
        refs = self.refs
        for j in range(len(held), upto):
            h = hashes[j]
            if h in refs:  # computed twice at once: this copy stays the request's own
                break
            refs[h] = 1
            held.append(h)

    def release(self, r: EngineRequest) -> None:
        held = self._held.pop(id(r), None)
        self._hashes.pop(id(r), None)
        if not held:
            super().release(r)
            return
        refs, lru = self.refs, self.lru
        freed = r.blocks - len(held)  # the request's own blocks
        for h in reversed(held):  # the tail first, so that it is evicted first
            n = refs[h] - 1
            refs[h] = n
            if n == 0:
                lru[h] = None
                freed += 1
        self.gpu.release(freed)
        r.blocks = 0

    def swap_out(self, r: EngineRequest) -> bool:
        raise ValueError("prefix caching preempts by recompute, as vLLM V1 does")

    def check(self, running: list[EngineRequest]) -> None:
        gpu = self.gpu
        assert 0 <= gpu.free <= gpu.total, "GPU blocks out of range"
        own = sum(r.blocks - len(self._held.get(id(r), ())) for r in running)
        shared = sum(1 for n in self.refs.values() if n > 0)
        assert gpu.used == own + shared, "GPU blocks leaked"
        assert all(self.refs[h] == 0 for h in self.lru), "a held block is on the free queue"
        assert len(self.cpu_lru) <= max(0, self.cpu_tier_blocks), "CPU tier over capacity"
        assert sum(1 for n in self.refs.values() if n == 0) == len(self.lru), "lost free blocks"
        held = [h for r in running for h in self._held.get(id(r), ())]
        for h, n in self.refs.items():
            assert n == held.count(h), f"refs of block {h} off"
