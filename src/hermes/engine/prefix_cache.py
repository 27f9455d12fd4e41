"""Automatic prefix caching over the paged pool (vLLM V1's), with a CPU tier and the
retention operations (pin, offload, prefetch) an application-aware scheduler may use.
docs/kv.md tells the design."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

from hermes.engine.kv_manager import PagedKV
from hermes.engine.kv_pool import BlockPool
from hermes.engine.prefix import block_hashes
from hermes.engine.request import EngineRequest


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
        "_give_way",
        "_hashes",
        "_held",
        "_rank",
        "cpu_lru",
        "cpu_tier_blocks",
        "evictions",
        "forgotten",
        "lru",
        "pins",
        "pins_broken",
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
        self.forgotten = 0  # blocks dropped by `forget`
        self.reloaded = 0  # blocks copied back from the CPU tier
        self.pins: dict[Hashable, list[int]] = {}  # owner -> cached blocks it keeps held
        self._give_way: dict[Hashable, float] = {}  # owner -> its pin's order of giving way
        # owner -> the scheduler's rank of the owner (lower runs first): a waiting request
        # ranked ahead of it may take its blocks; owners without one yield only to memory
        self._rank: dict[Hashable, float] = {}
        self.pins_broken = 0  # pins let go early because memory ran short

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

    # Retention: what a scheduler that knows an application will come back may do ----------

    def pin(
        self, owner: Hashable, hashes: list[int], give_way: float = 0.0, rank: float | None = None
    ) -> int:
        """Hold the cached blocks among `hashes` for `owner` (no eviction until `unpin`); the
        blocks pinned. When memory runs short, pins of higher `give_way` go first (e.g. the
        time the owner is expected back), the oldest first among equals. A pin with a `rank`
        (the scheduler's, lower first) also gives way to a waiting request ranked ahead of it
        (`break_a_pin_ranked_below`)."""
        refs, lru = self.refs, self.lru
        held = self.pins.setdefault(owner, [])
        self._give_way[owner] = max(give_way, self._give_way.get(owner, give_way))
        if rank is not None:
            self._rank[owner] = rank
        for h in hashes:
            n = refs.get(h)
            if n is None:
                continue
            if n == 0:
                del lru[h]
                self.gpu.allocate(1)
            refs[h] = n + 1
            held.append(h)
        if not held:  # nothing cached to hold
            del self.pins[owner], self._give_way[owner]
            self._rank.pop(owner, None)
        return len(held)

    def unpin(self, owner: Hashable) -> None:
        self._give_way.pop(owner, None)
        self._rank.pop(owner, None)
        held = self.pins.pop(owner, None)
        if not held:
            return
        refs, freed = self.refs, 0
        for h in reversed(held):  # the tail first, as a request's blocks go
            n = refs[h] - 1
            refs[h] = n
            if n == 0:
                self.lru[h] = None
                freed += 1
        self.gpu.release(freed)

    def break_a_pin(self) -> bool:
        """Memory is short: a pin gives way, the one of highest `give_way`, the oldest among
        equals (False when there is none)."""
        if not self.pins:
            return False
        way = self._give_way
        self.unpin(max(self.pins, key=lambda o: way.get(o, 0.0)))
        self.pins_broken += 1
        return True

    def break_a_pin_ranked_below(self, rank: float) -> bool:
        """A request of `rank` waits for memory: the pin of the owner ranked last among those
        ranked behind it gives way (False when there is none). The owner would be served
        after that request anyway, so its blocks do more good as the request's room."""
        behind = [(r, o) for o, r in self._rank.items() if r > rank]
        if not behind:
            return False
        self.unpin(max(behind, key=lambda ro: ro[0])[1])
        self.pins_broken += 1
        return True

    def offload(self, hashes: list[int]) -> int:
        """Move the free cached blocks among `hashes` to the CPU tier now, freeing their GPU
        copies for others; the blocks moved (none without a CPU tier)."""
        if self.cpu_tier_blocks <= 0:
            return 0
        moved = 0
        for h in hashes:
            if self.refs.get(h) == 0:
                del self.lru[h], self.refs[h]
                self._offload(h)
                moved += 1
        return moved

    def prefetch(self, hashes: list[int]) -> int:
        """Copy the blocks among `hashes` that only the CPU tier holds back to the GPU, as
        free cached blocks most recently used (the copy overlaps the engine's work); the
        blocks copied."""
        copied = 0
        for h in hashes:
            if h not in self.refs and h in self.cpu_lru:
                self.refs[h] = 0
                self.lru[h] = None
                copied += 1
        self.reloaded += copied
        self._trim()
        return copied

    def forget(self, hashes: list[int]) -> int:
        """Drop the free cached blocks among `hashes` (GPU and CPU tier) now: content that no
        request will read again goes before content that may, and keeps out of the CPU tier;
        the blocks dropped. Blocks that someone holds stay."""
        refs, lru, cpu = self.refs, self.lru, self.cpu_lru
        dropped = 0
        for h in hashes:
            n = refs.get(h)
            if n:
                continue  # held
            gone = h in cpu
            if gone:
                del cpu[h]
            if n == 0:
                del lru[h], refs[h]
                gone = True
            dropped += gone
        self.forgotten += dropped
        return dropped

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
        held += [h for pinned in self.pins.values() for h in pinned]
        for h, n in self.refs.items():
            assert n == held.count(h), f"refs of block {h} off"
