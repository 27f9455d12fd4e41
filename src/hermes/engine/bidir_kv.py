"""Bidirectional KV-cache blocks for BROS (arXiv 2504.09590): real-time (RT) requests fill
blocks from the low end, best-effort (BE) ones from the high end, so one block can hold one of
each. A suspended BE owner keeps its slots until RT growth overwrites them (lazy
checkpointing); `grow` reports what it overwrote. Only counts are kept. Mechanism only: which
request to suspend is the engine's choice. The layout, the growth order and the indexes that
keep `fits` constant-time are described in docs/kv.md.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

from hermes.engine.bidir_kv_check import check_bidir_pool

_RT, _BE = 0, 1
_SIDE_NAMES = ("rt", "be")
_NOBODY = -1


@dataclass(frozen=True, slots=True)
class Growth:
    """What one `grow` did: slots added to the owner, and per suspended BE owner the slots it
    overwrote (which the shell must have checkpointed to CPU memory first)."""

    slots_added: int
    overwritten: dict[Hashable, int] = field(default_factory=dict)


class BidirBlockPool:
    __slots__ = (
        "_avail",
        "_avail_key",
        "_avail_slots",
        "_block_size",
        "_blocks",
        "_empty",
        "_held",
        "_ids",
        "_index",
        "_is_empty",
        "_lost",
        "_num_blocks",
        "_owner",
        "_reclaim_count",
        "_reclaim_open",
        "_reclaim_open_slots",
        "_reclaimable",
        "_side",
        "_spare",
        "_stride",
        "_suspended",
        "_used",
        "_used_slots",
    )

    def __init__(self, num_blocks: int, block_size: int = 16) -> None:
        if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 0:
            raise ValueError(
                f"BidirBlockPool: num_blocks must be an integer >= 0, got {num_blocks!r}"
            )
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(
                f"BidirBlockPool: block_size must be an integer >= 1, got {block_size!r}"
            )
        n = num_blocks
        self._num_blocks = n
        self._block_size = block_size
        # Per block, indexed [side][block]: the owner's index (or _NOBODY) and its slot count.
        self._owner = ([_NOBODY] * n, [_NOBODY] * n)
        self._used = ([0] * n, [0] * n)
        # Wholly free blocks; a stack, so the lowest-numbered block goes first at the start.
        self._empty = list(range(n - 1, -1, -1))
        self._is_empty = [True] * n
        # Step 2's index: a block occupied by one side only, with f free slots, sits in
        # _avail[s * _stride + f] where s is the side that may share it.
        self._stride = block_size + 1
        self._avail: list[set[int]] = [set() for _ in range(2 * self._stride)]
        self._avail_key = [_NOBODY] * n
        self._avail_slots = [0, 0]
        # Step 4's index: blocks of a suspended BE owner with an empty RT end.
        self._reclaim_open: set[int] = set()
        self._reclaim_count = [0] * n  # the block's share of _reclaim_open_slots
        self._reclaim_open_slots = 0
        # Per owner, by index; indices of released owners are reused.
        self._index: dict[Hashable, int] = {}
        self._ids: list[Hashable] = []
        self._side: list[int] = []
        self._held: list[int] = []
        self._blocks: list[list[int]] = []  # in the order taken; the last one grows first
        self._suspended: list[bool] = []
        self._lost: list[int] = []  # slots overwritten while suspended
        self._spare: list[int] = []
        self._used_slots = 0
        self._reclaimable = 0

    # Queries.

    @property
    def num_blocks(self) -> int:
        return self._num_blocks

    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def used_slots(self) -> int:
        """Slots in some owner's hands, suspended owners' included."""
        return self._used_slots

    @property
    def free_slots(self) -> int:
        """Slots in no owner's hands (reclaimable slots are not free)."""
        return self._num_blocks * self._block_size - self._used_slots

    @property
    def reclaimable_slots(self) -> int:
        """Resident slots of suspended BE owners (not every RT grow reaches all of them)."""
        return self._reclaimable

    def __contains__(self, owner: object) -> bool:
        return owner in self._index

    def held(self, owner: Hashable) -> int:
        """The owner's resident slots."""
        return self._held[self._known(owner)]

    def is_suspended(self, owner: Hashable) -> bool:
        return self._suspended[self._known(owner)]

    def owners(self, block: int) -> tuple[Hashable, ...]:
        """The block's owners, the RT one first."""
        self._check_block(block)
        return tuple(self._ids[o[block]] for o in self._owner if o[block] != _NOBODY)

    def block_usage(self, block: int) -> tuple[int, int]:
        """Slots in use in the block: (by its RT owner, by its BE owner)."""
        self._check_block(block)
        return self._used[_RT][block], self._used[_BE][block]

    # Growing.

    def fits(self, owner: Hashable, side: str, tokens_total: int, reclaim: bool = False) -> bool:
        return self.shortfall(owner, side, tokens_total, reclaim) == 0

    def shortfall(
        self, owner: Hashable, side: str, tokens_total: int, reclaim: bool = False
    ) -> int:
        """Slots missing for `grow(owner, side, tokens_total, reclaim)`; 0 when it fits.

        For a suspended owner, the answer holds once it is resumed (it cannot grow before):
        reclaiming is for RT only, so resuming does not change what a BE owner can get."""
        o, s, need = self._request(owner, side, tokens_total)
        if need == 0:
            return 0
        return max(0, need - self._available(o, s, reclaim))

    def grow(self, owner: Hashable, side: str, tokens_total: int, reclaim: bool = False) -> Growth:
        """Make `owner` hold `tokens_total` slots (see the module docstring for where)."""
        # The common case, kept short: a running owner with room left in its last block.
        o = self._index.get(owner, _NOBODY)
        if (
            o != _NOBODY
            and type(tokens_total) is int
            and side == _SIDE_NAMES[self._side[o]]
            and not self._suspended[o]
        ):
            need = tokens_total - self._held[o]
            blocks = self._blocks[o]
            if need > 0 and blocks:
                last = blocks[-1]
                free = self._block_size - self._used[_RT][last] - self._used[_BE][last]
                if need <= free:
                    self._used[self._side[o]][last] += need
                    self._held[o] += need
                    self._used_slots += need
                    # Only the block's step-2 entry can change: a block with a running
                    # owner on either side is not in the reclaim index.
                    key = self._avail_key[last]
                    if key != _NOBODY:
                        self._avail[key].discard(last)
                        self._avail_slots[key // self._stride] -= need
                        key = key - need if need < free else _NOBODY
                        if key != _NOBODY:
                            self._avail[key].add(last)
                        self._avail_key[last] = key
                    return Growth(need)
        return self._grow(owner, side, tokens_total, reclaim)

    def _grow(self, owner: Hashable, side: str, tokens_total: int, reclaim: bool) -> Growth:
        """Any grow, validated in full, one step after another."""
        o, s, need = self._request(owner, side, tokens_total)
        if o != _NOBODY and self._suspended[o]:
            raise ValueError(f"BidirBlockPool: owner {owner!r} is suspended; resume it first")
        bs = self._block_size
        used = self._used[s]
        if need:
            available = self._available(o, s, reclaim)
            if need > available:
                raise ValueError(
                    f"BidirBlockPool: cannot grow owner {owner!r} to tokens_total="
                    f"{tokens_total}: needs {need} more slots, {available} available"
                )
        if o == _NOBODY:
            o = self._register(owner, s)
        if not need:
            return Growth(0)
        added = need
        blocks = self._blocks[o]
        owner_of = self._owner[s]
        # 1. The free slots of the owner's last block.
        if blocks:
            last = blocks[-1]
            take = min(need, bs - self._used[_RT][last] - self._used[_BE][last])
            if take:
                used[last] += take
                need -= take
                self._refresh(last)
        # 2. Blocks of the other side only, most free slots first.
        free = bs - 1
        base = s * self._stride
        while need and self._avail_slots[s]:
            while not self._avail[base + free]:
                free -= 1
            b = next(iter(self._avail[base + free]))
            need -= self._take(b, o, s, min(need, free), owner_of, used, blocks)
        # 3. Wholly free blocks.
        while need and self._empty:
            b = self._empty.pop()
            self._is_empty[b] = False
            need -= self._take(b, o, s, min(need, bs), owner_of, used, blocks)
        # 4. Suspended BE slots (reached only for RT with reclaim: `_available` counted them).
        lost: dict[int, int] = {}
        if need:
            self._reclaim(o, need, lost)
        overwritten = sum(lost.values())
        self._held[o] += added
        self._used_slots += added - overwritten
        self._reclaimable -= overwritten
        return Growth(added, {self._ids[v]: k for v, k in lost.items()})

    # Life cycle.

    def release(self, owner: Hashable) -> None:
        """The request finished or was aborted: free all its slots at once."""
        o = self._known(owner)
        s = self._side[o]
        used, owner_of = self._used[s], self._owner[s]
        for b in self._blocks[o]:
            used[b] = 0
            owner_of[b] = _NOBODY
            self._refresh(b)
        self._used_slots -= self._held[o]
        if self._suspended[o]:
            self._reclaimable -= self._held[o]
        del self._index[owner]
        self._ids[o] = None
        self._held[o] = 0
        self._blocks[o] = []
        self._suspended[o] = False
        self._lost[o] = 0
        self._spare.append(o)

    def suspend(self, owner: Hashable) -> None:
        """A BE owner is preempted: its slots stay put but RT growth may now overwrite them."""
        o = self._known(owner)
        if self._side[o] != _BE:
            raise ValueError(f"BidirBlockPool: owner {owner!r} is rt; only be owners suspend")
        if self._suspended[o]:
            raise ValueError(f"BidirBlockPool: owner {owner!r} is already suspended")
        self._suspended[o] = True
        self._reclaimable += self._held[o]
        self._mark_reclaimable(o, True)

    def resume(self, owner: Hashable) -> int:
        """The suspended owner runs again; returns its slots overwritten meanwhile, which the
        caller brings back from CPU memory by growing the owner by as many."""
        o = self._known(owner)
        if not self._suspended[o]:
            raise ValueError(f"BidirBlockPool: owner {owner!r} is not suspended")
        self._suspended[o] = False
        self._reclaimable -= self._held[o]
        self._mark_reclaimable(o, False)
        lost, self._lost[o] = self._lost[o], 0
        return lost

    def check_invariants(self) -> None:
        """Recount everything from scratch; AssertionError on any inconsistency."""
        check_bidir_pool(self)

    # Internals.

    def _request(self, owner: Hashable, side: str, tokens_total: int) -> tuple[int, int, int]:
        """Validate a grow request: (owner index or _NOBODY, side, slots needed)."""
        if side == "rt":
            s = _RT
        elif side == "be":
            s = _BE
        else:
            raise ValueError(f"BidirBlockPool: side must be 'rt' or 'be', got {side!r}")
        if isinstance(tokens_total, bool) or not isinstance(tokens_total, int) or tokens_total < 0:
            raise ValueError(
                f"BidirBlockPool: tokens_total must be an integer >= 0, got {tokens_total!r}"
            )
        o = self._index.get(owner, _NOBODY)
        if o == _NOBODY:
            return o, s, tokens_total
        if self._side[o] != s:
            raise ValueError(
                f"BidirBlockPool: owner {owner!r} is {_SIDE_NAMES[self._side[o]]}, "
                f"got side={side!r}"
            )
        need = tokens_total - self._held[o]
        if need < 0:
            raise ValueError(
                f"BidirBlockPool: tokens_total={tokens_total} would shrink owner {owner!r}, "
                f"which holds {self._held[o]} slots"
            )
        return o, s, need

    def _known(self, owner: Hashable) -> int:
        o = self._index.get(owner, _NOBODY)
        if o == _NOBODY:
            raise ValueError(f"BidirBlockPool: unknown owner {owner!r}")
        return o

    def _check_block(self, block: int) -> None:
        n = self._num_blocks
        if isinstance(block, bool) or not isinstance(block, int) or not 0 <= block < n:
            raise ValueError(f"BidirBlockPool: block must be an integer in [0, {n}), got {block!r}")

    def _register(self, owner: Hashable, s: int) -> int:
        if self._spare:
            o = self._spare.pop()
            self._ids[o] = owner
            self._side[o] = s
        else:
            o = len(self._ids)
            self._ids.append(owner)
            self._side.append(s)
            self._held.append(0)
            self._blocks.append([])
            self._suspended.append(False)
            self._lost.append(0)
        self._index[owner] = o
        return o

    def _available(self, o: int, s: int, reclaim: bool) -> int:
        """Slots that steps 1-4 can give owner `o` (or a new owner) on side `s`."""
        bs = self._block_size
        n = self._avail_slots[s] + bs * len(self._empty)
        blocks = self._blocks[o] if o != _NOBODY else []
        last = blocks[-1] if blocks else _NOBODY
        if blocks:
            n += bs - self._used[_RT][last] - self._used[_BE][last]
        if reclaim and s == _RT:
            n += self._reclaim_open_slots
            # Own blocks with a suspended BE owner and no free slot in between; the last
            # block's free slots go to step 1 first. Blocks taken in step 2 from the reclaim
            # index are already counted in `_reclaim_open_slots`.
            rt_used, be_used, be_owner = self._used[_RT], self._used[_BE], self._owner[_BE]
            for b in blocks:
                v = be_owner[b]
                if (
                    v != _NOBODY
                    and self._suspended[v]
                    and (b == last or rt_used[b] + be_used[b] == bs)
                ):
                    n += be_used[b]
        return n

    def _take(
        self,
        b: int,
        o: int,
        s: int,
        take: int,
        owner_of: list[int],
        used: list[int],
        blocks: list[int],
    ) -> int:
        """Give `take` slots of block `b`, whose side `s` is empty, to owner `o`."""
        owner_of[b] = o
        used[b] = take
        blocks.append(b)
        self._refresh(b)
        return take

    def _reclaim(self, o: int, need: int, lost: dict[int, int]) -> None:
        """Step 4 for RT owner `o`: overwrite `need` suspended slots, own blocks first."""
        bs = self._block_size
        rt_used, be_used, be_owner = self._used[_RT], self._used[_BE], self._owner[_BE]
        blocks = self._blocks[o]
        for b in reversed(blocks):
            v = be_owner[b]
            if v != _NOBODY and self._suspended[v] and rt_used[b] + be_used[b] == bs:
                need -= self._overwrite(b, v, need, lost)
                if not need:
                    break
        while need:
            b = next(iter(self._reclaim_open))
            self._owner[_RT][b] = o
            blocks.append(b)
            need -= self._overwrite(b, be_owner[b], need, lost)
        for v in lost:
            self._held[v] -= lost[v]
            self._lost[v] += lost[v]
            self._blocks[v] = [b for b in self._blocks[v] if be_owner[b] == v]

    def _overwrite(self, b: int, v: int, need: int, lost: dict[int, int]) -> int:
        """The RT owner of block `b` extends its region over suspended owner `v`'s slots."""
        take = min(need, self._used[_BE][b])
        self._used[_BE][b] -= take
        self._used[_RT][b] += take
        if not self._used[_BE][b]:
            self._owner[_BE][b] = _NOBODY
        lost[v] = lost.get(v, 0) + take
        self._refresh(b)
        return take

    def _mark_reclaimable(self, o: int, on: bool) -> None:
        """Enter (or leave) BE owner `o`'s blocks with an empty RT end in the reclaim index;
        nothing else about a block changes when its owner is suspended or resumed."""
        rt_owner, be_used, counts = self._owner[_RT], self._used[_BE], self._reclaim_count
        for b in self._blocks[o]:
            if rt_owner[b] == _NOBODY:
                count = be_used[b] if on else 0
                if on:
                    self._reclaim_open.add(b)
                else:
                    self._reclaim_open.discard(b)
                self._reclaim_open_slots += count - counts[b]
                counts[b] = count

    def _refresh(self, b: int) -> None:
        """Bring block `b`'s entries in the indexes up to date with its owners and counts."""
        rto, beo = self._owner[_RT][b], self._owner[_BE][b]
        free = self._block_size - self._used[_RT][b] - self._used[_BE][b]
        key = _NOBODY
        if rto == _NOBODY:
            if beo == _NOBODY:
                if not self._is_empty[b]:
                    self._is_empty[b] = True
                    self._empty.append(b)
            elif free:
                key = free  # RT may share it
        elif beo == _NOBODY and free:
            key = self._stride + free  # BE may share it
        old = self._avail_key[b]
        if old != key:
            stride = self._stride
            if old != _NOBODY:
                self._avail[old].discard(b)
                self._avail_slots[old // stride] -= old % stride
            if key != _NOBODY:
                self._avail[key].add(b)
                self._avail_slots[key // stride] += free
            self._avail_key[b] = key
        reclaimable = rto == _NOBODY and beo != _NOBODY and self._suspended[beo]
        count = self._used[_BE][b] if reclaimable else 0
        old_count = self._reclaim_count[b]
        if count != old_count:
            if not old_count:
                self._reclaim_open.add(b)
            elif not count:
                self._reclaim_open.discard(b)
            self._reclaim_open_slots += count - old_count
            self._reclaim_count[b] = count
