"""bros-gateway (issue 15, item 5): the best-effort limit a gateway sets from the real-time
calls' pace, and an unmodified vLLM engine behind it in the BROS study."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hermes.engine.catalog import make_engine
from hermes.engine.engine_config import EngineConfig
from hermes.experiments.bros_gateway import RtPaceGate
from hermes.experiments.bros_sim import simulate
from hermes.experiments.bros_workload import BeStream, conversation_lengths, rt_trace
from hermes.policies.rt_admission import RtPaceLimit, RtPaceOptions
from hermes.profiles import load_profile
from hermes.sim.metrics import slo_class_figures
from hermes.sim.window import Window

SLO = 0.05


@given(st.lists(st.tuples(st.integers(0, 50), st.floats(0.0, 10.0)), max_size=200))
def test_the_limit_stays_in_bounds_and_moves_once_per_interval(
    windows: list[tuple[int, float]],
) -> None:
    o = RtPaceOptions(max_limit=64)
    pace = RtPaceLimit(o)
    now, acc_tokens, acc_s = 0.0, 0, 0.0
    for tokens, seconds in windows:
        before = pace.limit
        limit = pace.observe(now, rt_tokens=tokens, rt_token_s=seconds, tpot_slo_s=SLO)
        assert o.min_limit <= limit <= o.max_limit
        acc_tokens, acc_s = acc_tokens + tokens, acc_s + seconds
        if now > 0:  # one interval ends at every call after the first
            if acc_tokens > 0 and acc_s / acc_tokens > o.target * SLO:
                assert limit == max(o.min_limit, int(before * o.backoff))
            else:
                assert limit >= before
            acc_tokens, acc_s = 0, 0.0
        now += o.interval_s


def test_slow_rt_tokens_cut_the_limit_and_fast_ones_raise_it() -> None:
    pace = RtPaceLimit(RtPaceOptions(max_limit=100, interval_s=1.0))
    pace.observe(0.0, rt_tokens=0, rt_token_s=0.0, tpot_slo_s=SLO)
    for t in range(1, 20):  # 80 ms a token against a 50 ms SLO
        pace.observe(float(t), rt_tokens=10, rt_token_s=0.8, tpot_slo_s=SLO)
    low = pace.limit
    assert low < 20
    assert pace.cuts == 19
    # Between intervals nothing moves.
    assert pace.observe(19.5, rt_tokens=10, rt_token_s=0.1, tpot_slo_s=SLO) == low
    for t in range(20, 40):  # 20 ms a token: room for more BE calls
        pace.observe(float(t), rt_tokens=10, rt_token_s=0.2, tpot_slo_s=SLO)
    assert pace.limit > low


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("target", 0.0, "target must be in"),
        ("backoff", 1.0, "backoff must be in"),
        ("interval_s", 0.0, "interval_s must be > 0"),
        ("min_limit", 0, "1 <= min_limit <= max_limit"),
    ],
)
def test_bad_options_and_observations_are_refused(field: str, value: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RtPaceOptions(**{field: value})  # type: ignore[arg-type]
    pace = RtPaceLimit()
    with pytest.raises(ValueError, match="rt_tokens >= 0"):
        pace.observe(0.0, rt_tokens=-1, rt_token_s=0.0, tpot_slo_s=SLO)
    with pytest.raises(ValueError, match="tpot_slo_s must be > 0"):
        pace.observe(0.0, rt_tokens=1, rt_token_s=0.1, tpot_slo_s=0.0)


def test_the_gateway_keeps_rt_pace_on_an_unmodified_engine() -> None:
    cost = load_profile("llama-2-7b@a100")
    cfg = EngineConfig()
    pool = conversation_lengths().clipped(cfg.max_model_len)
    w = Window(10.0, 60.0, 60.0)
    figures, be = {}, {}
    for label, gate in (("vllm", None), ("gateway", RtPaceGate(SLO))):
        run = simulate(
            make_engine("vllm", cost, cfg),
            rt_trace(pool, 1.5, w.end_s, 0),
            BeStream(0),
            w,
            ttft_slo_s=1.0,
            tpot_slo_s=SLO,
            be_backlog=5,
            gate=gate,
        )
        figures[label] = slo_class_figures(run.rt, 1.0, SLO, w.start_s, w.end_s, run.end_s)
        be[label] = run.be_tokens
    assert figures["vllm"]["slo_attainment"] == 0.0  # BE work sets vLLM's iterations
    gated = figures["gateway"]["slo_attainment"]
    assert isinstance(gated, float)
    assert gated >= 0.9
    assert be["gateway"] > 0.5 * be["vllm"]
