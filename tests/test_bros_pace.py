"""BROS's pace (issue 19): the adaptive margin, and RT prompts that never stretch the
iterations RT decodes ride in."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hermes.engine.bros_engine import BrosEngine
from hermes.engine.engine_config import EngineConfig
from hermes.engine.request import EngineRequest, RequestState
from hermes.engine.rt_pace import AdaptiveMargin, BrosOptions
from hermes.profiles import load_profile

COST = load_profile("llama-2-7b", "a100", None)
TPOT = 0.06


def _rt(name: str, arrival: float, prompt: int, output: int, ttft: float) -> EngineRequest:
    return EngineRequest(
        name, prompt, output, arrival, slo_class="rt", ttft_slo_s=ttft, tpot_slo_s=TPOT
    )


def _drive(engine: BrosEngine, arrivals: list[EngineRequest], until: float) -> list[float]:
    """Step the engine to `until`, adding requests at their arrival; the iteration times."""
    pending = sorted(arrivals, key=lambda r: r.arrival_s)
    now, times = 0.0, []
    while now < until:
        while pending and pending[0].arrival_s <= now:
            r = pending.pop(0)
            assert engine.add(r, r.arrival_s)
        step = engine.plan(now)
        if step is None:
            if not pending:
                break
            now = pending[0].arrival_s
            continue
        times.append(step.end_s - step.start_s)
        now = step.end_s
        engine.complete(step)
        engine.check_invariants()
    return times


def test_a_long_rt_prompt_is_chunked_without_making_rt_decodes_late() -> None:
    # One RT request decodes at the pace while a long RT prompt with a loose TTFT arrives
    # behind a BE backlog: its prefill goes in chunks that fit the decode's deadlines, never
    # in one budget-sized chunk that stretches an iteration past them.
    engine = BrosEngine(COST, EngineConfig(), BrosOptions(slo_margin=0.1))
    bes = [EngineRequest(("be", i), 800, 80, 0.0) for i in range(200)]
    decoding = _rt("decoding", 0.0, 200, 120, 1.0)
    long_prompt = _rt("long", 1.0, 3800, 20, 5.0)
    _drive(engine, [*bes, decoding, long_prompt], until=10.0)
    assert decoding.state is RequestState.FINISHED
    assert long_prompt.first_token_s is not None
    assert long_prompt.first_token_s - long_prompt.arrival_s <= 5.0
    assert engine.bros.rt_tokens >= 140
    assert engine.bros.rt_late_tokens == 0


@given(
    st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 3000)), max_size=300),
    st.floats(0.01, 0.3),
)
def test_the_margin_stays_in_bounds_and_grows_with_the_be_share(
    iterations: list[tuple[int, int]], tpot: float
) -> None:
    opts = BrosOptions()
    margin = AdaptiveMargin(opts, overhead_s=0.01)
    for be_tokens, rt_tokens in iterations:
        before_share = margin.be_share
        value = margin.observe(be_tokens, be_tokens + rt_tokens, tpot)
        assert opts.margin_min <= value <= opts.margin_max
        assert 0.0 <= margin.be_share <= 1.0
        if be_tokens + rt_tokens == 0:
            assert margin.be_share == before_share
    # The same engine with more of it held by BE affords an earlier aim.
    light, heavy = AdaptiveMargin(opts, 0.01), AdaptiveMargin(opts, 0.01)
    for _ in range(1000):
        light.observe(900, 1000, tpot)
        heavy.observe(100, 1000, tpot)
    assert light.value >= heavy.value
    assert light.be_share == pytest.approx(0.9, abs=1e-3)


def test_a_fixed_margin_overrides_the_adaptive_one() -> None:
    margin = AdaptiveMargin(BrosOptions(slo_margin=0.25), overhead_s=0.01)
    for _ in range(100):
        assert margin.observe(10, 1000, 0.05) == 0.25


def test_rt_tokens_are_aimed_earlier_under_light_rt_load() -> None:
    margins = {}
    for label, n_rt in (("light", 1), ("heavy", 40)):
        engine = BrosEngine(COST, EngineConfig())
        bes = [EngineRequest(("be", i), 800, 80, 0.0) for i in range(300)]
        rts = [_rt(f"rt{i}", 0.05 * i, 300, 400, 1.0) for i in range(n_rt)]
        _drive(engine, [*bes, *rts], until=6.0)
        margins[label] = engine.margin.value
    assert margins["light"] > margins["heavy"]
    opts = BrosOptions()
    assert opts.margin_min <= margins["heavy"] < margins["light"] <= opts.margin_max


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("margin_max", 1.0, "margin_min <= margin_max < 1"),
        ("margin_min", 0.6, "margin_min <= margin_max < 1"),
        ("margin_budget", -0.1, "margin_budget must be finite"),
        ("margin_memory", 0.5, "margin_memory must be finite and >= 1"),
    ],
)
def test_bad_margin_options_are_refused(field: str, value: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BrosOptions(**{field: value})  # type: ignore[arg-type]


def test_suspensions_turn_eager_while_lazy_ones_end_in_whole_checkpoints() -> None:
    def suspended_lazily(engine: BrosEngine) -> bool:
        victim = EngineRequest(("be", len(engine.running)), 300, 50, 0.0)
        assert engine.add(victim, 0.0)
        step = engine.plan(0.0)
        assert step is not None
        engine.complete(step)
        assert victim in engine.running
        engine.suspend_for_rt(victim)
        assert victim.state is RequestState.SWAPPED
        return engine.kv.holds(victim)  # lazily: its KV stays on the GPU

    engine = BrosEngine(COST, EngineConfig(num_gpu_blocks=400, num_cpu_blocks=400))
    first = engine.suspended[0] if suspended_lazily(engine) else None
    assert first is not None
    # The lazy bet keeps losing: each lazily suspended request is checkpointed whole.
    for _ in range(10):
        engine.checkpoint_whole(first)
    eager = 0
    while not suspended_lazily(engine):  # swapped whole, until lazy is tried again
        eager += 1
    assert 1 <= eager <= 10
