"""The BROS engine: RT requests ahead of a BE backlog, iterations capped for RT's pace, BE
memory taken for RT (lazily with bidirectional blocks), and the bookkeeping consistent at
every step."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hermes.engine.bros_engine import BrosEngine
from hermes.engine.catalog import make_engine
from hermes.engine.engine_config import EngineConfig
from hermes.engine.interface import LLMEngine
from hermes.engine.request import EngineRequest, RequestState
from hermes.engine.rt_pace import AdaptiveCap, BrosOptions, next_deadline
from hermes.engine.scheduler import Engine
from hermes.policies.slo_class import class_priority
from hermes.profiles import load_profile

COST = load_profile("llama-2-7b", "a100", None)
TTFT, TPOT = 1.0, 0.06


def rt(i: int, arrival: float, prompt: int = 300, output: int = 40) -> EngineRequest:
    return EngineRequest(
        ("rt", i), prompt, output, arrival, slo_class="rt", ttft_slo_s=TTFT, tpot_slo_s=TPOT
    )


def be(i: int, arrival: float, prompt: int = 800, output: int = 80) -> EngineRequest:
    return EngineRequest(("be", i), prompt, output, arrival, slo_class="be")


def drive(
    engine: LLMEngine,
    rts: list[EngineRequest],
    bes: list[EngineRequest],
    until: float = 1e9,
    check: bool = True,
) -> list[float]:
    """Run to completion (or `until`); the iteration times."""
    pending = sorted(rts, key=lambda r: r.arrival_s)
    for r in bes:
        engine.add(r, r.arrival_s)
    now, times = 0.0, []
    while now < until:
        while pending and pending[0].arrival_s <= now:
            r = pending.pop(0)
            engine.add(r, r.arrival_s)
        step = engine.plan(now)
        if step is None:
            if not pending:
                break
            now = pending[0].arrival_s
            continue
        times.append(step.end_s - step.start_s)
        now = step.end_s
        engine.complete(step)
        if check:
            engine.check_invariants()
    return times


def workload(
    seed: int, n_rt: int, n_be: int, rate: float
) -> tuple[list[EngineRequest], list[EngineRequest]]:
    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1 / rate, n_rt))
    rts = [
        rt(i, float(a), int(rng.integers(50, 1500)), int(rng.integers(2, 200)))
        for i, a in enumerate(arrivals)
    ]
    bes = [
        be(i, 0.0, int(rng.integers(512, 1025)), int(rng.integers(32, 129))) for i in range(n_be)
    ]
    return rts, bes


@pytest.mark.parametrize("policy", ["bros", "bros-nobidir"])
def test_every_request_finishes_with_consistent_bookkeeping_under_memory_pressure(
    policy: str,
) -> None:
    # A small KV pool (600 blocks): BE work must give way to RT requests again and again.
    cfg = EngineConfig(num_gpu_blocks=600, num_cpu_blocks=400)
    engine = make_engine(policy, COST, cfg)
    rts, bes = workload(1, 60, 60, rate=4.0)
    drive(engine, rts, bes)
    assert isinstance(engine, BrosEngine)
    assert engine.idle
    for r in rts + bes:
        assert r.state is RequestState.FINISHED, r
        assert r.generated == r.output_tokens
    assert engine.bros.suspensions > 0  # the pressure was real
    assert engine.cpu_slots_used == 0


def test_rt_requests_overtake_a_be_backlog() -> None:
    ttft = {}
    for policy in ("vllm", "bros"):
        engine = make_engine(policy, COST, EngineConfig())
        rts, bes = workload(2, 30, 200, rate=2.0)
        for r in rts + bes:
            r.priority = class_priority(policy, r.slo_class)
        drive(engine, rts, bes, check=False)
        firsts = [r.first_token_s for r in rts]
        assert all(t is not None for t in firsts)
        ttft[policy] = float(
            np.mean([t - r.arrival_s for t, r in zip(firsts, rts, strict=True) if t])
        )
    assert ttft["bros"] < TTFT < ttft["vllm"]
    assert ttft["bros"] < ttft["vllm"] / 5


def test_iterations_are_capped_while_rt_requests_decode() -> None:
    engine = BrosEngine(COST, EngineConfig())
    plain = Engine(COST, EngineConfig())
    r_b, r_p = rt(0, 0.0, 200, 300), rt(0, 0.0, 200, 300)
    bes_b = [be(i, 0.0) for i in range(150)]
    bes_p = [be(i, 0.0) for i in range(150)]
    t_b = drive(engine, [r_b], bes_b, until=10.0)
    t_p = drive(plain, [r_p], bes_p, until=10.0, check=False)
    # vLLM's batches of BE prefill make iterations longer than the RT pace; BROS's do not,
    # beyond the few the cap needs to find its level.
    assert max(t_p) > TPOT
    assert np.mean(np.array(t_b) > TPOT) < 0.05
    assert r_b.first_token_s is not None
    done = r_b.generated - 1
    assert done > 0
    assert r_b.last_token_s is not None
    assert (r_b.last_token_s - r_b.first_token_s) / done <= TPOT


def test_bidirectional_blocks_checkpoint_only_what_rt_overwrites() -> None:
    first, total, victim_kv = {}, {}, {}
    for policy in ("bros", "bros-nobidir"):
        # BE requests fill the pool; one long RT prompt arrives and needs part of it.
        cfg = EngineConfig(num_gpu_blocks=300, num_cpu_blocks=1000)
        engine = make_engine(policy, COST, cfg)
        assert isinstance(engine, BrosEngine)
        bes = [be(i, 0.0, 1000, 100) for i in range(4)]
        drive(engine, [], bes, until=0.3)  # prefilled, decoding, the pool nearly full
        victim = bes[-1]  # the latest arrival gives way
        victim_kv[policy] = victim.num_computed
        r = rt(0, 0.3, 900, 5)
        engine.add(r, 0.3)
        step = engine.plan(0.3)
        assert step is not None
        engine.complete(step)
        assert victim.state is RequestState.SWAPPED
        first[policy] = engine.bros.checkpoint_slots
        drive(engine, [], [])
        assert r.state is RequestState.FINISHED
        assert all(b.state is RequestState.FINISHED for b in bes)
        total[policy] = engine.bros.checkpoint_slots
    # Swapping copies the victim whole at once; lazily, only the slots the RT prompt took
    # beyond the free ones.
    assert first["bros-nobidir"] == victim_kv["bros-nobidir"]
    assert 0 < first["bros"] < victim_kv["bros"] / 5
    assert total["bros"] <= total["bros-nobidir"]


def test_requests_the_engine_cannot_serve_are_rejected_with_a_reason() -> None:
    engine = BrosEngine(COST, EngineConfig())
    no_slo = EngineRequest("x", 10, 10, 0.0, slo_class="rt")
    assert not engine.add(no_slo, 0.0)
    assert no_slo.reason == "a real-time request needs ttft_slo_s and tpot_slo_s"
    odd = EngineRequest("y", 10, 10, 0.0, slo_class="interactive")
    assert not engine.add(odd, 0.0)
    assert "slo_class must be 'rt' or 'be'" in str(odd.reason)
    with pytest.raises(ValueError, match="unknown engine 'fifo'"):
        make_engine("fifo", COST)


def test_deadlines_follow_the_ttft_then_the_tpot_pace() -> None:
    r = rt(0, 2.0)
    assert next_deadline(r) == pytest.approx(2.0 + TTFT)
    assert next_deadline(r, margin=0.1) == pytest.approx(2.0 + 0.9 * TTFT)
    r.first_token_s, r.generated = 2.5, 3
    assert next_deadline(r) == pytest.approx(2.5 + 3 * TPOT)
    with pytest.raises(ValueError, match="not real-time"):
        next_deadline(be(0, 0.0))


@given(st.lists(st.booleans(), max_size=200))
def test_the_cap_grows_additively_backs_off_multiplicatively_and_stays_in_bounds(
    misses: list[bool],
) -> None:
    opts = BrosOptions()
    cap = AdaptiveCap(opts)
    for missed in misses:
        before = cap.value
        cap.observe(missed)
        assert opts.cap_min <= cap.value <= opts.cap_max
        if missed:
            assert cap.value == max(opts.cap_min, before * opts.cap_backoff)
        else:
            assert cap.value == pytest.approx(min(opts.cap_max, before + opts.cap_increase))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("cap_backoff", 1.0, "cap_backoff must be in"),
        ("slo_margin", 1.0, "slo_margin must be in"),
        ("cap_min", 2.0, "cap_min <= cap_start <= cap_max"),
        ("urgent_iterations", -1.0, "urgent_iterations must be finite"),
        ("be_order", "sjf", "be_order must be fcfs or priority"),
    ],
)
def test_bad_options_are_refused(field: str, value: object, message: str) -> None:
    options: dict[str, Any] = {field: value}
    with pytest.raises(ValueError, match=message):
        BrosOptions(**options)


@pytest.mark.parametrize(("order", "first"), [("fcfs", "early"), ("priority", "urgent")])
def test_waiting_best_effort_goes_first_come_or_by_priority(order: str, first: str) -> None:
    cfg = EngineConfig(max_num_seqs=1)
    engine = BrosEngine(COST, cfg, BrosOptions(be_order=order))  # type: ignore[arg-type]
    early = EngineRequest("early", 100, 5, 0.0, priority=5.0)
    urgent = EngineRequest("urgent", 100, 5, 0.1, priority=1.0)
    assert engine.add(early, 0.0)
    assert engine.add(urgent, 0.1)
    step = engine.plan(0.2)
    assert step is not None
    assert [r.id for r, _, _ in step.chunks] == [first]
    engine.complete(step)
    # A re-rank moves a waiting request under priority order, and is kept under FCFS.
    engine.set_priority(early if first == "urgent" else urgent, -1.0)
    engine.check_invariants()
