"""`vllm-shared` (issue 19): one first-come-first-served queue in front of GPUs that the models
share, as vLLM instances with sleep mode behind a naive router."""

from __future__ import annotations

from hermes.policies.qlm import InstanceView, Pull, QLMOptions, RunningView, SwapModel
from hermes.policies.registry import make_queue_policy

MODELS = ("A", "B", "C")


def instance(name: str, active: str) -> InstanceView:
    swap_s = {m: 0.0 if m == active else 3.0 for m in MODELS}
    return InstanceView(name, active, frozenset(MODELS) - {active}, swap_s, 100.0)


def running(*ids: str, model: str = "A") -> list[RunningView]:
    return [RunningView(r, model, "batch", 3600.0) for r in ids]


def arrive(policy: object, rid: str, model: str, now: float) -> None:
    policy.on_arrival(rid, model, "batch", 200, 60.0, now)  # type: ignore[attr-defined]


def test_the_head_of_the_queue_blocks_everything_behind_it() -> None:
    policy = make_queue_policy("vllm-shared", QLMOptions(pull_threshold=2))
    arrive(policy, "a0", "A", 0.0)
    arrive(policy, "b0", "B", 0.1)
    insts = [instance("i0", "A"), instance("i1", "B")]
    # i0 (A) is full: a0 waits, and b0 behind it waits too though i1 (B) has room.
    ops = policy.decide(insts, {"i0": running("x", "y"), "i1": []}, 1.0)
    assert ops == []
    ops = policy.decide(insts, {"i0": running("x"), "i1": []}, 2.0)
    assert ops == [Pull("i0", None, 1, ("a0",)), Pull("i1", None, 1, ("b0",))]
    # The same requests under `vllm` (a queue per model): b0 does not wait for a0.
    per_model = make_queue_policy("vllm", QLMOptions(pull_threshold=2))
    arrive(per_model, "a0", "A", 0.0)
    arrive(per_model, "b0", "B", 0.1)
    ops = per_model.decide(insts, {"i0": running("x", "y"), "i1": []}, 1.0)
    assert ops == [Pull("i1", None, 1, ("b0",))]


def test_a_model_no_gpu_holds_takes_an_idle_one_at_once() -> None:
    policy = make_queue_policy("vllm-shared", QLMOptions(pull_threshold=4))
    arrive(policy, "c0", "C", 0.0)
    arrive(policy, "a0", "A", 0.1)
    insts = [instance("i0", "A"), instance("i1", "B")]
    ops = policy.decide(insts, {"i0": running("x"), "i1": []}, 1.0)
    assert ops == [
        SwapModel("i1", "C", warm=True),
        Pull("i1", None, 1, ("c0",)),
        Pull("i0", None, 1, ("a0",)),
    ]


def test_a_busy_gpu_is_drained_before_it_swaps_and_takes_nothing_meanwhile() -> None:
    policy = make_queue_policy("vllm-shared", QLMOptions(pull_threshold=4))
    arrive(policy, "c0", "C", 0.0)
    arrive(policy, "a0", "A", 0.1)
    insts = [instance("i0", "A"), instance("i1", "B")]
    # Both busy: the least busy (i1) drains for C; a0, behind c0, waits.
    ops = policy.decide(insts, {"i0": running("x", "y"), "i1": running("z", model="B")}, 1.0)
    assert ops == []
    arrive(policy, "b0", "B", 1.5)
    ops = policy.decide(insts, {"i0": running("x", "y"), "i1": running("z", model="B")}, 2.0)
    assert ops == []  # i1 takes no more B while it drains; c0 still heads the queue
    ops = policy.decide(insts, {"i0": running("x", "y"), "i1": []}, 3.0)
    assert ops == [
        SwapModel("i1", "C", warm=True),
        Pull("i1", None, 1, ("c0",)),
        Pull("i0", None, 1, ("a0",)),
    ]
    # B, now on no GPU, heads the queue: in its turn it drains the least busy GPU, i1 (C),
    # although that one has just swapped in: a naive router thrashes.
    insts = [instance("i0", "A"), instance("i1", "C")]
    ops = policy.decide(insts, {"i0": running("a0"), "i1": running("c0", model="C")}, 4.0)
    assert ops == []
    ops = policy.decide(insts, {"i0": running("a0"), "i1": []}, 5.0)
    assert ops == [SwapModel("i1", "B", warm=True), Pull("i1", None, 1, ("b0",))]
