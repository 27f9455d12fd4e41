"""A from-scratch recount of a `BidirBlockPool`'s indexes and totals, for tests and debugging
(kept apart so that the pool's module holds only what runs per iteration)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hermes.engine.bidir_kv import BidirBlockPool

_RT, _BE = 0, 1
_NOBODY = -1


def check_bidir_pool(pool: BidirBlockPool) -> None:
    """AssertionError on any inconsistency."""
    n, bs = pool._num_blocks, pool._block_size
    live = set(pool._index.values())
    assert all(pool._index[pool._ids[o]] == o for o in live)
    assert all(pool._suspended[o] is False or pool._side[o] == _BE for o in live)
    assert all(pool._lost[o] == 0 or pool._suspended[o] for o in live)
    assert not live & set(pool._spare)
    in_use = 0
    avail_slots = [0, 0]
    reclaim_open = set()
    for b in range(n):
        rt, be = pool._used[_RT][b], pool._used[_BE][b]
        assert min(rt, be) >= 0, (b, rt, be)
        assert rt + be <= bs, (b, rt, be)  # the two ends never overlap: no slot held twice
        for s in (_RT, _BE):
            o = pool._owner[s][b]
            assert (o != _NOBODY) == (pool._used[s][b] > 0), (b, s)
            assert o == _NOBODY or (o in live and pool._side[o] == s), (b, s, o)
        in_use += rt + be
        rto, beo = pool._owner[_RT][b], pool._owner[_BE][b]
        free = bs - rt - be
        assert pool._is_empty[b] == (rto == _NOBODY and beo == _NOBODY), b
        key = _NOBODY
        if free and (rto == _NOBODY) != (beo == _NOBODY):
            sharer = _RT if rto == _NOBODY else _BE
            key = sharer * pool._stride + free
            avail_slots[sharer] += free
        assert pool._avail_key[b] == key, (b, key)
        if rto == _NOBODY and beo != _NOBODY and pool._suspended[beo]:
            reclaim_open.add(b)
    assert sorted(pool._empty) == [b for b in range(n) if pool._is_empty[b]]
    assert all(b in pool._avail[k] for b, k in enumerate(pool._avail_key) if k >= 0)
    assert sum(map(len, pool._avail)) == sum(k >= 0 for k in pool._avail_key)
    assert pool._avail_slots == avail_slots, (pool._avail_slots, avail_slots)
    assert pool._reclaim_open == reclaim_open
    assert pool._reclaim_count == [pool._used[_BE][b] * (b in reclaim_open) for b in range(n)]
    assert pool._reclaim_open_slots == sum(pool._reclaim_count)
    for o in live:
        s, blocks = pool._side[o], pool._blocks[o]
        assert len(set(blocks)) == len(blocks), o
        assert set(blocks) == {b for b in range(n) if pool._owner[s][b] == o}, o
        assert pool._held[o] == sum(pool._used[s][b] for b in blocks), o
    assert pool._used_slots == in_use == sum(pool._held[o] for o in live)
    assert pool.free_slots == sum(bs - rt - be for rt, be in zip(*pool._used, strict=True))
    assert pool.free_slots + pool.used_slots == n * bs
    assert pool._reclaimable == sum(pool._held[o] for o in live if pool._suspended[o])
