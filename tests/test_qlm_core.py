"""QLM's decision core: groups, the waiting-time estimator, the planner, serving operations
and the policies built on them."""

from __future__ import annotations

import math
from dataclasses import FrozenInstanceError
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hermes.policies.qlm import (
    Evict,
    Grouper,
    GroupKey,
    GroupView,
    InstanceView,
    LengthStats,
    MoveGroup,
    Plan,
    Pull,
    QLMOptions,
    QLMPlanner,
    QLMPolicy,
    RunningView,
    ScaleOut,
    SwapKV,
    SwapModel,
    length_bucket,
    operations_for,
    plan,
    plan_edf,
    plan_milp,
    waiting_times,
    z_for,
)
from hermes.policies.registry import REGISTRY, make_queue_policy

A = GroupKey("A", "interactive", 5)
B = GroupKey("B", "interactive", 5)


def exact_stats(tokens_per_request: float = 100.0) -> LengthStats:
    """Every request decodes exactly `tokens_per_request` tokens (σ = 0)."""
    return LengthStats(prior_mean=tokens_per_request, prior_std=0.0)


def instance(
    name: str = "i0",
    active: str | None = "A",
    swap: float = 3.0,
    models: tuple[str, ...] = ("A", "B"),
    busy: float = 0.0,
    theta: float = 100.0,
    warm: frozenset[str] | None = None,
) -> InstanceView:
    swap_s = {m: 0.0 if m == active else swap for m in models}
    warm_models = frozenset(m for m in models if m != active) if warm is None else warm
    return InstanceView(name, active, warm_models, swap_s, theta, busy)


def recount(
    p: Plan,
    groups: list[GroupView],
    instances: list[InstanceView],
    stats: LengthStats,
    z: float,
    now: float,
) -> int:
    by_id = {g.id: g for g in groups}
    late = 0
    for inst in instances:
        queue = [by_id[gid] for gid in p.queues[inst.name]]
        late += sum(
            t > g.deadline_s - now
            for g, t in zip(queue, waiting_times(queue, inst, stats, z), strict=True)
        )
    return late


def assert_complete(p: Plan, groups: list[GroupView], instances: list[InstanceView]) -> None:
    assert set(p.queues) == {inst.name for inst in instances}
    queued = [gid for q in p.queues.values() for gid in q]
    assert sorted(queued) == sorted(g.id for g in groups)


# Groups and length statistics.


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1e5, allow_nan=False), min_size=0, max_size=60))
def test_length_stats_match_numpy(values: list[float]) -> None:
    stats = LengthStats(prior_mean=77.0, prior_std=9.0)
    other = GroupKey("A", "batch", 3)
    for v in values:
        stats.observe(A, v)
    stats.observe(other, 1.0)  # another key is kept apart
    assert stats.count(A) == len(values)
    if not values:
        assert (stats.mean(A), stats.std(A)) == (77.0, 9.0)
        return
    assert stats.mean(A) == pytest.approx(float(np.mean(values)), rel=1e-9, abs=1e-6)
    if len(values) == 1:
        assert stats.std(A) == 9.0  # one sample says nothing about spread
    else:
        assert stats.std(A) == pytest.approx(float(np.std(values, ddof=1)), rel=1e-6, abs=1e-6)


def test_length_bucket_is_log2() -> None:
    assert [length_bucket(n) for n in (0, 1, 2, 3, 4, 1023, 1024)] == [0, 0, 1, 1, 2, 9, 10]
    with pytest.raises(ValueError, match="prompt_tokens"):
        length_bucket(-1)


def test_grouper_bounds_groups_by_size_and_window() -> None:
    grouper = Grouper(max_group_size=2, group_window_s=10.0)
    g0 = grouper.add("r0", "A", "interactive", 100, 0.0, 20.0)
    assert grouper.add("r1", "A", "interactive", 120, 1.0, 20.0) is g0  # same bucket (6)
    g1 = grouper.add("r2", "A", "interactive", 100, 2.0, 20.0)  # g0 is full
    assert g1.id == g0.id + 1
    assert grouper.add("r3", "A", "interactive", 1000, 2.0, 20.0).key.length_bucket == 9
    assert grouper.add("r4", "A", "batch", 100, 2.0, 3600.0) is not g1  # other class
    g2 = grouper.add("r5", "A", "interactive", 100, 13.0, 20.0)  # g1's first is 11 s old
    assert g2 is not g1
    assert [m.request_id for m in g0.members] == ["r0", "r1"]
    assert g0.deadline_s == 20.0
    assert [m.request_id for m in grouper.take(g0.id, 1)] == ["r0"]
    assert g0.deadline_s == 21.0  # the earliest deadline of those still waiting
    grouper.take(g0.id, 5)
    assert g0.id not in grouper.groups
    assert grouper.add("r6", "A", "interactive", 100, 13.5, 20.0) is g2


# The estimator.


def test_waiting_times_by_hand() -> None:
    stats = LengthStats(prior_mean=50.0, prior_std=10.0)
    stats.observe(A, 100.0)
    stats.observe(A, 300.0)  # μ = 200, σ = √20000
    inst = instance(busy=2.0, warm=frozenset({"B"}))
    queue = [GroupView(0, A, 2, 100.0), GroupView(1, B, 1, 100.0), GroupView(2, A, 1, 100.0)]
    sigma = math.sqrt(20000.0)
    # z = 0: means only. 2 + 400/100; + swap 3 + 50/100; + return swap 3 + 200/100.
    assert waiting_times(queue, inst, stats, 0.0) == pytest.approx([6.0, 9.5, 14.5])
    # z = 1: n·μ + √n·σ per group.
    first = 2.0 + (400.0 + math.sqrt(2.0) * sigma) / 100.0
    second = first + 3.0 + 60.0 / 100.0
    third = second + 3.0 + (200.0 + sigma) / 100.0
    assert waiting_times(queue, inst, stats, 1.0) == pytest.approx([first, second, third])


def test_waiting_times_charge_swaps_only_at_model_changes() -> None:
    stats = exact_stats()
    inst = instance(active=None, swap=4.0)
    queue = [GroupView(0, B, 1, 0.0), GroupView(1, B, 2, 0.0), GroupView(2, A, 1, 0.0)]
    # Nothing is loaded: the first group pays for B; the change to A pays again.
    assert waiting_times(queue, inst, stats, 1.645) == pytest.approx([5.0, 7.0, 12.0])


@given(
    st.lists(st.tuples(st.sampled_from("AB"), st.integers(1, 64)), max_size=12),
    st.floats(0.0, 10.0),
    st.floats(-2.0, 3.0),
)
def test_waiting_times_add_up_along_the_queue(
    queue_spec: list[tuple[str, int]], busy: float, z: float
) -> None:
    stats = LengthStats(prior_mean=80.0, prior_std=40.0)
    inst = instance(busy=busy, swap=2.5)
    queue = [GroupView(k, GroupKey(m, "c", 0), n, 0.0) for k, (m, n) in enumerate(queue_spec)]
    times = waiting_times(queue, inst, stats, z)
    model, t = "A", busy
    for g, got in zip(queue, times, strict=True):
        t += (2.5 if g.model != model else 0.0) + max(
            0.0, g.size * 80.0 + z * math.sqrt(g.size) * 40.0
        ) / 100.0
        model = g.model
        assert got == pytest.approx(t)
    # A queue's prefix drains as it would alone.
    half = queue[: len(queue) // 2]
    assert waiting_times(half, inst, stats, z) == pytest.approx(times[: len(half)])


@given(st.floats(1e-6, 0.5), st.floats(1e-6, 0.5))
def test_z_decreases_with_the_violation_probability(p: float, q: float) -> None:
    if p <= q:
        assert z_for(p) >= z_for(q)
    if q - p > 1e-9:
        assert z_for(p) > z_for(q)
    assert z_for(0.5) == pytest.approx(0.0, abs=1e-12)
    assert z_for(0.05) == pytest.approx(1.6449, abs=1e-4)


@pytest.mark.parametrize("p", [0.0, 1.0, -0.1, float("nan")])
def test_z_rejects_impossible_probabilities(p: float) -> None:
    with pytest.raises(ValueError, match="violation_probability"):
        z_for(p)


# The planner.


def test_grouping_same_model_groups_avoids_a_violation() -> None:
    """EDF interleaves A, B, A and pays two swaps; the plan serves A, A then B."""
    stats, inst = exact_stats(), instance(warm=frozenset({"B"}))
    groups = [GroupView(0, A, 1, 1.0), GroupView(1, B, 1, 6.2), GroupView(2, A, 1, 6.5)]
    edf = plan_edf(groups, [inst], 0.0, stats, 1.0)
    assert edf.queues == {"i0": (0, 1, 2)}
    assert edf.predicted_violations == 1
    best = plan(groups, [inst], 0.0, stats, 1.0, time_limit_s=5.0)
    assert best.solver == "milp"
    assert best.queues == {"i0": (0, 2, 1)}
    assert best.predicted_violations == 0


def test_the_plan_gives_up_a_lost_group_to_save_two() -> None:
    stats, inst = exact_stats(), instance()
    # Service times 10, 5, 5 s: EDF serves the first on time and the other two late.
    groups = [GroupView(0, A, 10, 10.0), GroupView(1, A, 5, 11.0), GroupView(2, A, 5, 12.0)]
    assert plan_edf(groups, [inst], 0.0, stats, 0.0).predicted_violations == 2
    best = plan(groups, [inst], 0.0, stats, 0.0, time_limit_s=5.0)
    assert best.queues == {"i0": (1, 2, 0)}
    assert best.predicted_violations == 1


def random_case(
    seed: int, n_groups: int, n_instances: int
) -> tuple[list[GroupView], list[InstanceView], LengthStats]:
    rng = np.random.default_rng(seed)
    models = ("A", "B", "C")
    stats = LengthStats(prior_mean=100.0, prior_std=30.0)
    groups = [
        GroupView(
            gid,
            GroupKey(str(rng.choice(models)), "c", int(rng.integers(0, 3))),
            int(rng.integers(1, 9)),
            float(rng.uniform(1.0, 30.0)),
        )
        for gid in range(n_groups)
    ]
    instances = [
        instance(
            f"i{i}",
            active=str(rng.choice(models)),
            swap=float(rng.uniform(0.5, 5.0)),
            models=models,
            busy=float(rng.uniform(0.0, 3.0)),
            theta=float(rng.uniform(50.0, 200.0)),
        )
        for i in range(n_instances)
    ]
    return groups, instances, stats


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 14), st.integers(1, 3))
def test_the_milp_never_predicts_more_violations_than_edf(seed: int, n: int, k: int) -> None:
    groups, instances, stats = random_case(seed, n, k)
    z = z_for(0.1)
    edf = plan_edf(groups, instances, 0.0, stats, z)
    best = plan_milp(groups, instances, 0.0, stats, z, time_limit_s=10.0)
    assert best.predicted_violations <= edf.predicted_violations
    assert best.solver in ("milp", "edf")
    assert_complete(best, groups, instances)
    assert best.predicted_violations == recount(best, groups, instances, stats, z, 0.0)
    assert edf.predicted_violations == recount(edf, groups, instances, stats, z, 0.0)


@pytest.mark.parametrize("n_instances", [1, 2, 4, 8])
def test_the_milp_is_feasible_for_any_number_of_instances(n_instances: int) -> None:
    groups, instances, stats = random_case(7, 60, n_instances)
    edf = plan_edf(groups, instances, 0.0, stats, 1.0)
    assert edf.predicted_violations > 0  # so the comparison below means something
    best = plan_milp(groups, instances, 0.0, stats, 1.0, time_limit_s=10.0)
    assert best.solver != "edf-fallback"
    assert best.predicted_violations <= edf.predicted_violations
    assert_complete(best, groups, instances)


def test_the_plan_falls_back_to_edf_without_time_to_solve() -> None:
    groups, instances, stats = random_case(3, 200, 4)
    edf = plan_edf(groups, instances, 0.0, stats, 1.0)
    fallback = plan_milp(groups, instances, 0.0, stats, 1.0, time_limit_s=1e-9)
    assert fallback.solver == "edf-fallback"
    assert fallback.queues == edf.queues
    assert fallback.predicted_violations == edf.predicted_violations


def test_plan_is_edf_when_edf_meets_every_deadline() -> None:
    groups = [GroupView(0, A, 1, 100.0), GroupView(1, B, 1, 100.0)]
    p = plan(groups, [instance("i0"), instance("i1", active="B")], 0.0, exact_stats(), 1.0, 0.05)
    assert p.solver == "edf"
    assert p.queues == {"i0": (0,), "i1": (1,)}  # each where its model is active


def test_edf_balances_load_across_instances_of_a_model() -> None:
    groups = [GroupView(g, A, 1, 100.0) for g in range(4)]
    p = plan_edf(groups, [instance("i0"), instance("i1")], 0.0, exact_stats(), 0.0)
    assert p.queues == {"i0": (0, 2), "i1": (1, 3)}


def test_planner_rejects_what_it_cannot_plan() -> None:
    stats = exact_stats()
    with pytest.raises(ValueError, match="no instance can serve"):
        plan_edf([GroupView(0, GroupKey("Z", "c", 0), 1, 1.0)], [instance()], 0.0, stats, 0.0)
    with pytest.raises(ValueError, match="at least one instance"):
        plan_edf([], [], 0.0, stats, 0.0)
    with pytest.raises(ValueError, match="unique"):
        plan_edf([], [instance(), instance()], 0.0, stats, 0.0)
    with pytest.raises(ValueError, match="time_limit_s"):
        plan_milp([], [instance()], 0.0, stats, 0.0, time_limit_s=0.0)


# Serving operations.


def ops_for(
    p: Plan,
    groups: list[GroupView],
    instances: list[InstanceView],
    running: dict[str, list[RunningView]] | None = None,
    current: dict[str, tuple[int, ...]] | None = None,
    evicted: dict[str, list[RunningView]] | None = None,
    now: float = 0.0,
) -> list[object]:
    return list(
        operations_for(
            p,
            current or {},
            {g.id: g for g in groups},
            instances,
            running or {},
            now=now,
            stats=exact_stats(),
            z=0.0,
            pull_threshold=4,
            class_slo_s={"interactive": 20.0, "batch": 3600.0},
            evicted=evicted,
        )
    )


def test_operations_move_swap_and_pull() -> None:
    groups = [GroupView(0, A, 3, 50.0), GroupView(1, A, 3, 60.0), GroupView(2, B, 2, 70.0)]
    instances = [instance("i0"), instance("i1", active="A")]
    p = Plan({"i0": (0, 1), "i1": (2,)}, 0, "edf")
    ops = ops_for(p, groups, instances, current={"i0": (2,), "i1": (0, 1)})
    assert ops == [
        MoveGroup(0, "i1", "i0"),
        MoveGroup(1, "i1", "i0"),
        MoveGroup(2, "i0", "i1"),
        Pull("i0", 0, 3),
        Pull("i0", 1, 1),  # the backlog allows four
        SwapModel("i1", "B", warm=True),  # idle, and its head needs B
        Pull("i1", 2, 2),
    ]


def test_a_busy_instance_finishes_before_it_swaps() -> None:
    groups = [GroupView(0, B, 1, 50.0), GroupView(1, A, 1, 60.0)]
    run = {"i0": [RunningView("r", "A", "interactive", 30.0)]}
    ops = ops_for(Plan({"i0": (0, 1)}, 0, "edf"), groups, [instance("i0")], run)
    assert ops == []  # no swap under running work, and no pulls past the head's model


def test_an_interactive_group_evicts_batch_work_and_batch_work_resumes() -> None:
    head = GroupView(0, A, 3, 5.0)
    batch = [RunningView(f"b{k}", "A", "batch", 3000.0 + k) for k in range(4)]
    inst = instance("i0", busy=8.0)  # the head would drain at 8 + 3 > 5
    ops = ops_for(Plan({"i0": (0,)}, 1, "milp"), [head], [inst], {"i0": batch}, now=0.0)
    victims = ("b3", "b2", "b1")  # the least urgent first, as many as the head needs
    assert ops[:2] == [
        Evict("i0", victims, "group 0 (interactive) is predicted to miss its deadline"),
        SwapKV("i0", victims, "cpu"),
    ]
    assert ops[2] == Pull("i0", 0, 3)
    assert isinstance(ops[3], ScaleOut)
    assert ops[3].predicted_violations == 1
    # Not predicted to miss: no eviction.
    relaxed = GroupView(0, A, 3, 50.0)
    assert ops_for(Plan({"i0": (0,)}, 0, "edf"), [relaxed], [inst], {"i0": batch}) == []
    # Later, with room and no interactive group waiting, the evicted requests resume.
    parked = {"i0": [batch[3], batch[2], batch[1]]}
    later = ops_for(Plan({"i0": ()}, 0, "edf"), [], [inst], {"i0": batch[:1]}, evicted=parked)
    assert later == [SwapKV("i0", ("b1", "b2", "b3"), "gpu")]


# Policies.


POLICY_NAMES = ("vllm", "vllm-shared", "edf", "qlm-noplan", "qlm")


def test_registry_knows_the_five_policies_and_refuses_duplicates() -> None:
    assert sorted(POLICY_NAMES) == REGISTRY.names("queue")
    for name in POLICY_NAMES:
        assert hasattr(make_queue_policy(name), "decide")
    qlm = make_queue_policy("qlm")
    assert isinstance(qlm, QLMPolicy)
    assert qlm.options.planner == "milp"
    noplan = make_queue_policy("qlm-noplan", QLMOptions(pull_threshold=3))
    assert isinstance(noplan, QLMPolicy)
    assert (noplan.options.planner, noplan.options.pull_threshold) == ("edf", 3)
    with pytest.raises(ValueError, match="unknown queue policy 'fifo'"):
        make_queue_policy("fifo")
    with pytest.raises(ValueError, match="already registered"):
        REGISTRY.register("queue", "qlm", QLMPolicy)


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="pull_threshold"):
        QLMOptions(pull_threshold=0)
    with pytest.raises(ValueError, match="max_group_size"):
        QLMOptions(max_group_size=0)
    with pytest.raises(ValueError, match="planner"):
        QLMOptions(planner="gurobi")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        QLMOptions(violation_prob=0.1)  # type: ignore[call-arg]
    bad: list[tuple[dict[str, Any], str]] = [
        ({"violation_probability": 1.0}, "violation_probability"),
        ({"time_limit_s": 0.0}, "time_limit_s"),
        ({"time_limit_s": math.inf}, "time_limit_s"),
        ({"group_window_s": -1.0}, "group_window_s"),
        ({"prior_output_mean": 0.0}, "prior_mean"),
        ({"prior_output_std": -1.0}, "prior_std"),
        ({"milp_window": 0}, "window"),
        ({"mip_rel_gap": 1.0}, "mip_rel_gap"),
        ({"class_weights": (("rt", 0.0),)}, "class_weights"),
        ({"class_weights": (("rt", 1.0), ("rt", 2.0))}, "twice"),
        ({"pull_threshold": 2.5}, "integer"),
        ({"max_group_size": True}, "integer"),
    ]
    for fields, message in bad:
        with pytest.raises(ValueError, match=message):
            QLMOptions(**fields)
    with pytest.raises(FrozenInstanceError):
        QLMOptions().planner = "edf"  # type: ignore[misc]


def test_the_planner_is_what_the_options_configure() -> None:
    o = QLMOptions(violation_probability=0.2, prior_output_mean=64.0, class_weights=(("rt", 4.0),))
    planner = QLMPlanner(o)
    assert planner.z == pytest.approx(z_for(0.2))
    assert planner.stats.prior_mean == 64.0
    assert planner.weights == {"rt": 4.0}
    assert QLMPlanner().weights is None
    policy = make_queue_policy("qlm", o)
    assert isinstance(policy, QLMPolicy)
    assert policy.planner.options == o
    assert policy.stats is policy.planner.stats
    noplan = make_queue_policy("qlm-noplan", o)
    assert isinstance(noplan, QLMPolicy)
    assert noplan.planner.options.planner == "edf"


def arrive(policy: object, rid: str, model: str, cls: str, now: float) -> None:
    slo = {"interactive": 20.0, "batch": 3600.0}[cls]
    policy.on_arrival(rid, model, cls, 200, slo, now)  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_every_policy_serves_every_request_once(name: str) -> None:
    policy = make_queue_policy(name, QLMOptions(pull_threshold=2, prior_output_mean=100.0))
    for k in range(5):
        arrive(policy, f"a{k}", "A", "interactive", 0.1 * k)
        arrive(policy, f"b{k}", "B", "batch", 0.1 * k)
    instances = [instance("i0"), instance("i1", active="B")]
    running: dict[str, list[RunningView]] = {"i0": [], "i1": []}
    pulled: list[str] = []
    for step in range(10):
        ops = policy.decide(instances, running, 1.0 + step)
        for op in ops:
            if isinstance(op, Pull):
                assert len(op.request_ids) == op.count
                pulled += op.request_ids
        for rid in [rid for op in ops if isinstance(op, Pull) for rid in op.request_ids]:
            policy.on_finished(rid, 100, 1.0 + step)  # served within the step
    assert sorted(pulled) == sorted([f"a{k}" for k in range(5)] + [f"b{k}" for k in range(5)])


def test_qlm_learns_output_lengths_and_refuses_unknown_requests() -> None:
    policy = QLMPolicy()
    policy.on_arrival("r0", "A", "interactive", 300, 20.0, 0.0)
    ops = policy.decide([instance("i0")], {"i0": []}, 0.5)
    assert ops == [Pull("i0", 0, 1, ("r0",))]
    assert policy.queues == {"i0": ()}
    policy.on_finished("r0", 420, 3.0)
    key = GroupKey("A", "interactive", length_bucket(300))
    assert (policy.stats.count(key), policy.stats.mean(key)) == (1, 420.0)
    with pytest.raises(ValueError, match="never arrived"):
        policy.on_finished("r0", 1, 4.0)
    policy.on_arrival("r1", "A", "interactive", 1, 20.0, 5.0)
    with pytest.raises(ValueError, match="twice"):
        policy.on_arrival("r1", "A", "interactive", 1, 20.0, 5.0)


def test_qlm_books_evictions_and_resumptions() -> None:
    policy = QLMPolicy(QLMOptions(pull_threshold=2, prior_output_mean=100.0, prior_output_std=0.0))
    running = {
        "i0": [RunningView("b0", "A", "batch", 3600.0), RunningView("b1", "A", "batch", 3601.0)]
    }
    policy.on_arrival("b0", "A", "batch", 10, 3600.0, 0.0)
    policy.on_arrival("b1", "A", "batch", 10, 3600.0, 0.0)
    policy.decide([instance("i0")], {"i0": []}, 0.0)  # both pulled
    policy.on_arrival("r0", "A", "interactive", 10, 20.0, 1.0)
    busy = instance("i0", busy=30.0)  # the batch work would hold r0 past its deadline
    ops = policy.decide([busy], running, 1.0)
    assert [type(op) for op in ops] == [Evict, SwapKV, Pull, ScaleOut]
    assert ops[0] == Evict("i0", ("b1",), ops[0].reason)  # type: ignore[union-attr]
    assert [r.request_id for r in policy.evicted["i0"]] == ["b1"]
    ops = policy.decide([instance("i0")], {"i0": [running["i0"][0]]}, 2.0)
    assert ops == [SwapKV("i0", ("b1",), "gpu")]
    assert policy.evicted["i0"] == []


def test_vllm_swaps_only_an_idle_instance_to_an_unserved_model() -> None:
    policy = make_queue_policy("vllm", QLMOptions(pull_threshold=8))
    arrive(policy, "a0", "A", "interactive", 0.0)
    arrive(policy, "c0", "C", "interactive", 0.1)
    arrive(policy, "b0", "B", "interactive", 0.2)
    i0, i1 = (
        instance("i0", models=("A", "B", "C")),
        instance("i1", active="A", models=("A", "B", "C")),
    )
    ops = policy.decide([i0, i1], {"i0": [], "i1": []}, 1.0)
    # i0 takes A's request; i1, idle with no A left, swaps to C (waiting longest).
    assert ops == [
        SwapModel("i1", "C", warm=True),
        Pull("i0", None, 1, ("a0",)),
        Pull("i1", None, 1, ("c0",)),
    ]


def test_edf_pulls_by_deadline_and_swaps_an_idle_instance() -> None:
    policy = make_queue_policy("edf", QLMOptions(pull_threshold=1))
    arrive(policy, "late", "A", "batch", 0.0)
    arrive(policy, "soon", "A", "interactive", 1.0)
    arrive(policy, "other", "B", "interactive", 1.5)
    busy = {"i0": [], "i1": [RunningView("x", "A", "batch", 9e9)]}
    ops = policy.decide([instance("i0"), instance("i1")], busy, 2.0)
    assert ops == [Pull("i0", None, 1, ("soon",))]  # i0 is then full, i1 busy: B waits
    ops = policy.decide([instance("i0"), instance("i1")], {"i0": [], "i1": []}, 3.0)
    assert ops == [
        SwapModel("i0", "B", warm=True),  # the earliest deadline's model, on an idle instance
        Pull("i0", None, 1, ("other",)),
        Pull("i1", None, 1, ("late",)),
    ]
