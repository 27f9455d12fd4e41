"""The multi-model instance: swap times, the warm LRU set, eviction and restore, accounting."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hermes.cluster.multi_model import ModelInstance, MultiModelConfig
from hermes.engine.cost_model import StepCostModel
from hermes.engine.request import EngineRequest, RequestState
from hermes.profiles import load_profile

L7 = load_profile("llama-2-7b@a100")
L8 = load_profile("llama-3-8b@a100")
L70 = load_profile("llama-2-70b@a100-tp4")
COSTS = {"llama-2-7b": L7, "llama-3-8b": L8}


def make_instance(
    active: str | None = "llama-2-7b",
    warm: Sequence[str] = (),
    cpu_memory_bytes: float = 100e9,
    cpu_kv_bytes: float = 10e9,
    **config: Any,
) -> ModelInstance:
    cfg = MultiModelConfig(cpu_memory_bytes, cpu_kv_bytes, **config)
    return ModelInstance(COSTS, cfg, active=active, warm=warm)


def run(inst: ModelInstance, now: float, until: Callable[[], bool] | None = None) -> float:
    """Step the instance from `now` until it is idle (or `until()` holds); the end time."""
    while until is None or not until():
        step = inst.plan(now)
        if step is None:
            if now < inst.free_at_s:
                now = inst.free_at_s
                continue
            return now
        inst.complete(step)
        now = step.end_s
    return now


def decode_a_little(inst: ModelInstance, now: float, seconds: float = 0.05) -> float:
    """One decode run cut short after about `seconds`."""
    step = inst.plan(now)
    assert step is not None
    assert step.decode_run
    inst.shorten(step, step.start_s + seconds)
    inst.complete(step)
    return step.end_s


def requests(n: int, prompt: int = 500, output: int = 300) -> list[EngineRequest]:
    return [EngineRequest(i, prompt, output, 0.0) for i in range(n)]


# --- swap times (docs/calibration.md) --------------------------------------------------------


def test_7b_swap_times_match_calibration() -> None:
    inst = make_instance(active="llama-3-8b", warm=["llama-2-7b"])
    warm = inst.swap_time_s("llama-2-7b")
    assert 0.5 <= warm <= 0.6  # docs/calibration.md: "7-8B ≈ 0.6 s" from host DRAM at 25 GB/s
    assert warm == pytest.approx(13.5e9 / 25e9)
    assert inst.swap_time_s("llama-3-8b") == 0.0  # active
    cold = make_instance(active="llama-3-8b").swap_time_s("llama-2-7b")
    assert cold == pytest.approx(5 * warm)  # NVMe: five times slower
    inst8 = make_instance(active="llama-2-7b", warm=["llama-3-8b"])
    assert inst8.swap_time_s("llama-3-8b") == pytest.approx(0.6, abs=0.05)


def test_70b_tp4_swap_times() -> None:
    costs = {"llama-2-70b": L70}
    per_gpu = ModelInstance(costs, MultiModelConfig(200e9, 0.0), warm=["llama-2-70b"])
    # Each of the 4 GPUs loads its quarter over its own link.
    assert per_gpu.tp == 4
    assert per_gpu.swap_time_s("llama-2-70b") == pytest.approx(138e9 / (4 * 25e9))
    one_link = ModelInstance(
        costs, MultiModelConfig(200e9, 0.0, host_links=1), warm=["llama-2-70b"]
    )
    assert one_link.swap_time_s("llama-2-70b") == pytest.approx(5.5, abs=0.1)  # calibration.md
    cold = ModelInstance(costs, MultiModelConfig(0.0, 0.0, host_links=1))
    assert cold.swap_time_s("llama-2-70b") == pytest.approx(5 * 138e9 / 25e9)


def test_engine_init_charged_on_cold_swaps_only() -> None:
    inst = make_instance(active=None, warm=["llama-3-8b"], engine_init_s=30.0)
    assert inst.swap_time_s("llama-2-7b") == pytest.approx(13.5e9 / 5e9 + 30.0)
    assert inst.swap_time_s("llama-3-8b") == pytest.approx(16.1e9 / 25e9)


def test_swap_serves_nothing_meanwhile_and_counts_by_kind() -> None:
    inst = make_instance(active="llama-2-7b")
    end = inst.begin_swap("llama-3-8b", 1.0)
    assert end == pytest.approx(1.0 + 16.1e9 / 5e9)
    assert inst.swapping
    assert inst.active_model == "llama-3-8b"
    assert inst.warm_models == ("llama-2-7b",)
    inst.add(EngineRequest("a", 100, 10, 1.0), 1.0, model="llama-3-8b")
    assert inst.plan(1.5) is None  # loading weights
    with pytest.raises(ValueError, match="ends at"):
        inst.complete_swap(end - 0.1)
    inst.complete_swap(end)
    assert not inst.swapping
    assert run(inst, end) > end
    back = inst.begin_swap("llama-2-7b", 100.0)
    assert back == pytest.approx(100.0 + 13.5e9 / 25e9)
    inst.complete_swap(back)
    assert (inst.stats.cold_swaps, inst.stats.warm_swaps) == (1, 1)
    assert inst.stats.swap_s == pytest.approx(16.1e9 / 5e9 + 13.5e9 / 25e9)
    assert inst.residence("llama-3-8b") == "warm"
    with pytest.raises(ValueError, match="already the active"):
        inst.begin_swap("llama-2-7b", back)
    with pytest.raises(ValueError, match="unknown model"):
        inst.begin_swap("gpt-5", back)


def test_a_swap_waits_for_the_one_in_progress() -> None:
    inst = make_instance(active=None)
    inst.begin_swap("llama-2-7b", 0.0)
    with pytest.raises(RuntimeError, match="in progress"):
        inst.begin_swap("llama-3-8b", 0.1)


# --- the warm set ------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    weights=st.lists(st.floats(min_value=1e9, max_value=40e9), min_size=2, max_size=5),
    budget=st.floats(min_value=0.0, max_value=100e9),
    moves=st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=25),
)
def test_warm_set_is_an_lru_within_the_cpu_budget(
    weights: list[float], budget: float, moves: list[int]
) -> None:
    names = [f"m{i}" for i in range(len(weights))]
    costs: dict[str, StepCostModel] = {
        n: dataclasses.replace(L7, name=n, weight_bytes=w)
        for n, w in zip(names, weights, strict=True)
    }
    size = dict(zip(names, weights, strict=True))
    inst = ModelInstance(costs, MultiModelConfig(budget, 0.0), active=names[0])
    active = names[0]
    lru: list[str] = []  # the reference model: least recently used first
    now = 0.0
    warm_swaps = 0
    for k in moves:
        target = names[k % len(names)]
        if target == active:
            continue
        was_warm = target in lru
        assert inst.residence(target) == ("warm" if was_warm else "cold")
        warm_swaps += was_warm
        if was_warm:
            lru.remove(target)
        if size[active] <= budget:
            lru.append(active)
            while sum(size[m] for m in lru) > budget:
                lru.pop(0)
        active = target
        end = inst.begin_swap(target, now)
        inst.complete_swap(end)
        now = end
        assert inst.active_model == active
        assert inst.warm_models == tuple(lru)
        assert active not in inst.warm_models
        assert inst.cpu_memory_used_bytes <= budget
        assert set(inst.cold_models) == set(names) - {active, *lru}
    assert inst.stats.warm_swaps == warm_swaps


def test_initial_warm_set_must_fit() -> None:
    with pytest.raises(ValueError, match="cpu_memory_bytes"):
        make_instance(active=None, warm=["llama-2-7b", "llama-3-8b"], cpu_memory_bytes=20e9)
    with pytest.raises(ValueError, match="twice"):
        make_instance(active="llama-2-7b", warm=["llama-2-7b"])


def test_a_model_too_big_for_the_budget_goes_cold() -> None:
    inst = make_instance(active="llama-3-8b", cpu_memory_bytes=15e9)
    end = inst.begin_swap("llama-2-7b", 0.0)
    inst.complete_swap(end)
    assert not inst.warm_models  # 16.1 GB > 15 GB
    assert inst.residence("llama-3-8b") == "cold"
    end = inst.begin_swap("llama-3-8b", end)
    inst.complete_swap(end)
    assert inst.warm_models == ("llama-2-7b",)  # 13.5 GB fits


# --- swapping with work outstanding --------------------------------------------------------


def test_swap_refused_while_requests_are_running_or_queued() -> None:
    inst = make_instance()
    reqs = requests(2)
    for r in reqs:
        inst.add(r, 0.0)
    with pytest.raises(RuntimeError, match=r"0 running, 2 waiting .* evict\(\) them first"):
        inst.begin_swap("llama-3-8b", 0.0)
    step = inst.plan(0.0)
    assert step is not None
    with pytest.raises(RuntimeError, match="step is in flight"):
        inst.begin_swap("llama-3-8b", 0.0)
    with pytest.raises(RuntimeError, match="step is in flight"):
        inst.evict(reqs, 0.0)
    inst.complete(step)
    with pytest.raises(RuntimeError, match="2 running"):
        inst.begin_swap("llama-3-8b", step.end_s)
    inst.evict(reqs, step.end_s)
    assert inst.idle
    inst.begin_swap("llama-3-8b", step.end_s)  # now allowed


# --- eviction and restore ------------------------------------------------------------------


def test_evict_swap_restore_round_trip_keeps_progress() -> None:
    inst = make_instance(cpu_kv_bytes=10e9)
    reqs = requests(3, prompt=500, output=300)
    for r in reqs:
        inst.add(r, 0.0)
    now = run(inst, 0.0, until=lambda: all(r.first_token_s is not None for r in reqs))
    now = decode_a_little(inst, now)
    progress = [r.generated for r in reqs]
    first = [r.first_token_s for r in reqs]
    assert all(0 < g < 300 for g in progress)
    computed = [r.num_computed for r in reqs]
    assert computed == [500 + g - 1 for g in progress]

    out = inst.evict(reqs, now)
    kv_bytes = sum(computed) * L7.kv_bytes_per_token
    assert out.bytes_copied == kv_bytes
    assert out.seconds == pytest.approx(kv_bytes / 25e9)
    assert out.recompute == ()
    assert inst.cpu_kv_used_bytes == kv_bytes
    assert inst.idle
    assert inst.evicted == tuple(reqs)
    assert all(r.state is RequestState.ABORTED for r in reqs)
    assert inst.plan(now) is None  # copying KV out
    assert inst.free_at_s == pytest.approx(now + out.seconds)

    # Serve another model meanwhile.
    end = inst.begin_swap("llama-3-8b", now)
    assert end == pytest.approx(now + out.seconds + 16.1e9 / 5e9)  # after the copy
    inst.complete_swap(end)
    other = EngineRequest("other", 200, 50, end)
    inst.add(other, end)
    now = run(inst, end)
    assert other.state is RequestState.FINISHED
    with pytest.raises(ValueError, match="is for 'llama-2-7b'"):
        inst.restore(reqs, now)
    end = inst.begin_swap("llama-2-7b", now)
    inst.complete_swap(end)

    engine = inst.engine
    assert engine is not None
    prefill_before = engine.stats.prefill_tokens
    back = inst.restore(reqs, end)
    assert back.bytes_copied == kv_bytes
    assert back.seconds == pytest.approx(kv_bytes / 25e9)
    assert back.start_s == end
    assert inst.cpu_kv_used_bytes == 0
    assert inst.evicted == ()
    now = run(inst, end)
    assert now > back.done_s
    for r, f in zip(reqs, first, strict=True):
        assert r.state is RequestState.FINISHED
        assert r.generated == r.output_tokens == 300
        assert r.num_tokens == 800
        assert r.first_token_s == f  # TTFT is the original one
    assert engine.stats.prefill_tokens == prefill_before  # the KV came back: no recompute
    engine.check_invariants()


def test_kv_beyond_the_cpu_budget_is_recomputed() -> None:
    per_token = L7.kv_bytes_per_token
    inst = make_instance(cpu_kv_bytes=700 * per_token)  # room for one request's KV
    reqs = requests(2, prompt=500, output=300)
    for r in reqs:
        inst.add(r, 0.0)
    now = run(inst, 0.0, until=lambda: all(r.first_token_s is not None for r in reqs))
    now = decode_a_little(inst, now)
    lost = reqs[1].num_computed
    out = inst.evict(reqs, now)
    assert out.recompute == (reqs[1],)
    assert out.bytes_copied == reqs[0].num_computed * per_token
    assert inst.cpu_kv_used_bytes <= 700 * per_token
    assert inst.stats.recomputed == 1

    engine = inst.engine
    assert engine is not None
    prefill_before = engine.stats.prefill_tokens
    back = inst.restore(reqs, out.done_s)
    assert back.recompute == (reqs[1],)
    assert back.bytes_copied == out.bytes_copied
    run(inst, out.done_s)
    assert all(r.generated == 300 and r.state is RequestState.FINISHED for r in reqs)
    # The dropped request prefilled its prompt and generated tokens again.
    assert engine.stats.prefill_tokens - prefill_before == lost + 1


@settings(max_examples=40, deadline=None)
@given(
    budget_tokens=st.integers(min_value=0, max_value=4000),
    prompts=st.lists(st.integers(min_value=1, max_value=1500), min_size=1, max_size=6),
)
def test_cpu_kv_budget_is_never_exceeded(budget_tokens: int, prompts: list[int]) -> None:
    per_token = L7.kv_bytes_per_token
    budget = budget_tokens * per_token
    inst = make_instance(cpu_kv_bytes=budget)
    reqs = [EngineRequest(i, p, 20, 0.0) for i, p in enumerate(prompts)]
    for r in reqs:
        inst.add(r, 0.0)
    step = inst.plan(0.0)  # one iteration: some prefill chunks, maybe some still waiting
    assert step is not None
    inst.complete(step)
    computed = {r.id: r.num_computed for r in reqs}
    out = inst.evict(reqs, step.end_s)
    assert inst.cpu_kv_used_bytes <= budget
    kept = [r for r in reqs if r not in out.recompute and computed[r.id] > 0]
    assert out.bytes_copied == sum(computed[r.id] for r in kept) * per_token
    assert inst.cpu_kv_used_bytes == out.bytes_copied
    inst.restore(reqs, out.done_s)
    run(inst, out.done_s)
    assert all(r.generated == 20 for r in reqs)
    assert inst.cpu_kv_used_bytes == 0


def test_evict_waiting_requests_and_abort_evicted_ones() -> None:
    inst = make_instance()
    a, b = requests(2)
    inst.add(a, 0.0)
    inst.add(b, 0.0)
    out = inst.evict([a, b], 0.0)
    assert (out.bytes_copied, out.seconds, out.recompute) == (0.0, 0.0, ())
    with pytest.raises(ValueError, match="is evicted"):
        inst.add(a, 0.0)
    with pytest.raises(ValueError, match="not queued"):
        inst.evict([a], 0.0)
    assert inst.abort(a, 0.0)
    assert inst.evicted == (b,)
    with pytest.raises(ValueError, match="not evicted"):
        inst.restore([a], 0.0)
    inst.restore([b], 0.0)
    run(inst, 0.0)
    assert b.generated == b.output_tokens


# --- what a planner reads, and accounting ----------------------------------------------------


def test_utilisation_counts_steps_and_swaps() -> None:
    inst = make_instance(active=None)
    assert inst.utilisation(0.0) == 0.0
    end = inst.begin_swap("llama-2-7b", 0.0)
    assert end == pytest.approx(2.7)
    assert inst.busy_s(1.0) == pytest.approx(1.0)  # part of the swap so far
    inst.complete_swap(end)
    assert inst.utilisation(10.0) == pytest.approx(2.7 / 10.0)
    reqs = requests(4, prompt=300, output=40)
    for r in reqs:
        inst.add(r, 10.0)
    done = run(inst, 10.0)
    engine = inst.engine
    assert engine is not None
    assert inst.stats.steps_s == pytest.approx(engine.stats.busy_s)
    assert inst.busy_s(done) == pytest.approx(2.7 + (done - 10.0))  # back-to-back steps
    assert inst.utilisation(2 * done) == pytest.approx((2.7 + done - 10.0) / (2 * done))
    assert 0 <= inst.utilisation(done) <= 1


def test_throughput_prior_then_measured() -> None:
    inst = make_instance()
    prior = inst.throughput()
    assert 500 < prior < 5000  # tokens/s: 7B on an A100 at batch 32
    assert inst.throughput("llama-3-8b") > 0
    reqs = requests(1, prompt=100, output=400)
    inst.add(reqs[0], 0.0)
    done = run(inst, 0.0)
    measured = 400 / done  # batch 1 is far slower per second than batch 32
    after = inst.throughput()
    assert measured < after < prior
    assert abs(after - measured) < abs(prior - measured)


def test_drain_time() -> None:
    inst = make_instance(active=None)
    assert inst.drain_time_s(0.0) == 0.0
    end = inst.begin_swap("llama-2-7b", 0.0)
    assert inst.drain_time_s(0.0) == pytest.approx(end)
    inst.complete_swap(end)
    reqs = requests(8, prompt=300, output=100)
    for r in reqs:
        inst.add(r, end)
    estimate = inst.drain_time_s(end)
    assert estimate > 0
    done = run(inst, end)
    assert 0.2 < estimate / (done - end) < 5  # a rough but sane estimate
    assert inst.drain_time_s(done) == 0.0


def test_ready_s_and_swap_times() -> None:
    inst = make_instance(active="llama-2-7b", warm=["llama-3-8b"])
    times = inst.swap_times()
    assert times["llama-2-7b"] == 0.0
    assert inst.ready_s("llama-3-8b", 3.0) == pytest.approx(3.0 + times["llama-3-8b"])


def test_configuration_is_validated() -> None:
    with pytest.raises(ValueError, match="cpu_memory_bytes"):
        MultiModelConfig(-1.0, 0.0)
    with pytest.raises(ValueError, match="host_to_gpu_bytes_per_s"):
        MultiModelConfig(0.0, 0.0, host_to_gpu_bytes_per_s=0.0)
    with pytest.raises(ValueError, match="host_links"):
        MultiModelConfig(0.0, 0.0, host_links=0)
    with pytest.raises(ValueError, match="cpu_kv_bytes"):
        MultiModelConfig(0.0, math.nan)
    with pytest.raises(ValueError, match="share one GPU type and tp"):
        ModelInstance({"a": L7, "b": L70}, MultiModelConfig(0.0, 0.0))
    with pytest.raises(ValueError, match="at least one model"):
        ModelInstance({}, MultiModelConfig(0.0, 0.0))
    inst = ModelInstance(COSTS, MultiModelConfig(0.0, 0.0))
    with pytest.raises(RuntimeError, match="no model is loaded"):
        inst.add(EngineRequest(0, 10, 10, 0.0), 0.0)
    assert inst.plan(0.0) is None
