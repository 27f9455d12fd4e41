"""Tool backend pools: cold starts, keepalive, concurrency, queueing, prewarming, accounting."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hermes.cluster.tool_pool import (
    CallFinished,
    CallStarted,
    Effect,
    ToolBackendSpec,
    ToolPool,
)


def drain(pool: ToolPool) -> list[Effect]:
    """The simulator shell's loop: advance at every wake until nothing is pending."""
    effects: list[Effect] = []
    while (t := pool.next_wake()) is not None:
        effects += pool.advance(t)
    return effects


def test_cold_start_then_warm_reuse_within_keepalive() -> None:
    pool = ToolPool(ToolBackendSpec("docker", cold_start_s=2.0, keepalive_s=10.0))
    assert pool.submit("a", 1.0, now=0.0) == []
    assert pool.instances(0.0) == {"warming": 1, "busy": 0, "idle": 0}
    assert pool.next_wake() == 2.0
    assert pool.advance(2.0) == [CallStarted("a", 2.0, 2.0, 2.0, 0)]
    assert pool.advance(3.0) == [CallFinished("a", 3.0, 0)]
    assert pool.next_wake() == 13.0  # idle from 3, expires 10 s later
    assert pool.submit("b", 1.0, now=5.0) == [CallStarted("b", 5.0, 0.0, 0.0, 0)]
    assert drain(pool) == [CallFinished("b", 6.0, 0)]
    assert pool.cold_starts == 1
    assert pool.instances(16.0) == {"warming": 0, "busy": 0, "idle": 0}  # expired at 16


def test_expiry_after_keepalive_then_cold_again() -> None:
    pool = ToolPool(ToolBackendSpec("docker", cold_start_s=1.0, keepalive_s=5.0))
    pool.submit("a", 1.0, now=0.0)
    assert drain(pool)[-1] == CallFinished("a", 2.0, 0)
    assert pool.instances(7.0) == {"warming": 0, "busy": 0, "idle": 0}
    # A call exactly at the expiry instant finds the instance gone.
    assert pool.submit("b", 1.0, now=7.0) == []
    assert drain(pool) == [
        CallStarted("b", 8.0, 1.0, 1.0, 1),
        CallFinished("b", 9.0, 1),
    ]
    assert pool.cold_starts == 2


def test_catch_up_without_advance_returns_due_effects_first() -> None:
    pool = ToolPool(ToolBackendSpec("docker", cold_start_s=1.0))
    pool.submit("a", 1.0, now=0.0)
    assert pool.submit("b", 1.0, now=5.0) == [
        CallStarted("a", 1.0, 1.0, 1.0, 0),
        CallFinished("a", 2.0, 0),
        CallStarted("b", 5.0, 0.0, 0.0, 0),
    ]
    # prewarm keeps what it caught up on for the next advance, which next_wake asks for now.
    assert pool.prewarm(7.0) == 0  # instance 0 is idle
    assert pool.next_wake() == 7.0
    assert pool.advance(7.0) == [CallFinished("b", 6.0, 0)]


def test_concurrency_fills_the_busiest_instance_first() -> None:
    pool = ToolPool(ToolBackendSpec("vit", concurrency=3))
    started = pool.submit("a", 1.0, 0.0) + pool.submit("b", 5.0, 0.0) + pool.submit("c", 5.0, 0.0)
    assert [e.instance for e in started] == [0, 0, 0]
    assert pool.submit("d", 5.0, 0.0) == [CallStarted("d", 0.0, 0.0, 0.0, 1)]
    assert pool.advance(1.0) == [CallFinished("a", 1.0, 0)]
    # Instance 0 runs 2 calls, instance 1 runs 1: the busier one takes the next call.
    assert pool.submit("e", 1.0, 2.0) == [CallStarted("e", 2.0, 0.0, 0.0, 0)]
    assert pool.instances(2.0) == {"warming": 0, "busy": 2, "idle": 0}
    assert pool.cold_starts == 0


def test_max_instances_queues_fifo() -> None:
    pool = ToolPool(ToolBackendSpec("env", cold_start_s=1.0, max_instances=1))
    assert pool.submit("a", 2.0, 0.0) == []
    assert pool.submit("b", 1.0, 0.5) == []
    assert pool.submit("c", 1.0, 0.6) == []
    assert pool.queued == 2
    assert pool.prewarm(0.7, instances=3) == 0  # at max_instances
    effects = drain(pool)
    assert effects == [
        CallStarted("a", 1.0, 1.0, 1.0, 0),
        CallFinished("a", 3.0, 0),
        CallStarted("b", 3.0, 2.5, 0.0, 0),
        CallFinished("b", 4.0, 0),
        CallStarted("c", 4.0, 4.0 - 0.6, 0.0, 0),
        CallFinished("c", 5.0, 0),
    ]
    assert pool.queued == 0


def test_max_instances_queues_by_priority_lower_first_and_fifo_among_equals() -> None:
    pool = ToolPool(ToolBackendSpec("env", max_instances=1))
    assert pool.submit("a", 1.0, 0.0, priority=5.0) == [CallStarted("a", 0.0, 0.0, 0.0, 0)]
    for name, at, priority in (("b", 0.1, 3.0), ("c", 0.2, 1.0), ("d", 0.3, 3.0), ("e", 0.4, 2.0)):
        assert pool.submit(name, 1.0, at, priority) == []
    assert pool.queued_ids() == ["c", "e", "b", "d"]
    starts = [e for e in drain(pool) if isinstance(e, CallStarted)]
    assert [(e.call_id, e.at) for e in starts] == [("c", 1.0), ("e", 2.0), ("b", 3.0), ("d", 4.0)]
    assert pool.queue_wait_s == pytest.approx(0.8 + 1.6 + 2.9 + 3.7)


def test_the_tiebreak_orders_equal_priorities_and_only_those() -> None:
    pool = ToolPool(ToolBackendSpec("env", max_instances=1))
    pool.submit("a", 1.0, 0.0, priority=0.0)
    pool.submit("b", 1.0, 0.1, priority=1.0, tiebreak=5.0)
    pool.submit("c", 1.0, 0.2, priority=1.0, tiebreak=2.0)
    pool.submit("d", 1.0, 0.3, priority=0.5, tiebreak=9.0)
    pool.submit("e", 1.0, 0.4, priority=1.0, tiebreak=2.0)  # same tie-break: submission order
    assert pool.queued_ids() == ["d", "c", "e", "b"]
    pool.reprioritize({"d": 2.0})  # a ranking round keeps the tie-breaks
    assert pool.queued_ids() == ["c", "e", "b", "d"]
    fifo = ToolPool(ToolBackendSpec("env", max_instances=1, order="fifo"))
    for name, tie in (("a", 0.0), ("b", 5.0), ("c", 2.0)):
        fifo.submit(name, 1.0, 0.0, tiebreak=tie)
    assert fifo.queued_ids() == ["b", "c"]
    with pytest.raises(ValueError, match="must not be NaN"):
        pool.submit("x", 1.0, 1.0, tiebreak=math.nan)


def test_fifo_order_ignores_priorities() -> None:
    pool = ToolPool(ToolBackendSpec("env", max_instances=1, order="fifo"))
    assert pool.submit("a", 1.0, 0.0, priority=5.0) == [CallStarted("a", 0.0, 0.0, 0.0, 0)]
    pool.submit("b", 1.0, 0.1, priority=3.0)
    pool.submit("c", 1.0, 0.2, priority=1.0)
    assert pool.queued_ids() == ["b", "c"]
    pool.reprioritize({"c": -1.0})  # no effect on a FIFO pool
    starts = [e.call_id for e in drain(pool) if isinstance(e, CallStarted)]
    assert starts == ["b", "c"]
    assert not ToolBackendSpec("env", max_instances=1, order="fifo").ranked
    assert not ToolBackendSpec("env").ranked  # unlimited: nothing ever queues
    assert ToolBackendSpec("env", max_instances=1).ranked


def test_reprioritize_reorders_the_waiting_calls_only() -> None:
    pool = ToolPool(ToolBackendSpec("docker", cold_start_s=1.0, max_instances=1))
    assert pool.submit("a", 1.0, 0.0, priority=0.0) == []  # warming, holds the one instance
    pool.submit("b", 1.0, 0.1, priority=1.0)
    pool.submit("c", 1.0, 0.2, priority=2.0)
    pool.reprioritize({"c": 0.5, "a": 9.0, "gone": -5.0})  # a is placed; "gone" is unknown
    assert pool.queued_ids() == ["c", "b"]
    starts = [e.call_id for e in drain(pool) if isinstance(e, CallStarted)]
    assert starts == ["a", "c", "b"]
    with pytest.raises(ValueError, match="priority and tiebreak must not be NaN"):
        pool.submit("x", 1.0, 100.0, priority=math.nan)
    pool.submit("y", 5.0, 100.0)
    pool.submit("z", 5.0, 100.0)
    with pytest.raises(ValueError, match="priority of 'z' must not be NaN"):
        pool.reprioritize({"z": math.nan})


def test_prewarm_early_enough_removes_the_cold_wait() -> None:
    pool = ToolPool(ToolBackendSpec("sd", cold_start_s=2.0, keepalive_s=10.0))
    assert pool.prewarm(0.0) == 1
    assert pool.prewarm(0.5) == 0  # a warming instance with a spare slot already exists
    assert pool.prewarm(0.5, instances=2) == 1
    assert pool.advance(2.5) == []
    assert pool.instances(2.5) == {"warming": 0, "busy": 0, "idle": 2}
    assert pool.submit("a", 1.0, 3.0) == [CallStarted("a", 3.0, 0.0, 0.0, 0)]
    assert pool.cold_starts == 2


def test_prewarm_late_removes_part_of_the_cold_wait() -> None:
    pool = ToolPool(ToolBackendSpec("sd", cold_start_s=2.0))
    assert pool.prewarm(0.0) == 1
    assert pool.submit("a", 1.0, 1.5) == []
    assert pool.advance(2.0) == [CallStarted("a", 2.0, 0.5, 0.5, 0)]
    assert pool.cold_starts == 1


def test_prewarm_counts_toward_warm_instance_seconds() -> None:
    pool = ToolPool(ToolBackendSpec("sd", cold_start_s=2.0, keepalive_s=10.0))
    pool.prewarm(0.0)
    assert pool.warm_instance_seconds(1.0) == 1.0
    with pytest.raises(ValueError, match="advance the pool first"):
        pool.warm_instance_seconds(5.0)  # it became ready at 2
    assert drain(pool) == []  # ready at 2, idle, expired at 12
    assert pool.warm_instance_seconds(20.0) == 12.0
    assert pool.busy_instance_seconds(20.0) == 0.0


def test_prewarm_hold_replaces_keepalive_until_the_first_call() -> None:
    pool = ToolPool(ToolBackendSpec("sd", cold_start_s=2.0, keepalive_s=10.0))
    assert pool.prewarm(0.0, hold_s=3.0) == 1
    assert drain(pool) == []
    assert pool.warm_instance_seconds(6.0) == 5.0  # ready at 2, unused, gone at 2 + 3
    assert (pool.prewarms, pool.prewarms_unused) == (1, 1)
    assert pool.prewarm(10.0, hold_s=3.0) == 1
    assert pool.submit("a", 1.0, 13.0) == [CallStarted("a", 13.0, 0.0, 0.0, 1)]  # ready at 12
    assert drain(pool) == [CallFinished("a", 14.0, 1)]
    # Once used, it idles like any instance: keepalive_s, not the hold.
    assert pool.warm_instance_seconds(30.0) == 5.0 + (24.0 - 10.0)
    assert (pool.prewarms, pool.prewarms_unused) == (2, 1)


def test_prewarm_hold_extends_a_spare_instance_and_never_shortens_it() -> None:
    pool = ToolPool(ToolBackendSpec("sd", cold_start_s=2.0, keepalive_s=10.0))
    pool.submit("a", 1.0, 0.0)
    assert pool.advance(3.0)[-1] == CallFinished("a", 3.0, 0)  # idle from 3, expiring at 13
    assert pool.prewarm(4.0, hold_s=20.0) == 0  # counts on instance 0 ...
    assert pool.next_wake() == 26.0  # ... as long as a new one: 4 + 2 (cold) + 20
    assert pool.prewarm(5.0, hold_s=1.0) == 0
    assert pool.next_wake() == 26.0
    assert pool.submit("b", 1.0, 25.0) == [CallStarted("b", 25.0, 0.0, 0.0, 0)]
    assert pool.prewarms == 0
    # Two spare slots asked for, one there: one more starts, and both are held.
    assert pool.prewarm(30.0, instances=2, hold_s=5.0) == 1
    assert drain(pool) == [CallFinished("b", 26.0, 0)]
    assert pool.warm_instance_seconds(40.0) == 26.0 + (37.0 - 26.0) + (37.0 - 30.0)
    with pytest.raises(ValueError, match="hold_s"):
        pool.prewarm(40.0, hold_s=-1.0)


def test_cold_start_zero_never_waits() -> None:
    pool = ToolPool(ToolBackendSpec("search", keepalive_s=0.0, concurrency=2))
    assert pool.prewarm(0.0, instances=4) == 0
    effects: list[Effect] = []
    for i in range(6):
        effects += pool.submit(i, 1.0, now=i * 0.4)
    effects += drain(pool)
    starts = [e for e in effects if isinstance(e, CallStarted)]
    assert [(e.waited_s, e.cold_wait_s) for e in starts] == [(0.0, 0.0)] * 6
    assert pool.cold_starts == 0
    assert pool.busy_instance_seconds(10.0) == pool.warm_instance_seconds(10.0)


def test_retain_keeps_an_instance_past_a_zero_ttl() -> None:
    pool = ToolPool(ToolBackendSpec("env", cold_start_s=1.0, keepalive_s=0.0))
    pool.submit("a", 0.5, 0.0)
    assert pool.advance(1.0) == [CallStarted("a", 1.0, 1.0, 1.0, 0)]
    assert pool.advance(1.5) == [CallFinished("a", 1.5, 0)]
    # advance handed the finish over before removing the instance, which expires now (TTL 0).
    assert pool.instances(1.5) == {"warming": 0, "busy": 0, "idle": 1}
    assert pool.next_wake() == 1.5
    assert pool.retain(0, 3.0, 1.5)
    assert pool.advance(1.5) == []
    assert pool.instances(1.5) == {"warming": 0, "busy": 0, "idle": 1}  # kept
    assert pool.submit("b", 0.5, 2.5) == [CallStarted("b", 2.5, 0.0, 0.0, 0)]  # warm: no wait
    assert drain(pool) == [CallFinished("b", 3.0, 0)]  # then gone at once: TTL 0 again
    assert pool.instances(3.0) == {"warming": 0, "busy": 0, "idle": 0}
    # Warming 1 s, busy 0.5, kept idle 1 s, busy 0.5.
    assert pool.warm_instance_seconds(3.0) == 3.0
    assert pool.cold_starts == 1


def test_without_retain_a_zero_ttl_instance_goes_when_its_call_ends() -> None:
    pool = ToolPool(ToolBackendSpec("env", cold_start_s=1.0, keepalive_s=0.0))
    pool.submit("a", 0.5, 0.0)
    drain(pool)
    assert pool.instances(1.5) == {"warming": 0, "busy": 0, "idle": 0}
    assert not pool.retain(0, 3.0, 1.5)  # too late: gone
    assert pool.submit("b", 0.5, 2.5) == []  # cold again
    assert pool.cold_starts == 2
    # A call at the instant the instance falls idle, before any retain, finds it gone too.
    pool = ToolPool(ToolBackendSpec("env", cold_start_s=1.0, keepalive_s=0.0))
    pool.submit("a", 0.5, 0.0)
    assert pool.submit("b", 0.5, 1.5)[-1] == CallFinished("a", 1.5, 0)
    assert pool.cold_starts == 2


def test_retain_never_shortens_and_ignores_busy_warming_and_gone_instances() -> None:
    pool = ToolPool(ToolBackendSpec("sd", cold_start_s=1.0, keepalive_s=10.0))
    pool.submit("a", 1.0, 0.0)
    assert not pool.retain(0, 50.0, 0.5)  # warming
    assert pool.advance(1.0) == [CallStarted("a", 1.0, 1.0, 1.0, 0)]
    assert not pool.retain(0, 50.0, 1.5)  # busy: its TTL starts when it falls idle
    assert pool.advance(2.0) == [CallFinished("a", 2.0, 0)]
    assert pool.next_wake() == 12.0  # the TTL, not the refused retains
    assert pool.retain(0, 5.0, 3.0)  # idle, but it stays to 12 anyway
    assert pool.next_wake() == 12.0
    assert pool.retain(0, 20.0, 4.0)
    assert pool.next_wake() == 20.0
    assert pool.retain(0, 15.0, 5.0)
    assert pool.next_wake() == 20.0
    assert not pool.retain(7, 30.0, 6.0)  # no such instance
    assert drain(pool) == []
    assert pool.warm_instance_seconds(20.0) == 20.0
    assert not pool.retain(0, 30.0, 20.0)  # gone
    # A prewarmed, unused instance: a retain can only lengthen its hold.
    assert pool.prewarm(21.0, hold_s=5.0) == 1
    assert pool.advance(22.0) == []
    assert pool.retain(1, 24.0, 22.0)
    assert pool.next_wake() == 27.0
    assert pool.retain(1, 30.0, 22.0)
    assert pool.next_wake() == 30.0
    with pytest.raises(ValueError, match="until"):
        pool.retain(1, math.nan, 22.0)
    with pytest.raises(ValueError, match="now must"):
        pool.retain(1, 40.0, 21.0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", ""),
        ("cold_start_s", -1.0),
        ("cold_start_s", math.inf),
        ("cold_start_s", math.nan),
        ("keepalive_s", -0.5),
        ("keepalive_s", math.nan),
        ("concurrency", 0),
        ("max_instances", 0),
        ("order", "lifo"),
    ],
)
def test_spec_validation_names_the_field(field: str, value: Any) -> None:
    kwargs: dict[str, Any] = {"name": "docker", field: value}
    with pytest.raises(ValueError, match=rf"^{field} must .*{value!r}"):
        ToolBackendSpec(**kwargs)


def test_call_validation() -> None:
    pool = ToolPool(ToolBackendSpec("docker", keepalive_s=math.inf))
    with pytest.raises(ValueError, match="duration_s"):
        pool.submit("a", -1.0, 0.0)
    with pytest.raises(ValueError, match="instances"):
        pool.prewarm(0.0, instances=-1)
    pool.submit("a", 5.0, 1.0)
    with pytest.raises(ValueError, match="already in the pool"):
        pool.submit("a", 1.0, 2.0)
    with pytest.raises(ValueError, match="now must"):
        pool.advance(0.5)
    with pytest.raises(ValueError, match="now must"):
        pool.submit("b", 1.0, math.nan)
    with pytest.raises(ValueError, match="now must"):
        pool.warm_instance_seconds(0.0)
    assert drain(pool) == [CallFinished("a", 6.0, 0)]
    assert pool.submit("a", 1.0, 6.0) == [CallStarted("a", 6.0, 0.0, 0.0, 0)]  # id free again


# --- property: a random workload through the shell's loop -------------------------------------

times = st.one_of(st.integers(0, 6).map(lambda k: k / 2), st.floats(0, 3))  # ties are likely
specs = st.builds(
    ToolBackendSpec,
    name=st.just("tool"),
    cold_start_s=times,
    keepalive_s=st.one_of(times, st.just(math.inf)),
    concurrency=st.integers(1, 3),
    max_instances=st.one_of(st.none(), st.integers(1, 3)),
    order=st.sampled_from(["fifo", "policy"]),
)


@dataclass(frozen=True)
class Op:
    gap: float  # after the previous operation
    duration: float | None  # a call of this duration, or (None) a prewarm
    prewarm: int
    hold: float | None  # the prewarm's hold_s
    drive: bool  # advance through wakes before it, as the shell would; else catch up late
    retain: float | None = None  # keep instances whose calls end on the way this much longer
    priority: int = 0  # the call's rank (lower first) if it queues


ops = st.lists(
    st.builds(
        Op,
        times,
        st.one_of(st.none(), times, times),
        st.integers(0, 3),
        st.one_of(st.none(), times),
        st.booleans(),
        st.one_of(st.none(), times),
        st.integers(0, 3),
    ),
    max_size=40,
)


def run_script(spec: ToolBackendSpec, script: list[Op]) -> None:
    """Drive ``script`` through the pool as the shell would and check what the pool did."""
    pool = ToolPool(spec)
    effects: list[Effect] = []
    submitted: dict[int, tuple[float, float]] = {}
    priority: dict[int, int] = {}
    ends: dict[int, list[float]] = {}  # per instance, when its running calls end
    # Instances retained at their call's end: the earliest they may go (if no call takes them).
    kept: dict[int, float] = {}
    counts: list[tuple[float, int]] = []  # instances alive after each operation

    def take(new: list[Effect], now: float, retain: float | None) -> None:
        effects.extend(new)
        for e in new:
            if isinstance(e, CallStarted):
                assert isinstance(e.call_id, int)
                ends.setdefault(e.instance, []).append(e.at + submitted[e.call_id][1])
                kept.pop(e.instance, None)
            else:
                ends[e.instance].remove(e.at)
        for e in new:
            if isinstance(e, CallFinished) and retain is not None:
                # A call ending after now keeps it busy (one ending now may end in retain).
                busy = any(end > now for end in ends[e.instance])
                if pool.retain(e.instance, e.at + retain, now):
                    assert not busy
                    if e.at == now:  # in time: it stays at least as long as asked and its TTL
                        kept[e.instance] = e.at + max(retain, spec.keepalive_s)
        observe(now)

    def observe(now: float) -> None:
        assert sum(pool.instances(now).values()) <= (spec.max_instances or math.inf)
        counts.append((now, sum(pool.instances(now).values())))
        for inst, until in list(kept.items()):
            if now < until:
                assert pool.retain(inst, now, now), f"instance {inst} went before {until}"
            else:
                del kept[inst]

    now = 0.0
    for op in script:
        now += op.gap
        while op.drive and (t := pool.next_wake()) is not None and t < now:
            take(pool.advance(t), t, op.retain)
        if op.duration is None:
            pool.prewarm(now, op.prewarm, op.hold)
            observe(now)
        else:
            priority[len(submitted)] = op.priority
            submitted[len(submitted)] = (now, op.duration)
            take(pool.submit(len(submitted) - 1, op.duration, now, op.priority), now, op.retain)
    last = script[-1].retain if script else None
    while (t := pool.next_wake()) is not None:
        take(pool.advance(t), t, last)
        now = t

    assert [e.at for e in effects] == sorted(e.at for e in effects)
    starts = {e.call_id: e for e in effects if isinstance(e, CallStarted)}
    finishes = {e.call_id: e for e in effects if isinstance(e, CallFinished)}
    assert len(starts) + len(finishes) == len(effects)  # no call started or finished twice
    assert starts.keys() == finishes.keys() == submitted.keys()
    for call_id, (submit_at, duration) in submitted.items():
        start, finish = starts[call_id], finishes[call_id]
        assert start.at >= submit_at
        assert start.waited_s == pytest.approx(start.at - submit_at)
        assert 0 <= start.cold_wait_s <= start.waited_s + 1e-9
        assert start.cold_wait_s <= spec.cold_start_s + 1e-9
        assert finish.at == start.at + duration
        assert finish.instance == start.instance

    check_queue_order(spec, submitted, priority, starts)
    waits = sum(s.waited_s - s.cold_wait_s for s in starts.values())
    assert pool.queue_wait_s == pytest.approx(waits, abs=1e-6)

    running: Counter[int] = Counter()
    for e in effects:
        running[e.instance] += 1 if isinstance(e, CallStarted) else -1
        assert running[e.instance] <= spec.concurrency
        assert sum(n > 0 for n in running.values()) <= (spec.max_instances or math.inf)

    assert pool.calls_started == pool.calls_finished == len(submitted)
    assert 0 <= pool.prewarms_unused <= pool.prewarms <= pool.cold_starts
    assert pool.queued == 0
    warm, busy = pool.warm_instance_seconds(now), pool.busy_instance_seconds(now)
    call_seconds = sum(d for _, d in submitted.values())
    assert warm >= busy - 1e-9
    assert busy >= call_seconds / spec.concurrency - 1e-9
    if spec.keepalive_s < math.inf:
        assert pool.instances(now) == {"warming": 0, "busy": 0, "idle": 0}
    if all(op.drive for op in script):
        # Every instance change happened at an operation: warm seconds are the area under the
        # count each instant ended with.
        area = sum(c * (t1 - t0) for (t0, c), (t1, _) in itertools.pairwise(counts))
        assert warm == pytest.approx(area, abs=1e-9)


def check_queue_order(
    spec: ToolBackendSpec,
    submitted: dict[int, tuple[float, float]],
    priority: dict[int, int],
    starts: dict[Any, CallStarted],
) -> None:
    """A call taken from the queue at t was the best of those queued at t: (priority,
    submission) with order "policy", submission with "fifo"."""
    placed = {c: s.at - s.cold_wait_s for c, s in starts.items()}

    def key(c: int) -> tuple[int, int]:
        return (priority[c] if spec.order == "policy" else 0, c)

    for x, px in placed.items():
        if px <= submitted[x][0]:
            continue  # placed as it came: it never queued
        for y, py in placed.items():
            if submitted[y][0] < px < py:  # y waited in the queue while x was taken from it
                assert key(x) < key(y), f"call {y} waited while {x} went first"


@settings(max_examples=300, deadline=None)
@given(specs, ops)
def test_shell_loop_starts_and_finishes_every_call_once(
    spec: ToolBackendSpec, script: list[Op]
) -> None:
    run_script(spec, script)


@settings(max_examples=300, deadline=None)
@given(specs, ops)
def test_warm_seconds_and_retains_when_the_shell_keeps_up(
    spec: ToolBackendSpec, script: list[Op]
) -> None:
    run_script(spec, [replace(op, drive=True) for op in script])
