"""The vLLM-style engine model: batch selection, KV accounting, preemption, decode runs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hermes.engine.engine_config import EngineConfig
from hermes.engine.kv_pool import BlockPool
from hermes.engine.request import EngineRequest, RequestState
from hermes.engine.scheduler import Engine
from hermes.profiles import load_profile

MODEL = load_profile("llama-2-7b@a100")


def drive(engine: Engine, requests: Sequence[EngineRequest], check: bool = True) -> float:
    """Feed requests at their arrival times; cut decode runs at arrivals; return the end time."""
    pending = sorted(requests, key=lambda r: r.arrival_s)
    now = 0.0
    k = 0
    while k < len(pending) or not engine.idle:
        while k < len(pending) and pending[k].arrival_s <= now:
            engine.add(pending[k], pending[k].arrival_s)
            k += 1
        step = engine.plan(now)
        if step is None:
            if k == len(pending):
                break
            now = pending[k].arrival_s
            continue
        while k < len(pending) and pending[k].arrival_s < step.end_s:
            engine.shorten(step, pending[k].arrival_s)
            if pending[k].arrival_s >= step.end_s:
                break
            engine.add(pending[k], pending[k].arrival_s)
            k += 1
        engine.complete(step)
        if check:
            engine.check_invariants()
        now = step.end_s
    return now


def make(n: int, prompt: int = 100, output: int = 20, gap: float = 0.0) -> list[EngineRequest]:
    return [EngineRequest(i, prompt, output, i * gap, priority=i * gap) for i in range(n)]


def test_block_pool_counts_and_refuses() -> None:
    pool = BlockPool(10, block_size=16)
    assert pool.blocks_for(0) == 0
    assert pool.blocks_for(16) == 1
    assert pool.blocks_for(17) == 2
    pool.allocate(7)
    assert (pool.free, pool.used) == (3, 7)
    assert not pool.fits(4)
    with pytest.raises(ValueError, match="cannot allocate 4"):
        pool.allocate(4)
    with pytest.raises(ValueError, match="cannot release 8"):
        pool.release(8)
    with pytest.raises(ValueError, match="total"):
        BlockPool(-1)


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match="max_num_seqs"):
        EngineConfig(max_num_seqs=0)
    with pytest.raises(ValueError, match="preemption_mode"):
        EngineConfig(preemption_mode="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        EngineConfig(gpu_memory_utilization=1.5)


def test_pool_sized_from_the_cost_model() -> None:
    engine = Engine(MODEL)
    assert engine.gpu.total == MODEL.kv_capacity_tokens(0.9) // 16
    assert engine.gpu.total > 0
    # 4 GiB of swap space at 8 MiB per 16-token block of Llama-2-7B.
    assert engine.cpu.total == 4 * 2**30 // (16 * 524_288)


def test_single_request_timeline() -> None:
    engine = Engine(MODEL)
    req = EngineRequest("a", prompt_tokens=1000, output_tokens=5, arrival_s=0.0)
    end = drive(engine, [req])
    assert req.state is RequestState.FINISHED
    prefill = MODEL.step_time_s(1000, 0, 0, 1000 * 500.0, 1)
    assert req.first_token_s == pytest.approx(prefill)
    decode = sum(MODEL.step_time_s(1, 1, 1000 + m, 0.0, 1) for m in range(1, 5))
    assert req.finish_s == pytest.approx(prefill + decode)
    assert end == req.finish_s
    assert req.generated == 5
    assert engine.gpu.used == 0
    values, weights = engine.itl_samples()
    assert weights.sum() == 4
    assert float((values * weights).sum()) == pytest.approx(decode)


def test_step_result_reports_first_tokens_and_finishes() -> None:
    engine = Engine(MODEL)
    req = EngineRequest("a", 100, 2, 0.0)
    engine.add(req, 0.0)
    step = engine.plan(0.0)
    assert step is not None
    result = engine.complete(step)
    assert (result.first_tokens, result.finished, result.tokens) == ([req], [], 1)
    step = engine.plan(step.end_s)
    assert step is not None
    result = engine.complete(step)
    assert (result.first_tokens, result.finished, result.tokens) == ([], [req], 1)


def test_chunked_prefill_respects_the_token_budget() -> None:
    engine = Engine(MODEL, EngineConfig(max_num_batched_tokens=512))
    req = EngineRequest("a", 1300, 2, 0.0)
    engine.add(req, 0.0)
    sizes = []
    while req.first_token_s is None:
        step = engine.plan(0.0)
        assert step is not None
        sizes.append(step.chunks[0][1])
        engine.complete(step)
        engine.check_invariants()
    assert sizes == [512, 512, 276]


def test_rejections_carry_a_reason() -> None:
    engine = Engine(MODEL, EngineConfig(max_model_len=4096, num_gpu_blocks=100))
    long = EngineRequest("long", 4000, 97, 0.0)
    big = EngineRequest("big", 1600, 10, 0.0)  # 1609 tokens need 101 blocks of 16
    empty = EngineRequest("empty", 10, 0, 0.0)
    ok = EngineRequest("ok", 1500, 10, 0.0)
    assert not engine.add(long, 0.0)
    assert long.reason is not None
    assert "max_model_len 4096" in long.reason
    assert not engine.add(big, 0.0)
    assert big.reason is not None
    assert "101 KV blocks" in big.reason
    assert not engine.add(empty, 0.0)
    assert empty.reason is not None
    assert "output_tokens (0)" in empty.reason
    assert engine.add(ok, 0.0)
    assert [r.state for r in (long, big, empty)] == [RequestState.REJECTED] * 3
    drive(engine, [])
    assert ok.state is RequestState.FINISHED


def test_waiting_queue_follows_priority_then_arrival() -> None:
    engine = Engine(MODEL, EngineConfig(max_num_seqs=1))
    reqs = [EngineRequest(i, 50, 3, arrival_s=0.0, priority=p) for i, p in enumerate([3, 1, 2, 1])]
    drive(engine, reqs)
    order = sorted(reqs, key=lambda r: r.finish_s or math.inf)
    assert [r.id for r in order] == [1, 3, 2, 0]


def test_priority_changes_take_effect_at_the_next_iteration() -> None:
    engine = Engine(MODEL, EngineConfig(max_num_seqs=1))
    a, b, c = (EngineRequest(i, 50, 3, 0.0, priority=i) for i in range(3))
    for r in (a, b, c):
        engine.add(r, 0.0)
    engine.set_priority(c, -1.0)
    drive(engine, [])
    assert c.finish_s is not None
    assert a.finish_s is not None
    assert b.finish_s is not None
    assert c.finish_s < a.finish_s < b.finish_s


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_preemption_under_kv_pressure(mode: str) -> None:
    cfg = EngineConfig(num_gpu_blocks=40, preemption_mode=mode)  # type: ignore[arg-type]
    engine = Engine(MODEL, cfg)
    reqs = [EngineRequest(i, 150, 200, 0.0, priority=float(i)) for i in range(4)]
    drive(engine, reqs)
    assert all(r.state is RequestState.FINISHED for r in reqs)
    assert all(r.generated == 200 for r in reqs)
    assert engine.stats.preemptions > 0
    # The victim is always the lowest-priority running request: request 0 never gives way.
    assert reqs[0].preemptions == 0
    assert sum(r.preemptions for r in reqs) == engine.stats.preemptions
    if mode == "swap":
        assert engine.stats.swapped_blocks > 0
    else:
        assert engine.stats.swapped_blocks == 0
    assert engine.gpu.used == 0
    assert engine.cpu.used == 0


def test_custom_victim_policy_is_used() -> None:
    chosen: list[object] = []

    def earliest(running: Sequence[EngineRequest]) -> EngineRequest:
        victim = min(running, key=lambda r: r.seq)
        chosen.append(victim.id)
        return victim

    engine = Engine(MODEL, EngineConfig(num_gpu_blocks=40), victim=earliest)
    drive(engine, [EngineRequest(i, 150, 200, 0.0) for i in range(4)])
    assert chosen
    assert chosen[0] == 0


def test_decode_runs_cut_short_by_arrivals() -> None:
    engine = Engine(MODEL)
    a = EngineRequest("a", 100, 500, 0.0)
    engine.add(a, 0.0)
    first = engine.plan(0.0)
    assert first is not None
    assert first.iterations == 1
    engine.complete(first)
    run = engine.plan(first.end_s)
    assert run is not None
    assert run.iterations == 499
    t = first.end_s + 0.1
    end = engine.shorten(run, t)
    assert end >= t
    assert run.iterations >= 1
    step_before = end - run.start_s - (run.iterations - 1) * run.first_s
    assert end - step_before < t or run.iterations == 1
    engine.complete(run)
    engine.check_invariants()
    assert a.generated == 1 + run.iterations


requests_strategy = st.lists(
    st.tuples(
        st.floats(0.0, 2.0),
        st.integers(1, 1500),
        st.integers(1, 300),
        st.floats(0.0, 10.0),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=250, deadline=None)
@given(
    requests_strategy,
    st.sampled_from([24, 60, 200, 5000]),
    st.sampled_from([64, 512, 2048]),
    st.sampled_from([2, 8, 256]),
    st.sampled_from(["recompute", "swap"]),
)
def test_engine_invariants_and_runs_equal_single_steps(
    spec: list[tuple[float, int, int, float]],
    blocks: int,
    budget: int,
    seqs: int,
    mode: str,
) -> None:
    cfg = EngineConfig(
        num_gpu_blocks=blocks,
        max_num_batched_tokens=budget,
        max_num_seqs=seqs,
        preemption_mode=mode,  # type: ignore[arg-type]
        num_cpu_blocks=50,
    )

    def build() -> list[EngineRequest]:
        return [
            EngineRequest(i, p, o, arrival_s=t, priority=pr) for i, (t, p, o, pr) in enumerate(spec)
        ]

    fast, slow = build(), build()
    drive(Engine(MODEL, cfg), fast)
    drive(Engine(MODEL, cfg, decode_runs=False), slow)
    for f, s in zip(fast, slow, strict=True):
        # Every admitted request finishes; every other one is rejected with a reason.
        assert f.state in (RequestState.FINISHED, RequestState.REJECTED)
        assert (f.state is RequestState.REJECTED) == (f.reason is not None)
        assert f.state is s.state
        if f.state is RequestState.FINISHED:
            # Token conservation: exactly the requested output, the prompt fully computed.
            assert f.generated == f.output_tokens
            assert f.num_tokens == f.prompt_tokens + f.output_tokens
            assert f.first_token_s is not None
            assert f.finish_s is not None
            assert f.arrival_s <= f.first_token_s <= f.finish_s
            assert f.first_token_s == pytest.approx(s.first_token_s, rel=1e-9, abs=1e-12)
            assert f.finish_s == pytest.approx(s.finish_s, rel=1e-9, abs=1e-12)
            assert f.preemptions == s.preemptions


def test_abort_in_every_state_frees_its_blocks() -> None:
    cfg = EngineConfig(num_gpu_blocks=40, num_cpu_blocks=40, preemption_mode="swap")
    engine = Engine(MODEL, cfg, decode_runs=False)
    reqs = [EngineRequest(i, 150, 200, 0.0, priority=float(i)) for i in range(4)]
    for r in reqs:
        engine.add(r, 0.0)
    now = 0.0
    seen: set[RequestState] = set()
    while not any(r.state is RequestState.SWAPPED for r in reqs):
        step = engine.plan(now)
        assert step is not None
        engine.complete(step)
        now = step.end_s
    seen = {r.state for r in reqs}
    assert {RequestState.RUNNING, RequestState.SWAPPED} <= seen
    swapped = next(r for r in reqs if r.state is RequestState.SWAPPED)
    running = next(r for r in reqs if r.state is RequestState.RUNNING)
    cpu_used = engine.cpu.used
    assert engine.abort(swapped, now)
    assert engine.cpu.used == cpu_used - engine.gpu.blocks_for(swapped.num_computed)
    gpu_used = engine.gpu.used
    assert engine.abort(running, now)
    assert engine.gpu.used == gpu_used - engine.gpu.blocks_for(running.num_computed)
    for r in (swapped, running):
        assert (r.state, r.finish_s, r.blocks, r.done) == (RequestState.ABORTED, now, 0, True)
        assert not engine.abort(r, now)  # already aborted
    engine.check_invariants()
    late = EngineRequest("late", 10, 5, now, priority=-1.0)
    engine.add(late, now)
    assert late.state is RequestState.WAITING
    assert engine.abort(late, now)
    assert not engine.abort(EngineRequest("stranger", 10, 5, now), now)  # never added
    rejected = EngineRequest("huge", 10_000, 5, now)
    assert not engine.add(rejected, now)
    assert not engine.abort(rejected, now)
    drive(engine, [])
    finished = [r for r in reqs if r.state is RequestState.FINISHED]
    assert len(finished) == 2
    assert not engine.abort(finished[0], now)
    assert (engine.gpu.used, engine.cpu.used) == (0, 0)


def test_abort_during_a_step_in_flight_drops_the_request_at_completion() -> None:
    engine = Engine(MODEL)
    a, b = EngineRequest("a", 100, 50, 0.0), EngineRequest("b", 100, 50, 0.0)
    engine.add(a, 0.0)
    engine.add(b, 0.0)
    step = engine.plan(0.0)
    assert step is not None
    assert engine.abort(a, 0.001)  # mid-prefill
    assert a.blocks == 0
    assert engine.gpu.used == b.blocks
    result = engine.complete(step)
    assert (result.first_tokens, result.finished, result.tokens) == ([b], [], 1)
    assert a.generated == 0
    assert a.first_token_s is None
    engine.check_invariants()
    run = engine.plan(step.end_s)
    assert run is not None
    assert run.decode_run
    assert engine.abort(b, step.end_s + 0.001)
    end = engine.shorten(run, step.end_s + 0.001)
    result = engine.complete(run)
    assert (result.first_tokens, result.finished, result.tokens) == ([], [], 0)
    assert b.generated == 1
    assert engine.idle
    assert engine.plan(end) is None
    engine.check_invariants()
    assert engine.gpu.used == 0


def drive_with_aborts(
    engine: Engine, requests: Sequence[EngineRequest], aborts: Sequence[tuple[float, int]]
) -> None:
    """`drive`, plus `(time, index)` aborts; checks invariants and every StepResult."""
    events = sorted(
        [(r.arrival_s, 0, r) for r in requests]
        + [(t, 1, requests[i % len(requests)]) for t, i in aborts],
        key=lambda e: (e[0], e[1]),
    )
    aborted: set[int] = set()
    k = 0
    now = 0.0

    def apply(t: float, kind: int, r: EngineRequest) -> None:
        if kind == 0:
            engine.add(r, t)
            return
        was_live = r.state in (RequestState.WAITING, RequestState.RUNNING, RequestState.SWAPPED)
        if engine.abort(r, t):
            assert was_live
            assert r.seq >= 0  # it was added
            aborted.add(id(r))
            assert (r.state, r.finish_s, r.blocks) == (RequestState.ABORTED, t, 0)
        else:
            assert not was_live or r.seq < 0

    while k < len(events) or not engine.idle:
        while k < len(events) and events[k][0] <= now:
            apply(*events[k])
            k += 1
        step = engine.plan(now)
        if step is None:
            if k == len(events):
                break
            now = events[k][0]
            continue
        while k < len(events) and events[k][0] < step.end_s:
            engine.shorten(step, events[k][0])
            if events[k][0] >= step.end_s:
                break
            apply(*events[k])
            k += 1
        result = engine.complete(step)
        for r in (*result.finished, *result.first_tokens):
            assert id(r) not in aborted
        engine.check_invariants()
        now = step.end_s


@settings(max_examples=150, deadline=None)
@given(
    requests_strategy,
    st.lists(st.tuples(st.floats(0.0, 3.0), st.integers(0, 24)), max_size=10),
    st.sampled_from([24, 60, 200]),
    st.sampled_from([64, 2048]),
    st.sampled_from([2, 256]),
    st.sampled_from(["recompute", "swap"]),
)
def test_random_aborts_keep_invariants_and_runs_equal_single_steps(
    spec: list[tuple[float, int, int, float]],
    aborts: list[tuple[float, int]],
    blocks: int,
    budget: int,
    seqs: int,
    mode: str,
) -> None:
    cfg = EngineConfig(
        num_gpu_blocks=blocks,
        max_num_batched_tokens=budget,
        max_num_seqs=seqs,
        preemption_mode=mode,  # type: ignore[arg-type]
        num_cpu_blocks=50,
    )

    def build() -> list[EngineRequest]:
        return [
            EngineRequest(i, p, o, arrival_s=t, priority=pr) for i, (t, p, o, pr) in enumerate(spec)
        ]

    fast, slow = build(), build()
    fast_engine, slow_engine = Engine(MODEL, cfg), Engine(MODEL, cfg, decode_runs=False)
    drive_with_aborts(fast_engine, fast, aborts)
    drive_with_aborts(slow_engine, slow, aborts)
    for engine in (fast_engine, slow_engine):
        assert engine.idle
        assert (engine.gpu.used, engine.cpu.used) == (0, 0)
    for f, s in zip(fast, slow, strict=True):
        assert f.state in (RequestState.FINISHED, RequestState.REJECTED, RequestState.ABORTED)
        assert f.state is s.state
        assert f.finish_s is not None
        assert f.finish_s == pytest.approx(s.finish_s, rel=1e-9, abs=1e-12)
        assert f.generated == s.generated
        if f.state is RequestState.FINISHED:
            assert f.generated == f.output_tokens
        elif f.state is RequestState.ABORTED:
            assert f.generated < f.output_tokens
