"""`hermes bench bros`: the BROS workload, the run on the simulator, SLOs, metrics, targets and
the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hermes.cli import app
from hermes.engine.catalog import make_engine
from hermes.engine.engine_config import EngineConfig
from hermes.engine.request import EngineRequest, RequestState
from hermes.engine.scheduler import Engine, Step
from hermes.experiments.bros_paper import BrosSettings, check_targets, quick_settings
from hermes.experiments.bros_sim import RunOutput, rt_capacity, simulate
from hermes.experiments.bros_slos import derive_slos, unloaded_latencies
from hermes.experiments.bros_workload import (
    BE_OUTPUT_TOKENS,
    BE_PROMPT_TOKENS,
    BeStream,
    LengthPool,
    conversation_lengths,
    default_be_backlog,
    rt_trace,
)
from hermes.policies.slo_class import class_priority
from hermes.profiles import load_profile
from hermes.sim.metrics import class_throughput, slo_class_figures
from hermes.sim.window import Window

runner = CliRunner()
CFG = EngineConfig()


@pytest.fixture(scope="module")
def pool() -> LengthPool:
    return conversation_lengths().clipped(CFG.max_model_len)


# Workload -------------------------------------------------------------------------------


def test_trace_lengths_are_clipped_to_fit_the_engine(pool: LengthPool) -> None:
    raw = conversation_lengths()
    assert len(raw) == len(pool) > 19_000
    assert pool.prompts.min() >= 1
    assert pool.outputs.min() >= 1
    assert (pool.prompts + pool.outputs).max() <= CFG.max_model_len
    fits = raw.prompts + raw.outputs <= CFG.max_model_len
    assert np.array_equal(pool.prompts[fits], raw.prompts[fits])  # what fits is untouched
    assert np.array_equal(pool.outputs, raw.outputs)  # answers are kept, prompts cut
    tiny = LengthPool(np.array([0, 5000, 10]), np.array([0, 10, 5000])).clipped(4096)
    assert tiny.prompts.tolist() == [1, 4086, 1]
    assert tiny.outputs.tolist() == [1, 10, 4095]


def test_rt_arrivals_are_poisson_at_the_rate(pool: LengthPool) -> None:
    rate, until = 5.0, 2000.0
    t = rt_trace(pool, rate, until, seed=3)
    n = len(t)
    assert abs(n - rate * until) < 4 * np.sqrt(rate * until)
    assert np.all(np.diff(t.arrival_s) >= 0)
    assert t.arrival_s[0] >= 0
    assert t.arrival_s[-1] < until
    gaps = np.diff(t.arrival_s)
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)  # exponential: CV 1
    # Every request is a row of the pool.
    rows = set(zip(pool.prompts.tolist(), pool.outputs.tolist(), strict=True))
    pairs = zip(t.prompt_tokens.tolist(), t.output_tokens.tolist(), strict=True)
    assert all(pair in rows for pair in pairs)


def test_loads_share_random_numbers_and_seeds_reproduce(pool: LengthPool) -> None:
    slow, fast = rt_trace(pool, 1.0, 300.0, seed=0), rt_trace(pool, 4.0, 300.0, seed=0)
    k = len(slow)
    assert len(fast) > k
    assert np.allclose(fast.arrival_s[:k] * 4.0, slow.arrival_s)
    assert np.array_equal(fast.prompt_tokens[:k], slow.prompt_tokens)
    again = rt_trace(pool, 4.0, 300.0, seed=0)
    assert np.array_equal(again.arrival_s, fast.arrival_s)
    other = rt_trace(pool, 4.0, 300.0, seed=1)
    assert not np.array_equal(other.prompt_tokens[:50], fast.prompt_tokens[:50])


def test_be_lengths_are_uniform_in_the_papers_ranges() -> None:
    be = BeStream(seed=0)
    first = be.take(3) + be.take(2000)
    assert be.taken == 2003
    assert first == BeStream(seed=0).take(2003)  # the k-th request depends on k only
    p = np.array([x[0] for x in first])
    o = np.array([x[1] for x in first])
    assert (p.min(), p.max()) == BE_PROMPT_TOKENS
    assert (o.min(), o.max()) == BE_OUTPUT_TOKENS
    assert p.mean() == pytest.approx(768, rel=0.02)
    assert o.mean() == pytest.approx(80, rel=0.03)
    with pytest.raises(ValueError, match="prompt_range"):
        BeStream(seed=0, prompt_range=(10, 5))


class _Watched(Engine):
    """An `Engine` that checks, at every plan, that enough BE requests are queued."""

    def __init__(self, engine: Engine, backlog: int) -> None:
        super().__init__(engine.cost, engine.config)
        self.backlog = backlog
        self.be: list[EngineRequest] = []
        self.plans = 0

    def add(self, req: EngineRequest, now: float) -> bool:
        if req.slo_class == "be":
            self.be.append(req)
        return super().add(req, now)

    def plan(self, now: float) -> Step | None:
        queued = sum(r.state is RequestState.WAITING for r in self.be)
        assert queued >= self.backlog
        self.plans += 1
        return super().plan(now)


def test_the_be_backlog_is_kept_queued(pool: LengthPool) -> None:
    backlog = default_be_backlog(CFG)
    assert backlog == 2048 // 512 + 1
    watched = _Watched(Engine(load_profile("llama-2-7b@a100"), CFG), backlog)
    run = simulate(
        watched, rt_trace(pool, 1.0, 20.0, 0), BeStream(0), Window(5.0, 20.0, 10.0), be_backlog=5
    )
    assert watched.plans == run.iterations > 50
    assert run.be_tokens > 0
    assert run.be_finished > 0


# SLOs ------------------------------------------------------------------------------------


def test_slos_are_positive_and_monotone_in_the_multiples(pool: LengthPool) -> None:
    cost = load_profile("llama-2-7b@a100")
    p90, ctx = pool.percentile_prompt(90), pool.median_context()
    assert 2000 < p90 < 4096
    assert 500 < ctx < 2000
    base = derive_slos(cost, CFG, p90, ctx, ttft_multiple=1.0, tpot_multiple=1.0)
    assert 0 < base.unloaded_ttft_s == base.ttft_s
    assert 0 < base.unloaded_tpot_s == base.tpot_s
    prev = base
    for m in (2.0, 3.0, 5.0, 8.0):
        s = derive_slos(cost, CFG, p90, ctx, ttft_multiple=m, tpot_multiple=m)
        assert s.ttft_s > prev.ttft_s
        assert s.tpot_s > prev.tpot_s
        prev = s
    # The chat ceilings cap them.
    loose = derive_slos(cost, CFG, p90, ctx, ttft_multiple=100.0, tpot_multiple=100.0)
    assert (loose.ttft_s, loose.tpot_s) == (2.0, 0.15)
    # A longer prompt takes longer to prefill.
    assert derive_slos(cost, CFG, 2 * p90 // 3, ctx).unloaded_ttft_s < base.unloaded_ttft_s
    with pytest.raises(ValueError, match="unloaded"):
        derive_slos(cost, CFG, p90, ctx, ttft_multiple=0.5)


def test_unloaded_latencies_are_one_request_alone() -> None:
    cost = load_profile("llama-2-7b@a100")
    ttft, tpot = unloaded_latencies(cost, CFG, 1000, 1000)
    # One 1,000-token prefill iteration, then one decode iteration at 1,000 tokens of context.
    assert ttft == pytest.approx(cost.step_time_s(1000, 0, 0, 1000 * 500.0, 1, 1))
    assert tpot == pytest.approx(cost.step_time_s(1, 1, 1001, 0.0, 1, 0))
    with pytest.raises(ValueError, match="cannot run"):
        unloaded_latencies(cost, CFG, 5000, 1000)


# The run on the simulator ---------------------------------------------------------------


def _run(pool: LengthPool, policy: str, cost_name: str = "llama-2-7b@a100") -> RunOutput:
    cost = load_profile(cost_name)
    return simulate(
        make_engine(policy, cost, CFG),
        rt_trace(pool, 1.5, 60.0, 0),
        BeStream(0),
        Window(10.0, 60.0, 60.0),
        ttft_slo_s=1.0,
        tpot_slo_s=0.05,
        rt_priority=class_priority(policy, "rt"),
        be_priority=class_priority(policy, "be"),
        be_backlog=5,
    )


def test_static_priority_cuts_rt_ttft_behind_a_be_backlog(pool: LengthPool) -> None:
    fcfs, prio = _run(pool, "vllm"), _run(pool, "vllm-priority")
    m_fcfs = slo_class_figures(fcfs.rt, 1.0, 0.05, 10.0, 60.0, fcfs.end_s)
    m_prio = slo_class_figures(prio.rt, 1.0, 0.05, 10.0, 60.0, prio.end_s)
    n = m_fcfs["rt_requests"]
    assert isinstance(n, int)
    assert n == m_prio["rt_requests"]
    assert n > 40
    for key in ("ttft_mean_s", "ttft_p99_s"):
        fast, slow = m_prio[key], m_fcfs[key]
        assert fast is not None
        assert slow is not None
        assert fast < slow
    assert fcfs.be_tokens > 0
    assert prio.be_tokens > 0
    assert all(r.slo_class == "rt" and r.ttft_slo_s == 1.0 for r in fcfs.rt)


def test_bros_engines_run_on_the_simulator(pool: LengthPool) -> None:
    for policy in ("bros", "bros-nobidir"):
        run = _run(pool, policy)
        m = slo_class_figures(run.rt, 1.0, 0.05, 10.0, 60.0, run.end_s)
        finished = m["rt_finished"]
        assert isinstance(finished, int)
        assert finished > 0
        assert run.be_tokens > 0


# Figures of the hand-written loop that the run on the simulator replaced (commit 8338220),
# for the same seeds: (BE tokens, BE requests, preemptions, steps, end of the run). BROS's
# were re-pinned when its engine changed (issue 19: prefills chunked to the room left, the
# adaptive margin, no cap below the TPOT SLO); the vLLM engines still pin the loop.
OLD_LOOP = {
    "vllm": (38367, 475, 29, 935, 120.04406510338053),
    "vllm-priority": (38458, 477, 22, 936, 120.06039797140039),
    "bros": (33668, 415, 0, 2455, 72.47907672323659),
}


@pytest.mark.parametrize("policy", sorted(OLD_LOOP))
def test_the_run_reproduces_the_old_loop(pool: LengthPool, policy: str) -> None:
    run = _run(pool, policy)
    *counts, end = OLD_LOOP[policy]
    assert [run.be_tokens, run.be_finished, run.preemptions, run.iterations] == counts
    assert run.end_s == pytest.approx(end, rel=1e-12)
    assert len(run.rt) == 84


def test_an_rt_only_run_and_capacity_reproduce_the_old_loop(pool: LengthPool) -> None:
    cost = load_profile("llama-2-7b@a100")
    trace = rt_trace(pool, 1.5, 60.0, 0)
    rt = simulate(Engine(cost, CFG), trace, None, Window(10.0, 60.0, 60.0), ttft_slo_s=1.0,
                  tpot_slo_s=0.05)  # fmt: skip
    assert (rt.be_tokens, rt.be_finished, rt.iterations) == (0, 0, 235)
    # An idle engine ends the window at its end; the run stops once the window's RT is done.
    assert rt.span_s == pytest.approx(50.12584642941391, rel=1e-12)
    assert rt.end_s == pytest.approx(64.07938903778512, rel=1e-12)
    assert all(r.state is RequestState.FINISHED for r in rt.rt)
    capacity = rt_capacity(cost, CFG, pool, 0, Window(60.0, 240.0, 0.0))
    assert capacity == pytest.approx(4.05595639874115, rel=1e-12)


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown engine 'split'"):
        make_engine("split", load_profile("llama-2-7b@a100"), CFG)


# Metrics ---------------------------------------------------------------------------------


def _req(arrival: float, output: int, first: float | None, finish: float | None) -> EngineRequest:
    r = EngineRequest(("rt", arrival), 100, output, arrival, slo_class="rt")
    r.first_token_s = first
    r.finish_s = finish
    r.state = RequestState.FINISHED if finish is not None else RequestState.RUNNING
    return r


def test_rt_metrics_by_hand() -> None:
    reqs = [
        _req(10.0, 11, 10.5, 15.5),  # TTFT 0.5, TPOT 0.5: misses TPOT
        _req(11.0, 11, 11.2, 12.2),  # TTFT 0.2, TPOT 0.1: meets both
        _req(12.0, 1, 14.0, 14.0),  # one token, TTFT 2.0: misses TTFT, no TPOT
        _req(13.0, 1, 13.5, 13.5),  # one token, TTFT 0.5: meets
        _req(14.0, 50, 14.3, None),  # unfinished at 20: a miss, e2e 6 (censored)
        _req(5.0, 11, 5.1, 6.0),  # before the window
        _req(20.0, 11, 20.1, 21.0),  # at its end: outside
    ]
    m = slo_class_figures(
        reqs, ttft_slo_s=1.0, tpot_slo_s=0.4, start_s=10.0, end_s=20.0, horizon_s=20.0
    )
    assert (m["rt_requests"], m["rt_finished"], m["rt_unfinished"]) == (5, 4, 1)
    assert m["ttft_mean_s"] == pytest.approx((0.5 + 0.2 + 2.0 + 0.5 + 0.3) / 5)
    assert m["ttft_p99_s"] == pytest.approx(2.0)
    assert m["tpot_mean_s"] == pytest.approx(0.3)
    assert m["tpot_p99_s"] == pytest.approx(0.5)
    assert m["e2e_mean_s"] == pytest.approx((5.5 + 1.2 + 2.0 + 0.5 + 6.0) / 5)
    assert m["e2e_p99_s"] == pytest.approx(6.0)
    assert m["slo_attainment"] == pytest.approx(2 / 5)
    assert m["ttft_attainment"] == pytest.approx(4 / 5)
    assert m["tpot_attainment"] == pytest.approx(3 / 5)
    empty = slo_class_figures([], 1.0, 0.1, 0.0, 1.0, 1.0)
    assert empty["slo_attainment"] is None
    assert empty["e2e_p99_s"] is None


def test_class_throughput_scales_by_replicas() -> None:
    assert class_throughput(1000, 10, 50.0, 2) == {
        "be_tokens_per_s": 40.0,
        "be_requests_per_s": 0.4,
    }
    assert class_throughput(0, 0, 0.0, 2)["be_tokens_per_s"] == 0.0
    assert class_throughput(5, 1, float("inf"))["be_requests_per_s"] == 0.0
    assert class_throughput(10, 2, 5.0, label="x") == {
        "x_tokens_per_s": 2.0,
        "x_requests_per_s": 0.4,
    }


def _row(attainment: float, p99: float, be: float) -> dict[str, float]:
    return {"slo_attainment": attainment, "e2e_p99_s": p99, "be_tokens_per_s": be}


def test_targets_from_measurements() -> None:
    loads = [
        {"fraction": 0.1, "rt_rate_per_s": 1.0,
         "policies": {"vllm": _row(0.95, 10.0, 100.0), "bros": _row(1.0, 9.0, 99.0)}},
        {"fraction": 0.3, "rt_rate_per_s": 3.0,
         "policies": {"vllm": _row(0.6, 40.0, 100.0), "bros": _row(0.99, 8.0, 90.0)}},
        {"fraction": 0.5, "rt_rate_per_s": 5.0,
         "policies": {"vllm": _row(0.2, 80.0, 100.0), "bros": _row(0.9, 10.0, 96.0)}},
    ]  # fmt: skip
    r = {"deployments": {"d": {"by_load": loads}}}
    targets = check_targets(BrosSettings(), r)
    p99 = [t for t in targets if "P99" in t["target"]]
    assert len(p99) == 1  # at the lightest load where vllm attains < 90 %: 0.3
    assert "0.3 ×" in p99[0]["target"]
    assert p99[0]["measured"] == pytest.approx(-0.8)
    assert p99[0]["met"] is True
    att = [t for t in targets if "attainment" in t["target"]]
    assert len(att) == 1  # only 0.5 has vllm under 50 %
    assert att[0]["measured"] == 0.9
    assert att[0]["met"] is False
    be = [t["met"] for t in targets if "BE throughput" in t["target"]]
    assert be == [True, False, True]
    # Without bros, nothing is known.
    for x in loads:
        del x["policies"]["bros"]  # type: ignore[attr-defined]
    assert all(t["met"] is None for t in check_targets(BrosSettings(), r))


# The command line ------------------------------------------------------------------------


def test_cli_quick_run_writes_results_report_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "bros"
    res = runner.invoke(
        app,
        ["bench", "bros", "--quick", "--out", str(out), "--policies", "vllm,vllm-priority,split",
         "--seed", "1", "--duration-s", "40"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    r = json.loads((out / "results.json").read_text())
    assert r["settings"]["duration_s"] == 40.0
    assert r["settings"]["seed"] == 1
    assert set(r["deployments"]) == {"llama-2-7b_a100x2", "llama-2-70b_a100x8_tp4"}
    for dep in r["deployments"].values():
        assert len(dep["by_load"]) == len(quick_settings().load_fractions)
        assert dep["slos"]["ttft_s"] > dep["slos"]["unloaded_ttft_s"]
        for x in dep["by_load"]:
            assert set(x["policies"]) == {"vllm", "vllm-priority", "split"}
            assert x["policies"]["vllm"]["be_tokens_per_s"] > 0
    report = (out / "report.md").read_text()
    assert "## Targets" in report
    assert "TPOT SLO" in report
    for key in r["deployments"]:
        png = out / f"bros_{key}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_refuses_unknown_policies(tmp_path: Path) -> None:
    res = runner.invoke(app, ["bench", "bros", "--quick", "--out", str(tmp_path), "--policies",
                              "vllm,nope"])  # fmt: skip
    assert res.exit_code == 2
    assert "unknown policy 'nope'" in res.output
