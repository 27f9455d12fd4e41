"""The QLM workloads: burstiness, class and model shares, mega-prompts, lengths, seeds.

Statistical checks use fixed seeds and tolerances of several standard errors.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from hermes.profiles import load_profile
from hermes.workloads.qlm_workloads import (
    MEGA_PROMPT_TOKENS,
    WB_CLASSES,
    WB_MODELS,
    QlmRequest,
    SloTier,
    TraceLengths,
    azure_conversation_lengths,
    profile_name,
    qlm_workload,
    workload_a,
    workload_b,
    workload_c,
)


def gaps(reqs: list[QlmRequest]) -> NDArray[np.float64]:
    return np.diff(np.array([r.arrival_s for r in reqs], dtype=np.float64))


def shares(values: list[str]) -> dict[str, float]:
    counts = Counter(values)
    return {k: v / len(values) for k, v in counts.items()}


@pytest.mark.parametrize("cv", [1.0, 2.0, 4.0])
def test_inter_arrival_cv_and_rate_as_requested(cv: float) -> None:
    rate, duration = 20.0, 2500.0  # ~50,000 requests
    reqs = workload_a(rate, duration, seed=7, cv=cv)
    g = gaps(reqs)
    measured = float(np.std(g) / np.mean(g))
    assert measured == pytest.approx(cv, rel=0.1)
    # The count's relative standard error is cv / sqrt(rate * duration): under 2 % here.
    assert len(reqs) / duration == pytest.approx(rate, rel=0.1)
    times = [r.arrival_s for r in reqs]
    assert times == sorted(times)
    assert times[0] >= 0
    assert times[-1] < duration
    assert [r.id for r in reqs] == list(range(len(reqs)))


def test_wa_class_shares_and_slos() -> None:
    reqs = workload_a(10.0, 2000.0, seed=1)
    got = shares([r.slo_class for r in reqs])
    assert got["interactive"] == pytest.approx(0.3, abs=0.02)
    assert got["batch-60s"] == pytest.approx(0.4, abs=0.02)
    assert got["batch-1h"] == pytest.approx(0.3, abs=0.02)
    slo = {r.slo_class: r.slo_s for r in reqs}
    assert slo == {"interactive": 20.0, "batch-60s": 60.0, "batch-1h": 3600.0}
    assert {r.model for r in reqs} == {"llama-2-7b"}
    assert not any(r.mega_prompt for r in reqs)
    r = reqs[0]
    assert r.deadline_s == r.arrival_s + r.slo_s


def test_custom_class_mix() -> None:
    mix = (SloTier("interactive", 20.0, 1.0), SloTier("batch-1h", 3600.0, 3.0))
    reqs = workload_a(10.0, 1000.0, seed=2, classes=mix)
    assert shares([r.slo_class for r in reqs])["batch-1h"] == pytest.approx(0.75, abs=0.03)


def test_wb_three_models_batch_only_with_profiles() -> None:
    reqs = workload_b(10.0, 2000.0, seed=3)
    got = shares([r.model for r in reqs])
    assert set(got) == set(WB_MODELS)
    assert len(WB_MODELS) == 3
    for model in WB_MODELS:
        assert got[model] == pytest.approx(1 / 3, abs=0.02)
        profile = load_profile(profile_name(model), gpu="a100")
        assert 6e9 < profile.weight_bytes / 2 < 14e9  # parameters of a 7-13B-class model (bf16)
    assert {r.slo_class for r in reqs} <= {"batch-60s", "batch-1h"}
    weighted = workload_b(10.0, 1000.0, seed=3, models={"llama-2-7b": 1.0, "llama-3-8b": 0.0})
    assert {r.model for r in weighted} == {"llama-2-7b"}
    with pytest.raises(ValueError, match="twice"):
        workload_b(1.0, 10.0, seed=0, models=["llama-2-7b", "llama-2-7b"])


def test_wc_mega_prompts() -> None:
    reqs = workload_c(10.0, 2000.0, seed=4)
    mega = [r for r in reqs if r.mega_prompt]
    assert len(mega) / len(reqs) == pytest.approx(0.05, abs=0.01)
    lo, hi = MEGA_PROMPT_TOKENS
    assert all(lo <= r.prompt_tokens <= hi for r in mega)
    assert all(r.prompt_tokens + r.output_tokens <= 4096 for r in reqs)
    prompts = np.array([r.prompt_tokens for r in mega])
    assert prompts.min() < lo + 100
    assert prompts.max() > hi - 100
    # The rest keeps WA's mix and the trace's lengths.
    assert shares([r.slo_class for r in reqs])["interactive"] == pytest.approx(0.3, abs=0.02)
    more = workload_c(10.0, 2000.0, seed=4, mega_share=0.1)
    assert sum(r.mega_prompt for r in more) / len(more) == pytest.approx(0.1, abs=0.015)


def test_lengths_come_from_the_trace() -> None:
    pool = azure_conversation_lengths()
    assert len(pool) == 19_366
    rows = set(zip(pool.prompts.tolist(), pool.outputs.tolist(), strict=True))
    reqs = workload_a(5.0, 1000.0, seed=5, max_model_len=20_000)  # nothing clipped
    assert all((r.prompt_tokens, r.output_tokens) in rows for r in reqs)
    clipped = workload_a(5.0, 1000.0, seed=5)  # same draws, clipped to 4,096
    assert [r.arrival_s for r in clipped] == [r.arrival_s for r in reqs]
    cut = [(a, b) for a, b in zip(reqs, clipped, strict=True) if a != b]
    assert cut
    for a, b in cut:
        assert a.prompt_tokens + a.output_tokens > 4096
        assert b.prompt_tokens + b.output_tokens == 4096
        assert b.output_tokens == a.output_tokens  # the prompt is cut, the answer kept


def test_custom_lengths() -> None:
    pool = TraceLengths(np.array([10, 20]), np.array([5, 0]))
    reqs = workload_a(5.0, 100.0, seed=0, lengths=pool)
    assert {(r.prompt_tokens, r.output_tokens) for r in reqs} == {(10, 5), (20, 1)}
    with pytest.raises(ValueError, match="no requests"):
        TraceLengths(np.array([], dtype=np.int64), np.array([], dtype=np.int64))


def test_reproducible_from_the_seed() -> None:
    for make in (workload_a, workload_b, workload_c):
        assert make(5.0, 500.0, 11) == make(5.0, 500.0, 11)
        assert make(5.0, 500.0, 11) != make(5.0, 500.0, 12)


def test_arrivals_do_not_move_with_the_mix_or_a_longer_run() -> None:
    short = workload_a(5.0, 500.0, seed=9)
    other_mix = workload_a(5.0, 500.0, seed=9, classes=WB_CLASSES)
    assert [r.arrival_s for r in short] == [r.arrival_s for r in other_mix]
    longer = workload_a(5.0, 5000.0, seed=9)
    assert [r.arrival_s for r in longer[: len(short)]] == [r.arrival_s for r in short]


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    max_model_len=st.integers(min_value=2, max_value=8192),
    mega_share=st.floats(min_value=0.0, max_value=1.0),
)
def test_everything_fits_max_model_len(seed: int, max_model_len: int, mega_share: float) -> None:
    lo = min(3000, max_model_len - 1)
    hi = min(3900, max_model_len - 1)
    reqs = qlm_workload(
        2.0,
        100.0,
        seed,
        models={"llama-2-7b": 1.0},
        classes=(SloTier("batch-1h", 3600.0, 1.0),),
        max_model_len=max_model_len,
        mega_share=mega_share,
        mega_prompt_tokens=(lo, hi),
    )
    for r in reqs:
        assert r.prompt_tokens >= 1
        assert r.output_tokens >= 1
        assert r.prompt_tokens + r.output_tokens <= max_model_len
        if r.mega_prompt:
            assert lo <= r.prompt_tokens <= hi


def test_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="rate_per_s"):
        workload_a(0.0, 10.0, 0)
    with pytest.raises(ValueError, match="duration_s"):
        workload_a(1.0, float("inf"), 0)
    with pytest.raises(ValueError, match="seed"):
        workload_a(1.0, 10.0, -1)
    with pytest.raises(ValueError, match="mega_prompt_tokens"):
        workload_c(1.0, 10.0, 0, max_model_len=2048)
    with pytest.raises(ValueError, match="mega_share"):
        workload_c(1.0, 10.0, 0, mega_share=1.5)
    with pytest.raises(ValueError, match="unique"):
        workload_a(1.0, 10.0, 0, classes=(SloTier("a", 1.0, 1.0), SloTier("a", 2.0, 1.0)))
    with pytest.raises(ValueError, match="slo_s"):
        SloTier("a", 0.0, 1.0)
    with pytest.raises(ValueError, match="share"):
        SloTier("a", 1.0, -1.0)
