"""BROS's bidirectional KV blocks: placement order, sharing, lazy checkpointing, and the
agreement of `fits`, `shortfall` and `grow`, under random operation sequences."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Hashable
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from hermes.engine.bidir_kv import BidirBlockPool, Growth

# Hashable ids of mixed kinds: the pool must not care. Each has a usual side, so that the
# random sequences build pools of both kinds rather than mostly side mismatches.
IDS: tuple[Hashable, ...] = (0, 1, 2, "a", "b", ("c", 3))
USUAL_SIDE: dict[Hashable, str] = {0: "rt", "a": "rt", 1: "be", 2: "be", "b": "be", ("c", 3): "be"}
SIDES = ("rt", "be")


def snapshot(pool: BidirBlockPool) -> tuple[object, ...]:
    """Everything the public API shows, to check that a refused grow changes nothing."""
    blocks = tuple((pool.owners(b), pool.block_usage(b)) for b in range(pool.num_blocks))
    owners = tuple(
        (o, pool.held(o), pool.is_suspended(o)) for o in IDS if o in pool
    )  # fmt: skip
    return blocks, owners, pool.free_slots, pool.used_slots, pool.reclaimable_slots


def shareable(pool: BidirBlockPool, side: str) -> int:
    """Free slots in blocks occupied by the other side only: step 2's supply."""
    s = SIDES.index(side)
    total = 0
    for b in range(pool.num_blocks):
        usage = pool.block_usage(b)
        if usage[s] == 0 and usage[1 - s] > 0:
            total += pool.block_size - sum(usage)
    return total


def empty_blocks(pool: BidirBlockPool) -> int:
    return sum(pool.owners(b) == () for b in range(pool.num_blocks))


def open_suspended(pool: BidirBlockPool) -> int:
    """Suspended BE slots in blocks with an empty RT end: step 4's supply for anyone."""
    total = 0
    for b in range(pool.num_blocks):
        rt, be = pool.block_usage(b)
        if rt == 0 and be > 0 and pool.is_suspended(pool.owners(b)[0]):
            total += be
    return total


def available_bounds(
    pool: BidirBlockPool, owner: Hashable, side: str, reclaim: bool
) -> tuple[int, int]:
    """What steps 1-4 can supply, recounted by a plain scan: exact for a new owner, and
    bounded by the owner's own blocks (step 1 uses only the last of them) otherwise."""
    low = shareable(pool, side) + pool.block_size * empty_blocks(pool)
    if side == "rt" and reclaim:
        low += open_suspended(pool)
    high = low
    if owner in pool:
        s = SIDES.index(side)
        for b in range(pool.num_blocks):
            owners, usage = pool.owners(b), pool.block_usage(b)
            if usage[s] and owners[0 if s == 0 else -1] == owner:
                high += pool.block_size - sum(usage)
                if side == "rt" and reclaim and usage[1] and pool.is_suspended(owners[1]):
                    high += usage[1]
    return low, high


class PoolMachine(RuleBasedStateMachine):
    """Random grows, releases, suspensions and resumptions against a small model."""

    pool: BidirBlockPool

    @initialize(num_blocks=st.integers(0, 7), block_size=st.integers(1, 5))
    def start(self, num_blocks: int, block_size: int) -> None:
        self.pool = BidirBlockPool(num_blocks, block_size)
        self.side: dict[Hashable, str] = {}
        self.lost: dict[Hashable, int] = {}  # overwritten while suspended, by the model
        self.most_victims = 0  # the most suspended owners one growth overwrote

    @invariant()
    def consistent(self) -> None:
        self.pool.check_invariants()
        for b in range(self.pool.num_blocks):
            owners = self.pool.owners(b)
            rt, be = self.pool.block_usage(b)
            assert len(owners) == (rt > 0) + (be > 0) <= 2
            assert rt + be <= self.pool.block_size

    @rule(
        owner=st.sampled_from(IDS),
        extra=st.integers(0, 14),
        reclaim=st.booleans(),
        mismatch=st.integers(0, 7),
    )
    def grow(self, owner: Hashable, extra: int, reclaim: bool, mismatch: int) -> None:
        """A known owner grows on its side and a new one on its usual side, except one time
        in eight, when the other side is asked for."""
        side = self.side.get(owner, USUAL_SIDE[owner])
        if not mismatch:
            side = SIDES[1 - SIDES.index(side)]
        self._try_grow(owner, side, extra, reclaim)

    @rule(
        owner=st.sampled_from([o for o in IDS if USUAL_SIDE[o] == "rt"]), extra=st.integers(1, 14)
    )
    def rt_reclaims(self, owner: Hashable, extra: int) -> None:
        self._try_grow(owner, "rt", extra, reclaim=True)

    def _try_grow(self, owner: Hashable, side: str, extra: int, reclaim: bool) -> None:
        pool = self.pool
        if owner in pool and self.side[owner] != side:
            held = pool.held(owner)
            for call in (pool.fits, pool.shortfall, pool.grow):
                with pytest.raises(ValueError, match=re.escape(f"owner {owner!r} is ")):
                    call(owner, side, held + extra, reclaim)
            return
        if owner in pool and pool.is_suspended(owner):
            with pytest.raises(ValueError, match=re.escape(f"{owner!r} is suspended; resume")):
                pool.grow(owner, side, pool.held(owner) + extra, reclaim)
            return
        held = pool.held(owner) if owner in pool else 0
        total = held + extra
        short = pool.shortfall(owner, side, total, reclaim)
        assert pool.fits(owner, side, total, reclaim) == (short == 0)
        assert 0 <= short <= extra
        low, high = available_bounds(pool, owner, side, reclaim)
        if short:
            assert low <= extra - short <= high
            assert owner in pool or extra - short == low
            before = snapshot(pool)
            with pytest.raises(ValueError, match=f"needs {extra} more slots"):
                pool.grow(owner, side, total, reclaim)
            assert snapshot(pool) == before
            # The shortfall is exact: one slot less than asked minus it fits, one more not.
            assert pool.fits(owner, side, total - short, reclaim)
            assert not pool.fits(owner, side, total - short + 1, reclaim)
            total -= short
        elif owner not in pool:
            assert extra <= low
        self._grow_checked(owner, side, total, reclaim)

    def _grow_checked(self, owner: Hashable, side: str, total: int, reclaim: bool) -> None:
        pool = self.pool
        held = pool.held(owner) if owner in pool else 0
        suspended = {o: pool.held(o) for o in IDS if o in pool and pool.is_suspended(o)}
        used, empty = pool.used_slots, empty_blocks(pool)
        usage = [pool.block_usage(b) for b in range(pool.num_blocks)]
        growth = pool.grow(owner, side, total, reclaim)
        self.side[owner] = side
        assert isinstance(growth, Growth)
        assert growth.slots_added == total - held
        assert pool.held(owner) == total
        assert set(growth.overwritten) <= set(suspended)
        assert all(k > 0 for k in growth.overwritten.values())
        if side == "be" or not reclaim:
            assert growth.overwritten == {}
        for o, h in suspended.items():
            assert pool.held(o) == h - growth.overwritten.get(o, 0)
            self.lost[o] += growth.overwritten.get(o, 0)
        overwritten = sum(growth.overwritten.values())
        self.most_victims = max(self.most_victims, len(growth.overwritten))
        assert pool.used_slots == used + growth.slots_added - overwritten
        # Placement order: a wholly free block only once no shareable slot is left, and a
        # suspended slot only once no free slot within reach is left.
        if empty_blocks(pool) < empty:
            assert shareable(pool, side) == 0
        if overwritten:
            assert shareable(pool, side) == 0
            assert empty_blocks(pool) == 0
        # The RT region grows upward from the low end without gaps, so it overwrites BE
        # slots only in a block with no free slot left.
        for b, (rt, be) in enumerate(usage):
            if pool.block_usage(b)[1] < be:
                assert pool.block_usage(b)[0] > rt
                assert sum(pool.block_usage(b)) == pool.block_size

    @rule(owner=st.sampled_from(IDS))
    def release(self, owner: Hashable) -> None:
        pool = self.pool
        if owner not in pool:
            with pytest.raises(ValueError, match="unknown owner"):
                pool.release(owner)
            return
        free, held = pool.free_slots, pool.held(owner)
        pool.release(owner)
        assert owner not in pool
        assert pool.free_slots == free + held
        self.side.pop(owner)
        self.lost.pop(owner, None)

    @rule(owner=st.sampled_from(IDS))
    def suspend(self, owner: Hashable) -> None:
        pool = self.pool
        if owner not in pool or self.side[owner] == "rt" or pool.is_suspended(owner):
            with pytest.raises(ValueError, match=r"unknown|is rt|already suspended"):
                pool.suspend(owner)
            return
        before = (pool.free_slots, pool.held(owner), pool.reclaimable_slots)
        pool.suspend(owner)
        assert pool.is_suspended(owner)
        # Lazy: nothing moves, the slots only become reclaimable.
        assert (pool.free_slots, pool.held(owner)) == before[:2]
        assert pool.reclaimable_slots == before[2] + before[1]
        self.lost[owner] = 0

    @rule(owner=st.sampled_from(IDS), swap_in=st.booleans())
    def resume(self, owner: Hashable, swap_in: bool) -> None:
        pool = self.pool
        if owner not in pool or not pool.is_suspended(owner):
            with pytest.raises(ValueError, match=r"unknown|not suspended"):
                pool.resume(owner)
            return
        held, reclaimable = pool.held(owner), pool.reclaimable_slots
        # Asked while suspended, `shortfall` answers for the owner once resumed.
        asked = [pool.shortfall(owner, "be", held + k) for k in range(3 * pool.block_size)]
        returned = pool.resume(owner)
        assert asked == [pool.shortfall(owner, "be", held + k) for k in range(len(asked))]
        assert returned == self.lost.pop(owner)
        assert not pool.is_suspended(owner)
        assert pool.held(owner) == held
        assert pool.reclaimable_slots == reclaimable - held
        if swap_in and pool.fits(owner, "be", held + returned):
            self._grow_checked(owner, "be", held + returned, reclaim=False)


TestPoolMachine = PoolMachine.TestCase
TestPoolMachine.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)


@pytest.mark.parametrize(("seed", "num_blocks", "block_size"), [(1, 24, 4), (2, 40, 8), (3, 9, 16)])
def test_long_random_sequences(seed: int, num_blocks: int, block_size: int) -> None:
    """The machine's checked rules, for longer runs on larger pools than hypothesis explores,
    weighted towards reclaiming so that one growth overwrites several suspended owners."""
    rng = random.Random(seed)
    machine = PoolMachine()
    machine.start(num_blocks, block_size)
    resumed_lost = 0
    for _ in range(3000):
        owner = rng.choice(IDS)
        op = rng.random()
        if op < 0.45:
            machine.grow(
                owner, rng.randint(0, 2 * block_size), rng.random() < 0.5, rng.randrange(8)
            )
        elif op < 0.65:
            machine.rt_reclaims(rng.choice((0, "a")), rng.randint(1, 3 * block_size))
        elif op < 0.75:
            machine.release(owner)
        elif op < 0.88:
            machine.suspend(owner)
        else:
            resumed_lost += machine.lost.get(owner, 0) > 0
            machine.resume(owner, rng.random() < 0.8)
        machine.consistent()
    # The run reached the states it is meant to test.
    assert machine.most_victims >= 2
    assert resumed_lost > 0


def test_rt_fills_low_end_be_high_end_of_a_shared_block() -> None:
    pool = BidirBlockPool(1, block_size=8)
    pool.grow("r", "rt", 3)
    pool.grow("a", "be", 2)
    assert pool.owners(0) == ("r", "a")
    assert pool.block_usage(0) == (3, 2)
    pool.grow("r", "rt", 6)  # step 1: up to where the BE request begins
    assert pool.block_usage(0) == (6, 2)
    assert pool.free_slots == 0
    assert not pool.fits("r", "rt", 7)
    assert not pool.fits("a", "be", 3)


def test_rt_uses_the_free_tail_of_a_be_block_when_no_free_block_is_left() -> None:
    pool = BidirBlockPool(2, block_size=8)
    pool.grow("a", "be", 12)  # block 0 full, block 1 holds 4
    assert pool.owners(1) == ("a",)
    # A plain paged pool would refuse: both blocks are taken.
    assert pool.grow("r", "rt", 4) == Growth(4, {})
    assert pool.owners(1) == ("r", "a")
    assert pool.block_usage(1) == (4, 4)
    assert pool.free_slots == 0
    pool.check_invariants()


def test_shared_blocks_before_free_ones_and_the_most_free_first() -> None:
    pool = BidirBlockPool(3, block_size=8)
    pool.grow("a", "be", 6)  # block 0: 2 free
    pool.grow("b", "be", 3)  # block 1: 5 free (block 0 already has a BE owner)
    assert [pool.owners(b) for b in range(3)] == [("a",), ("b",), ()]
    pool.grow("r", "rt", 4)
    assert pool.block_usage(1) == (4, 3)  # the most free slots, not the wholly free block 2
    pool.grow("r", "rt", 7)  # step 1 takes the last slot of block 1, step 2 block 0's two
    assert pool.block_usage(1) == (5, 3)
    assert pool.block_usage(0) == (2, 6)
    assert pool.owners(2) == ()
    pool.grow("r", "rt", 8)  # now only the wholly free block is left
    assert pool.block_usage(2) == (1, 0)
    pool.check_invariants()


def test_two_owners_at_most_even_with_free_slots_between_them() -> None:
    pool = BidirBlockPool(1, block_size=8)
    pool.grow("r", "rt", 2)
    pool.grow("a", "be", 2)
    assert pool.free_slots == 4
    for owner, side in (("r2", "rt"), ("b", "be")):
        assert pool.shortfall(owner, side, 1) == 1
        assert not pool.fits(owner, side, 1, reclaim=True)
        with pytest.raises(ValueError, match="needs 1 more slots, 0 available"):
            pool.grow(owner, side, 1)
    assert pool.owners(0) == ("r", "a")


def test_suspended_slots_go_only_to_rt_with_reclaim() -> None:
    pool = BidirBlockPool(2, block_size=4)
    pool.grow("a", "be", 8)
    pool.suspend("a")
    assert (pool.free_slots, pool.reclaimable_slots, pool.held("a")) == (0, 8, 8)
    assert not pool.fits("r", "rt", 3)
    assert pool.shortfall("r", "rt", 3) == 3
    assert not pool.fits("b", "be", 3, reclaim=True)  # BE never reclaims
    assert pool.fits("r", "rt", 3, reclaim=True)
    growth = pool.grow("r", "rt", 3, reclaim=True)
    assert growth == Growth(3, {"a": 3})
    assert (pool.held("a"), pool.held("r")) == (5, 3)
    assert (pool.free_slots, pool.reclaimable_slots) == (0, 5)
    assert sorted(pool.owners(b) for b in range(2)) == [("a",), ("r", "a")]
    pool.check_invariants()


def test_overwrites_add_up_and_resume_returns_exactly_them() -> None:
    pool = BidirBlockPool(4, block_size=4)
    pool.grow("a", "be", 6)
    pool.grow("b", "be", 6)
    pool.grow("r", "rt", 2)  # the free slots of a's and b's second blocks
    assert pool.free_slots == 2
    pool.suspend("a")
    pool.suspend("b")
    first = pool.grow("r", "rt", 6, reclaim=True)  # 2 free slots, then 2 overwritten
    second = pool.grow("r", "rt", 14, reclaim=True)
    assert first.slots_added == 4
    assert sum(first.overwritten.values()) == 2
    assert second.slots_added == 8
    assert sum(second.overwritten.values()) == 8
    lost = {o: first.overwritten.get(o, 0) + second.overwritten.get(o, 0) for o in "ab"}
    assert lost["a"] + lost["b"] == 10
    assert pool.held("a") + pool.held("b") == 12 - 10
    for o in "ab":
        held = pool.held(o)
        assert pool.resume(o) == lost[o]
        assert pool.held(o) == held
    assert pool.reclaimable_slots == 0
    assert not pool.fits("a", "be", pool.held("a") + lost["a"])  # r holds the memory now
    pool.release("r")
    pool.grow("a", "be", pool.held("a") + lost["a"])  # the swap-in
    assert pool.held("a") == 6
    pool.check_invariants()


def test_resumed_slots_are_no_longer_reclaimable() -> None:
    pool = BidirBlockPool(1, block_size=4)
    pool.grow("a", "be", 4)
    pool.suspend("a")
    assert pool.fits("r", "rt", 4, reclaim=True)
    assert pool.resume("a") == 0
    assert pool.reclaimable_slots == 0
    assert not pool.fits("r", "rt", 1, reclaim=True)


def test_reclaim_cannot_reach_past_another_rt_owner() -> None:
    pool = BidirBlockPool(1, block_size=4)
    pool.grow("r", "rt", 1)
    pool.grow("a", "be", 3)
    pool.suspend("a")
    assert pool.reclaimable_slots == 3
    assert pool.fits("r", "rt", 4, reclaim=True)  # its own block
    assert pool.shortfall("r2", "rt", 1, reclaim=True) == 1  # the RT end is r's


def test_released_slots_are_reusable_at_once() -> None:
    pool = BidirBlockPool(3, block_size=4)
    pool.grow("a", "be", 6)  # block 0 full, 2 free in block 1
    pool.grow("r", "rt", 6)  # the 2 free of block 1, then block 2
    assert pool.shortfall("b", "rt", 5) == 5
    with pytest.raises(ValueError, match="cannot grow owner 'b'"):
        pool.grow("b", "rt", 5)
    pool.release("r")
    assert pool.free_slots == 6
    assert pool.fits("b", "rt", 5)
    pool.grow("b", "rt", 5)
    pool.release("a")
    pool.release("b")
    assert (pool.free_slots, pool.used_slots) == (12, 0)
    assert all(pool.owners(b) == () for b in range(3))
    pool.check_invariants()


def test_a_released_suspended_owner_frees_its_slots_and_overwrites() -> None:
    pool = BidirBlockPool(2, block_size=4)
    pool.grow("a", "be", 8)
    pool.suspend("a")
    pool.grow("r", "rt", 2, reclaim=True)
    pool.release("a")
    assert (pool.free_slots, pool.reclaimable_slots) == (6, 0)
    # A new request may reuse the id, on either side. The 2 free slots beside r are
    # for a BE request only.
    assert pool.shortfall("a", "rt", 6) == 2
    pool.grow("a", "be", 6)
    assert pool.free_slots == 0
    pool.check_invariants()


def test_no_op_and_registration() -> None:
    pool = BidirBlockPool(1, block_size=4)
    assert pool.fits("r", "rt", 0)
    assert "r" not in pool
    assert pool.grow("r", "rt", 0) == Growth(0, {})
    assert "r" in pool
    assert pool.held("r") == 0
    pool.grow("r", "rt", 2)
    assert pool.grow("r", "rt", 2) == Growth(0, {})
    assert pool.shortfall("r", "rt", 2) == 0


@pytest.mark.parametrize(
    ("num_blocks", "block_size", "message"),
    [
        (-1, 16, "num_blocks must be an integer >= 0, got -1"),
        (2.0, 16, "num_blocks must be an integer >= 0, got 2.0"),
        (True, 16, "num_blocks must be an integer >= 0, got True"),
        (4, 0, "block_size must be an integer >= 1, got 0"),
        (4, "16", "block_size must be an integer >= 1, got '16'"),
    ],
)
def test_constructor_rejects_bad_arguments(num_blocks: int, block_size: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BidirBlockPool(num_blocks, block_size)


def test_error_messages_name_the_argument_and_value() -> None:
    pool = BidirBlockPool(2, block_size=4)
    pool.grow("r", "rt", 3)
    pool.grow("a", "be", 2)
    not_int: Any = 1.5
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: pool.grow("x", "xx", 1), "side must be 'rt' or 'be', got 'xx'"),
        (lambda: pool.fits("x", "RT", 1), "side must be 'rt' or 'be', got 'RT'"),
        (lambda: pool.grow("x", "rt", -1), "tokens_total must be an integer >= 0, got -1"),
        (
            lambda: pool.shortfall("r", "rt", not_int),
            "tokens_total must be an integer >= 0, got 1.5",
        ),
        (lambda: pool.grow("r", "be", 4), "owner 'r' is rt, got side='be'"),
        (lambda: pool.grow("r", "rt", 2), "tokens_total=2 would shrink owner 'r', which holds 3"),
        (lambda: pool.grow("r", "rt", 9), "cannot grow owner 'r' to tokens_total=9: needs 6"),
        (lambda: pool.held("z"), "unknown owner 'z'"),
        (lambda: pool.release("z"), "unknown owner 'z'"),
        (lambda: pool.suspend("z"), "unknown owner 'z'"),
        (lambda: pool.resume("z"), "unknown owner 'z'"),
        (lambda: pool.is_suspended("z"), "unknown owner 'z'"),
        (lambda: pool.suspend("r"), "owner 'r' is rt; only be owners suspend"),
        (lambda: pool.resume("a"), "owner 'a' is not suspended"),
        (lambda: pool.owners(2), r"block must be an integer in \[0, 2\), got 2"),
        (lambda: pool.block_usage(-1), r"block must be an integer in \[0, 2\), got -1"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    pool.suspend("a")
    with pytest.raises(ValueError, match="owner 'a' is already suspended"):
        pool.suspend("a")
    with pytest.raises(ValueError, match="owner 'a' is suspended; resume it first"):
        pool.grow("a", "be", 3)
    pool.check_invariants()


def test_check_invariants_catches_corruption() -> None:
    pool = BidirBlockPool(2, block_size=4)
    pool.grow("r", "rt", 3)
    pool.check_invariants()
    pool._used[0][0] += 2  # more slots than the block has
    with pytest.raises(AssertionError):
        pool.check_invariants()
