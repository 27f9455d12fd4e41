"""Simulation summaries: latency distributions, request counts, throughput, SLO attainment."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hermes.engine.request import EngineRequest, RequestState
from hermes.sim.metrics import SLO, distribution, request_summary

KEYS = ("count", "mean", "p50", "p90", "p95", "p99", "max")


# distribution ---------------------------------------------------------------------------------


def test_one_to_one_hundred() -> None:
    d = distribution(np.arange(1, 101))
    assert d == {
        "count": 100,
        "mean": 50.5,
        "p50": 50.0,
        "p90": 90.0,
        "p95": 95.0,
        "p99": 99.0,
        "max": 100.0,
    }


def test_percentiles_are_observed_values_not_interpolated() -> None:
    # Linear interpolation would say p50 = 2.5 and p90 = 3.7; the inverted CDF never does.
    d = distribution([4.0, 1.0, 3.0, 2.0])
    assert d["p50"] == 2.0
    assert d["p90"] == 4.0
    assert d["mean"] == 2.5
    assert d["max"] == 4.0
    assert d["count"] == 4


def test_a_single_value_is_every_statistic() -> None:
    assert distribution([0.25]) == dict.fromkeys(KEYS, 0.25) | {"count": 1}


def test_integer_weights_equal_duplication() -> None:
    weighted = distribution([2.0, 1.0, 7.0], weights=[1, 3, 1])
    assert weighted == distribution([2.0, 1.0, 1.0, 1.0, 7.0])
    assert weighted["count"] == 5
    assert weighted["p50"] == 1.0
    assert weighted["p90"] == 7.0
    assert weighted["mean"] == pytest.approx(12 / 5)


def test_zero_weight_values_never_happened() -> None:
    # 9.0 has no mass: it is neither a percentile nor the maximum.
    d = distribution([1.0, 5.0, 9.0], weights=[2, 1, 0])
    assert d == distribution([1.0, 1.0, 5.0])
    assert d["max"] == 5.0


def test_fractional_weights_shift_the_percentiles() -> None:
    d = distribution([10.0, 20.0], weights=[0.95, 0.05])
    assert d["p50"] == 10.0
    assert d["p95"] == 10.0
    assert d["p99"] == 20.0
    assert d["mean"] == pytest.approx(10.5)
    assert d["count"] == 1  # the total weight, rounded


@pytest.mark.parametrize(
    ("values", "weights"),
    [([], None), (np.empty(0), np.empty(0)), ([3.0, 4.0], [0.0, 0.0])],
)
def test_empty_is_all_none_with_count_zero(values: Any, weights: Any) -> None:
    d = distribution(values, weights)
    assert d == {"count": 0} | dict.fromkeys(KEYS[1:])


def test_weights_must_match_values() -> None:
    with pytest.raises(ValueError, match=r"distribution: \(2,\) weights for \(3,\) values"):
        distribution([1.0, 2.0, 3.0], [1.0, 1.0])


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@given(
    st.lists(
        st.tuples(finite, st.integers(min_value=0, max_value=6)), min_size=1, max_size=40
    ).filter(lambda pairs: any(w > 0 for _, w in pairs))
)
def test_weighted_equals_repeated(pairs: list[tuple[float, int]]) -> None:
    values = [v for v, _ in pairs]
    weights = [w for _, w in pairs]
    repeated = [v for v, w in pairs for _ in range(w)]
    got = distribution(values, weights)
    want = distribution(repeated)
    assert got["count"] == want["count"] == len(repeated)
    for key in ("p50", "p90", "p95", "p99", "max"):
        assert got[key] == want[key], key
    assert got["mean"] == pytest.approx(want["mean"], rel=1e-9, abs=1e-6)


# request_summary --------------------------------------------------------------------------------


def finished(
    rid: str,
    arrival: float,
    scheduled: float,
    first_token: float,
    finish: float,
    generated: int,
    preemptions: int = 0,
) -> EngineRequest:
    r = EngineRequest(rid, prompt_tokens=100, output_tokens=generated, arrival_s=arrival)
    r.state = RequestState.FINISHED
    r.first_scheduled_s = scheduled
    r.first_token_s = first_token
    r.last_token_s = finish
    r.finish_s = finish
    r.generated = generated
    r.preemptions = preemptions
    return r


def rejected(rid: str, arrival: float, reason: str | None) -> EngineRequest:
    r = EngineRequest(rid, prompt_tokens=9000, output_tokens=10, arrival_s=arrival)
    r.state = RequestState.REJECTED
    r.reason = reason
    r.finish_s = arrival  # the engine rejects on arrival
    return r


ZERO = "prompt_tokens (0) and output_tokens (5) must both be >= 1"


def workload() -> list[EngineRequest]:
    a = finished("a", 0.0, 0.5, 1.0, 3.0, generated=5, preemptions=1)  # tpot (3-1)/4 = 0.5
    b = finished("b", 1.0, 1.0, 1.5, 2.0, generated=3)  # tpot (2-1.5)/2 = 0.25
    c = finished("c", 2.0, 2.0, 2.2, 2.2, generated=1, preemptions=2)  # no tpot: one token
    waiting = EngineRequest("w", prompt_tokens=10, output_tokens=10, arrival_s=2.5)
    return [
        a,
        rejected("d", 0.3, "prompt (9000) + output (10) tokens exceed max_model_len 4096"),
        b,
        rejected("e", 0.4, "needs 700 KV blocks; the pool has 500"),
        c,
        rejected("f", 0.5, None),
        rejected("g", 0.6, "prompt (5000) + output (1) tokens exceed max_model_len 4096"),
        rejected("h", 0.7, ZERO),
        waiting,
    ]


ITL = (np.array([0.01, 0.02]), np.array([3.0, 1.0]))


def test_request_summary_counts_and_latencies() -> None:
    s = request_summary(workload(), ITL)
    assert s["requests"] == 9
    assert s["completed"] == 3
    assert s["rejected"] == 5
    assert s["unfinished"] == 1
    assert s["rejected_reasons"] == {
        "exceeds max_model_len": 2,
        "larger than the KV pool": 1,
        ZERO: 1,  # no known rule: grouped by its own text
        "unknown": 1,
    }
    assert list(s["rejected_reasons"]) == sorted(s["rejected_reasons"])

    ttft = s["ttft"]  # 1.0, 0.5, 0.2
    assert ttft == {
        "count": 3,
        "mean": pytest.approx(1.7 / 3),
        "p50": 0.5,
        "p90": 1.0,
        "p95": 1.0,
        "p99": 1.0,
        "max": 1.0,
    }
    e2e = s["e2e"]  # 3.0, 1.0, 0.2
    assert e2e == {
        "count": 3,
        "mean": pytest.approx(4.2 / 3),
        "p50": 1.0,
        "p90": 3.0,
        "p95": 3.0,
        "p99": 3.0,
        "max": 3.0,
    }
    tpot = s["tpot"]  # 0.5, 0.25; the one-token request is left out
    assert tpot == {
        "count": 2,
        "mean": pytest.approx(0.375),
        "p50": 0.25,
        "p90": 0.5,
        "p95": 0.5,
        "p99": 0.5,
        "max": 0.5,
    }
    queueing = s["queueing"]  # 0.5, 0.0, 0.0
    assert queueing == {
        "count": 3,
        "mean": pytest.approx(0.5 / 3),
        "p50": 0.0,
        "p90": 0.5,
        "p95": 0.5,
        "p99": 0.5,
        "max": 0.5,
    }
    assert s["itl"] == distribution([0.01, 0.01, 0.01, 0.02])
    assert s["preemptions"] == 3
    assert s["preempted_requests"] == 2


def test_request_summary_throughput_over_the_makespan() -> None:
    s = request_summary(workload(), ITL)
    # First arrival 0.0, last finish 3.0; 3 requests and 5 + 3 + 1 tokens completed.
    assert s["makespan_s"] == pytest.approx(3.0)
    assert s["throughput_rps"] == pytest.approx(1.0)
    assert s["output_tokens_per_s"] == pytest.approx(3.0)
    assert "slo_attainment" not in s
    assert "goodput_rps" not in s


def test_request_summary_of_nothing() -> None:
    s = request_summary([], (np.empty(0), np.empty(0)), SLO(ttft_s=1.0))
    assert (s["requests"], s["completed"], s["rejected"], s["unfinished"]) == (0, 0, 0, 0)
    assert s["rejected_reasons"] == {}
    for key in ("ttft", "tpot", "itl", "e2e", "queueing"):
        assert s[key] == {"count": 0} | dict.fromkeys(KEYS[1:]), key
    assert s["makespan_s"] == 0.0
    assert s["throughput_rps"] is None
    assert s["output_tokens_per_s"] is None
    assert s["slo_attainment"] is None
    assert s["goodput_rps"] is None


@pytest.mark.parametrize(
    ("slo", "met"),
    [
        (SLO(), 3),
        (SLO(ttft_s=0.6), 2),  # a's ttft 1.0 misses
        (SLO(ttft_s=1.0), 3),  # a limit is met when equalled
        (SLO(tpot_s=0.3), 2),  # a's tpot 0.5 misses; c has one token (tpot 0)
        (SLO(e2e_s=0.5), 1),  # only c finishes within 0.5 s
        (SLO(ttft_s=0.6, tpot_s=0.2), 1),  # b's tpot 0.25 misses too
    ],
)
def test_slo_attainment_counts_rejections_as_misses(slo: SLO, met: int) -> None:
    s = request_summary(workload(), ITL, slo)
    # 3 completed + 5 rejected are judged; the still-waiting request is not.
    assert s["slo_attainment"] == pytest.approx(met / 8)
    assert s["goodput_rps"] == pytest.approx(met / 3.0)
    assert s["slo"] == {"ttft_s": slo.ttft_s, "tpot_s": slo.tpot_s, "e2e_s": slo.e2e_s}


def test_slo_is_never_met_by_an_unfinished_request() -> None:
    slo = SLO()
    assert not slo.met(rejected("r", 0.0, "exceeds max_model_len"))
    assert not slo.met(EngineRequest("w", 10, 10, 0.0))
    assert slo.met(finished("f", 0.0, 0.0, 0.1, 0.2, generated=2))
