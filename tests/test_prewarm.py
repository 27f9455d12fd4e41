"""Prewarming: the stage forecast, the four policies, and their effect in the simulator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hermes.sim.build as build_module
from hermes.cluster.tool_pool import ToolBackendSpec
from hermes.core.demand_cost import LinearCost
from hermes.core.demand_sampler import DemandModel
from hermes.core.pdgraph import PDGraph, learn
from hermes.core.runs import AppRun, LLMCall, Stage, ToolCall
from hermes.core.stage_forecast import (
    next_backend_probability,
    next_tool_probability,
    next_tool_time_samples,
    prewarm_delay,
    stage_time_samples,
)
from hermes.engine.engine_config import EngineConfig
from hermes.policies.base import AppView, PolicyContext
from hermes.policies.fcfs import FCFS
from hermes.policies.prewarm import PREWARM_NAMES, PDGraphPrewarm, PrewarmOrder, make_prewarm
from hermes.profiles import load_profile
from hermes.sim.build import simulate
from hermes.sim.config import (
    AppWorkload,
    Arrivals,
    ConfigError,
    PolicyOptions,
    PrewarmName,
    SimConfig,
    ToolBackend,
    config_from_dict,
    load_config,
)
from hermes.sim.simulation import Simulation

MODEL = load_profile("llama-2-7b@a100")
EXAMPLE = Path(__file__).parent.parent / "examples" / "sim-apps.yaml"
# Service seconds = completion tokens x 8 ms: a little below what the engine takes alone
# (about 9.6 ms a token), as a forecast made from service seconds is.
COST = LinearCost(prefill_s_per_token=0.0, decode_s_per_token=0.008)


def llm(name: str, *completions: int) -> Stage:
    return Stage(name, "llm", "llm", tuple(LLMCall(200, c) for c in completions))


def tool(name: str, backend: str, *durations: float) -> Stage:
    return Stage(name, "tool", backend, tuple(ToolCall(d) for d in durations))


def app(run_id: str, *stages: Stage) -> AppRun:
    return AppRun("agent", run_id, stages)


def graph_of(*runs: AppRun) -> PDGraph:
    return learn(runs)["agent"]


def context(*runs: AppRun, seed: int = 0) -> PolicyContext:
    return PolicyContext({"agent": DemandModel(graph_of(*runs), COST)}, COST, seed=seed)


def view_of(run: AppRun, stage: int) -> AppView:
    s = run.stages[stage]
    return AppView(run.run_id, run.app, 0.0, stage_index=stage, stage=s, unfinished_calls=s.fanout)


# A code agent: think, then run the code (docker) in 3 of 5 runs, search (always warm) in 1, or
# stop; when it runs code, it summarises afterwards.
CODE = app("c", llm("think", 300), tool("exec", "docker", 0.5), llm("summary", 20))
SEARCH = app("s", llm("think", 300), tool("search", "search", 0.5))
STOP = app("x", llm("think", 300))
TRAINING = (CODE, CODE, CODE, SEARCH, STOP)
COLD = {"docker": 2.0, "env": 1.0}


# --- the forecast ------------------------------------------------------------------------------


def test_next_backend_probability_sums_tool_successors_per_backend() -> None:
    runs = (
        *TRAINING,
        app("e", llm("think", 300), tool("exec2", "docker", 0.5)),  # a second docker stage
    )
    g = graph_of(*runs)
    assert next_backend_probability(g, "think") == pytest.approx({"docker": 4 / 6, "search": 1 / 6})
    assert next_backend_probability(DemandModel(g, COST), "think") == next_backend_probability(
        g, "think"
    )
    assert next_backend_probability(g, "exec") == {}  # followed by an LLM stage only
    assert next_backend_probability(g, "summary") == {}  # followed by the end only
    assert next_backend_probability(g, "nowhere") == {}


def test_stage_time_samples_are_the_longest_of_the_unfinished_calls() -> None:
    g = graph_of(app("a", llm("think", 100, 200, 300)), app("b", llm("think", 400)))
    model = DemandModel(g, COST)
    costs = {0.8, 1.6, 2.4, 3.2}
    one = stage_time_samples(model, "think", 1, 4000, np.random.default_rng(0))
    assert set(one.round(9).tolist()) == costs
    three = stage_time_samples(model, "think", 3, 4000, np.random.default_rng(0))
    assert set(three.round(9).tolist()) <= costs
    # P(max of 3 draws is the longest) = 1 − (3/4)^3 = 0.578, against 1/4 for one draw.
    assert np.mean(three > 3.0) == pytest.approx(1 - 0.75**3, abs=0.03)
    assert np.mean(one > 3.0) == pytest.approx(0.25, abs=0.03)
    assert np.array_equal(
        stage_time_samples(model, "think", 0, 5, np.random.default_rng(0)), [0] * 5
    )
    again = stage_time_samples(model, "think", 3, 4000, np.random.default_rng(0))
    assert np.array_equal(three, again)
    with pytest.raises(ValueError, match="no stage 'nope'"):
        stage_time_samples(model, "nope", 1, 5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unfinished_calls"):
        stage_time_samples(model, "think", -1, 5, np.random.default_rng(0))


def test_call_costs_are_read_only() -> None:
    model = DemandModel(graph_of(app("a", llm("think", 100))), COST)
    costs = model.call_costs("think")
    assert costs.tolist() == [pytest.approx(0.8)]
    with pytest.raises(ValueError, match="read-only"):
        costs[0] = 5.0


# Think in a loop (3 of 7 thoughts think again), then run code (2), search (1) or stop (1).
LOOPING = (
    app("a", tool("fetch", "env", 0.1), llm("think", 50), llm("think", 50), tool("x", "docker", 1)),
    app("b", tool("fetch", "env", 0.1), llm("think", 50), tool("s", "search", 1)),
    app("c", tool("fetch", "env", 0.1), llm("think", 50)),
    app("d", tool("fetch", "env", 0.1), *[llm("think", 50)] * 3, tool("x", "docker", 1)),
)


def test_next_tool_probability_looks_through_llm_loops() -> None:
    g = graph_of(*LOOPING)
    assert g.transition_probabilities("think") == pytest.approx(
        {"think": 3 / 7, "x": 2 / 7, "s": 1 / 7, "<end>": 1 / 7}
    )
    # Absorbed from think: docker (2/7) / (1 − 3/7) = 1/2, search 1/4; the end takes the rest.
    expected = {"docker": 0.5, "search": 0.25}
    assert next_tool_probability(g, "fetch") == pytest.approx(expected)
    assert next_tool_probability(g, "think") == pytest.approx(expected)
    assert next_backend_probability(g, "fetch") == {}  # one stage ahead sees only the LLM
    assert next_tool_probability(DemandModel(g, COST), "fetch") == pytest.approx(expected)
    assert next_tool_probability(g, "x") == {}  # the end comes next
    assert next_tool_probability(g, "nowhere") == {}
    # A tool stage right after a tool stage counts as it is.
    g2 = graph_of(app("t", tool("a", "env", 1), tool("b", "docker", 1), llm("z", 5)))
    assert next_tool_probability(g2, "a") == {"docker": 1.0}
    assert next_tool_probability(g2, "b") == {}


stage_names = st.sampled_from(["a", "b", "x", "y", "z"])  # a, b: LLM; x: docker; y, z: env
STAGES = {
    "a": llm("a", 10),
    "b": llm("b", 20),
    "x": tool("x", "docker", 1),
    "y": tool("y", "env", 1),
    "z": tool("z", "env", 1),
}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(stage_names, min_size=1, max_size=8), min_size=1, max_size=8))
def test_next_tool_probability_is_the_first_step_fixed_point(runs: list[list[str]]) -> None:
    g = graph_of(*(app(f"r{i}", *(STAGES[n] for n in r)) for i, r in enumerate(runs)))
    p = {s: next_tool_probability(g, s) for s in g.nodes}
    for src, out in p.items():
        assert all(0 < v <= 1 + 1e-9 for v in out.values())
        assert sum(out.values()) <= 1 + 1e-9
        # First-step analysis: a tool successor counts for its backend, an LLM successor for
        # what comes after it; the chain ends surely, so this equation has one solution.
        expect: dict[str, float] = {}
        for dst, q in g.transition_probabilities(src).items():
            node = g.nodes.get(dst)
            if node is None:
                continue
            ahead = {node.backend: 1.0} if node.kind == "tool" else p[dst]
            for b, v in ahead.items():
                expect[b] = expect.get(b, 0.0) + q * v
        assert out == pytest.approx({b: v for b, v in expect.items() if v > 1e-12}, abs=1e-9)


def test_next_tool_time_samples_are_conditioned_on_the_backend() -> None:
    runs = (
        app("d", tool("fetch", "env", 0.1), llm("think", 50), tool("x", "docker", 1)),
        app(
            "s",
            tool("fetch", "env", 0.1),
            llm("think", 50),
            llm("review", 100),
            tool("s", "env", 1),
        ),
    )
    model = DemandModel(graph_of(*runs), COST)
    rng = np.random.default_rng(0)
    # To docker, think only (50 x 8 ms); to env, think and review (+ 100 x 8 ms).
    assert np.allclose(next_tool_time_samples(model, "fetch", "docker", 500, rng), 0.4)
    assert np.allclose(next_tool_time_samples(model, "fetch", "env", 500, rng), 1.2)
    assert np.allclose(next_tool_time_samples(model, "think", "env", 5, rng), 0.8)
    assert np.allclose(next_tool_time_samples(model, "review", "env", 5, rng), 0.0)  # next
    assert next_tool_time_samples(model, "fetch", "search", 5, rng).size == 0  # never next
    assert next_tool_time_samples(model, "x", "docker", 5, rng).size == 0  # the end is next
    assert next_tool_time_samples(model, "nowhere", "env", 5, rng).size == 0
    assert next_tool_time_samples(model, "fetch", "env", 0, rng).size == 0
    with pytest.raises(ValueError, match="n must be"):
        next_tool_time_samples(model, "fetch", "env", -1, rng)


def test_next_tool_time_samples_through_a_loop_and_a_fanout() -> None:
    model = DemandModel(graph_of(*LOOPING), COST)
    t = next_tool_time_samples(model, "fetch", "docker", 20_000, np.random.default_rng(1))
    # Given docker comes, think repeats w.p. 3/7 and exits to it w.p. (2/7) / (1/2) = 4/7: a
    # geometric number of 0.4 s thoughts, 7/4 on average.
    visits = t / 0.4
    assert np.allclose(visits, visits.round())
    assert visits.min() == 1
    assert visits.mean() == pytest.approx(7 / 4, rel=0.03)
    assert np.mean(visits == 1) == pytest.approx(4 / 7, abs=0.02)
    again = next_tool_time_samples(model, "fetch", "docker", 20_000, np.random.default_rng(1))
    assert np.array_equal(t, again)
    # Parallel calls: a stage lasts as long as its longest.
    fan = graph_of(app("f", tool("a", "env", 1), llm("m", 10, 100, 50), tool("b", "env", 1)))
    t = next_tool_time_samples(DemandModel(fan, COST), "a", "env", 4000, np.random.default_rng(2))
    assert set(t.round(9).tolist()) == {0.08, 0.4, 0.8}
    assert np.mean(t == 0.8) == pytest.approx(1 - (2 / 3) ** 3, abs=0.03)


def test_prewarm_delay_by_hand() -> None:
    t_c = [1.0, 2.0, 3.0, 4.0]
    # k / p_s of the samples must still be running when the instance is ready.
    assert prewarm_delay(1.0, t_c, 0.5, 0.5) == 2.5  # 2 of 4 are >= 3
    assert prewarm_delay(1.0, t_c, 0.5, 0.75) == 1.5  # 3 of 4 are >= 2
    assert prewarm_delay(1.0, t_c, 0.5, 1.0) == 0.5  # all are >= 1
    assert prewarm_delay(0.8, t_c, 0.5, 0.5) == 1.5  # 0.8 x 3/4 >= 0.5, 0.8 x 2/4 < 0.5
    assert prewarm_delay(1.0, t_c, 5.0, 0.5) == 0.0  # the stage ends first: warm now
    assert prewarm_delay(0.4, t_c, 0.5, 0.5) is None  # not needed often enough
    bad: list[dict[str, Any]] = [
        {"k": 0.0},
        {"k": 1.5},
        {"p_s": -0.1},
        {"t_p": -1.0},
        {"t_c_samples": []},
    ]
    for case in bad:
        args = {"p_s": 1.0, "t_c_samples": t_c, "t_p": 0.5, "k": 0.5, **case}
        with pytest.raises(ValueError, match=next(iter(case))):
            prewarm_delay(**args)


def survival(p_s: float, t_c: np.ndarray, x: float) -> float:
    """p_s · P(t_c ≥ x) over the samples, computed as prewarm_delay does."""
    return p_s * (np.count_nonzero(t_c >= x) / t_c.size)


# Times on a grid of quarter seconds are exact in binary: t_s + t_p is what it should be.
quarters = st.integers(0, 400).map(lambda n: n / 4)
samples = st.lists(quarters, min_size=1, max_size=30).map(np.array)
probabilities = st.floats(0.0, 1.0)
thresholds = st.floats(0.01, 1.0)


@settings(max_examples=300, deadline=None)
@given(probabilities, samples, quarters, thresholds)
def test_prewarm_delay_is_the_latest_that_meets_the_bound(
    p_s: float, t_c: np.ndarray, t_p: float, k: float
) -> None:
    t_s = prewarm_delay(p_s, t_c, t_p, k)
    if p_s < k:
        assert t_s is None
        return
    assert t_s is not None
    assert t_s >= 0
    if t_s > 0:
        assert survival(p_s, t_c, t_s + t_p) >= k
    # Any later start misses the bound: just past t_s + t_p, and from the next sample on.
    assert survival(p_s, t_c, t_s + t_p + 1e-6) < k
    later = t_c[t_c > t_s + t_p]
    if later.size:
        assert survival(p_s, t_c, float(later.min())) < k


@settings(max_examples=200, deadline=None)
@given(probabilities, samples, quarters, thresholds, thresholds)
def test_prewarm_delay_is_earlier_for_a_higher_threshold(
    p_s: float, t_c: np.ndarray, t_p: float, k1: float, k2: float
) -> None:
    lo, hi = sorted((k1, k2))
    a, b = prewarm_delay(p_s, t_c, t_p, lo), prewarm_delay(p_s, t_c, t_p, hi)
    if b is not None:
        assert a is not None
        assert a >= b
    assert (a is None) == (p_s < lo)


@settings(max_examples=200, deadline=None)
@given(probabilities, samples, quarters, quarters, thresholds)
def test_prewarm_delay_is_earlier_for_a_longer_cold_start(
    p_s: float, t_c: np.ndarray, t1: float, t2: float, k: float
) -> None:
    lo, hi = sorted((t1, t2))
    a, b = prewarm_delay(p_s, t_c, lo, k), prewarm_delay(p_s, t_c, hi, k)
    assert (a is None) == (b is None) == (p_s < k)
    if a is not None and b is not None:
        assert a >= b
        assert a - b <= hi - lo  # the start moves by at most the extra cold start


@settings(max_examples=200, deadline=None)
@given(probabilities, probabilities, samples, quarters, thresholds)
def test_prewarm_delay_is_later_for_a_likelier_backend(
    p1: float, p2: float, t_c: np.ndarray, t_p: float, k: float
) -> None:
    lo, hi = sorted((p1, p2))
    a, b = prewarm_delay(lo, t_c, t_p, k), prewarm_delay(hi, t_c, t_p, k)
    if a is not None:
        assert b is not None
        assert b >= a


@settings(max_examples=200, deadline=None)
@given(probabilities, samples, quarters, quarters, thresholds)
def test_prewarm_delay_moves_with_the_stage(
    p_s: float, t_c: np.ndarray, t_p: float, shift: float, k: float
) -> None:
    # A stage that runs `shift` longer lets the warm-up start `shift` later (when not clamped).
    a, b = prewarm_delay(p_s, t_c, t_p + shift, k), prewarm_delay(p_s, t_c + shift, t_p + shift, k)
    c = prewarm_delay(p_s, t_c + shift, t_p, k)
    if a is not None and b is not None and c is not None:
        assert b == prewarm_delay(p_s, t_c, t_p, k)
        assert c >= b
        assert c == pytest.approx(b + shift) or b == 0.0


# --- the policies ------------------------------------------------------------------------------


def test_registry_names_and_errors() -> None:
    assert PREWARM_NAMES == ("none", "keepalive", "on-queue", "pdgraph")
    for name in PREWARM_NAMES:
        assert make_prewarm(name).name == name
    with pytest.raises(ValueError, match="unknown prewarm policy 'hot'; known: none, keepalive"):
        make_prewarm("hot")
    with pytest.raises(ValueError, match="k must be in"):
        make_prewarm("pdgraph", k=0.0)


def test_config_names_a_bad_prewarm_option() -> None:
    base: dict[str, Any] = {"requests": {}}
    ok = config_from_dict({**base, "policy_options": {"prewarm": "pdgraph", "prewarm_k": 1}})
    assert (ok.policy_options.prewarm, ok.policy_options.prewarm_k) == ("pdgraph", 1.0)
    with pytest.raises(ConfigError, match=r"policy_options\.prewarm: Input should be 'none'"):
        config_from_dict({**base, "policy_options": {"prewarm": "hot"}})
    with pytest.raises(ConfigError, match=r"policy_options\.prewarm_k: Input should be greater"):
        config_from_dict({**base, "policy_options": {"prewarm_k": 0}})


def test_keepalive_ttl_per_policy() -> None:
    ttl = {name: make_prewarm(name).keepalive_s(60.0) for name in PREWARM_NAMES}
    assert ttl == {"none": 0.0, "keepalive": 60.0, "on-queue": 0.0, "pdgraph": 0.0}


def test_orders_by_policy() -> None:
    ctx = context(*TRAINING)
    cold = {**COLD, "search": 0.0}
    v = view_of(CODE, 0)
    assert make_prewarm("none", ctx, cold_starts=cold).on_stage(v, 10.0) == []
    assert make_prewarm("keepalive", ctx, cold_starts=cold).on_stage(v, 10.0) == []
    # t_c is 300 x 8 ms = 2.4 s in every sample; docker's cold start 2 s; search starts warm.
    on_queue = make_prewarm("on-queue", ctx, cold_starts=cold).on_stage(v, 10.0)
    assert on_queue == [PrewarmOrder("docker", 10.0, on_queue[0].hold_s)]
    assert on_queue[0].hold_s == pytest.approx(2.4 + 2.0)
    pdgraph = make_prewarm("pdgraph", ctx, cold_starts=cold).on_stage(v, 10.0)
    # Latest start: 2.4 − 2 = 0.4 s in; held p95 − delay + t_p = 2.4 − 0.4 + 2 = 4 s.
    assert [o.backend for o in pdgraph] == ["docker"]
    assert (pdgraph[0].at_s, pdgraph[0].hold_s) == pytest.approx((10.4, 4.0))
    # p(docker) = 0.6: under a threshold of 0.7 pdgraph orders nothing; on-queue still does.
    assert make_prewarm("pdgraph", ctx, k=0.7, cold_starts=cold).on_stage(v, 10.0) == []
    assert make_prewarm("on-queue", ctx, k=0.7, cold_starts=cold).on_stage(v, 10.0) != []
    # No orders where no cold backend may come next, for unknown types and stages, or
    # without the backend's cold start.
    for name in ("on-queue", "pdgraph"):
        policy = make_prewarm(name, ctx, cold_starts=cold)
        assert policy.on_stage(view_of(CODE, 1), 10.0) == []
        assert policy.on_stage(view_of(CODE, 2), 10.0) == []
        other = AppRun("other", "o", CODE.stages)
        assert policy.on_stage(view_of(other, 0), 10.0) == []
        unseen = app("u", llm("ponder", 300), tool("exec", "docker", 1.0))
        assert policy.on_stage(view_of(unseen, 0), 10.0) == []
        assert make_prewarm(name, ctx).on_stage(v, 10.0) == []


def test_the_hold_is_at_least_a_second() -> None:
    ctx = context(app("q", llm("think", 1), tool("exec", "docker", 0.5)))
    (order,) = make_prewarm("pdgraph", ctx, cold_starts={"docker": 0.001}).on_stage(
        view_of(CODE, 0), 0.0
    )
    assert order.hold_s == 1.0


def test_pdgraph_orders_are_seeded_not_sequenced() -> None:
    runs = [app(f"r{n}", llm("think", n), tool("exec", "docker", 0.5)) for n in range(50, 500)]
    ctx = context(*runs, seed=3)
    first = make_prewarm("pdgraph", ctx, cold_starts=COLD)
    second = make_prewarm("pdgraph", ctx, cold_starts=COLD)
    v1, v2 = view_of(CODE, 0), view_of(app("z", llm("think", 1, 1), tool("e", "docker", 1)), 0)
    (a1,), (a2,) = first.on_stage(v1, 0.0), first.on_stage(v2, 0.0)
    (b2,), (b1,) = second.on_stage(v2, 0.0), second.on_stage(v1, 0.0)
    assert (a1, a2) == (b1, b2)
    # Two calls must both end: the stage lasts longer, so the warm-up starts later.
    assert a2.at_s > a1.at_s


def react(run_id: str, steps: int, thought: int = 30, act_s: float = 0.2) -> AppRun:
    """A ReAct loop: a short thought (30 tokens: 0.24 s of service), then an act on the 1 s
    cold-start `env`, `steps` times."""
    loop = (llm("thought", thought), tool("act", "env", act_s))
    return app(run_id, *[stage for _ in range(steps) for stage in loop])


# act → thought in 65 of 75 acts (0.87), then always an act.
REACT_TRAINING = tuple(react(f"t{n}", n) for n in range(3, 13))


def act_view(run: AppRun) -> AppView:
    return view_of(run, 1)


def test_retain_only_in_pdgraph_and_for_p95_of_the_gap_plus_a_cold_start() -> None:
    ctx = context(*REACT_TRAINING)
    v = act_view(REACT_TRAINING[0])
    holds = {
        name: make_prewarm(name, ctx, cold_starts=COLD).retain_s(v, "act", "env", 5.0)
        for name in PREWARM_NAMES
    }
    # The next tool stage is an act on env (p = 0.87) after one 0.24 s thought; 1 s cold start.
    assert holds == {"none": 0.0, "keepalive": 0.0, "on-queue": 0.0, "pdgraph": pytest.approx(1.24)}
    # p95, not the mean: one thought in 10 takes 100 tokens (0.8 s).
    runs = [react(f"r{n}", 4, thought=100 if n % 10 == 0 else 30) for n in range(100)]
    hold = make_prewarm("pdgraph", context(*runs), cold_starts=COLD).retain_s(v, "act", "env", 0)
    assert hold == pytest.approx(0.8 + 1.0)


def test_retain_looks_through_every_llm_stage_to_the_next_tool_stage() -> None:
    run = app(
        "p",
        llm("plan", 10),
        tool("act", "env", 0.2),
        llm("reflect", 20),
        llm("think", 30),
        tool("act2", "env", 0.2),
        llm("summary", 40),
        tool("exec", "docker", 0.5),
    )
    policy = make_prewarm("pdgraph", context(run), cold_starts=COLD)
    v = act_view(run)
    # act → reflect → think → act2: held 0.16 + 0.24 s, plus env's cold start.
    assert policy.retain_s(v, "act", "env", 0.0) == pytest.approx(0.4 + 1.0)
    # After act2 the next tool stage is on docker: an env instance is not kept for it.
    assert policy.retain_s(v, "act2", "env", 0.0) == 0.0
    assert policy.retain_s(v, "act2", "docker", 0.0) == pytest.approx(0.32 + 2.0)
    assert policy.retain_s(v, "exec", "docker", 0.0) == 0.0  # the end comes next
    # No retention without a cold start, for unknown stages and application types.
    assert make_prewarm("pdgraph", context(run)).retain_s(v, "act", "env", 0.0) == 0.0
    assert policy.retain_s(v, "nowhere", "env", 0.0) == 0.0
    other = AppView("o", "other", 0.0)
    assert policy.retain_s(other, "act", "env", 0.0) == 0.0


def test_retain_needs_the_backend_likely_next() -> None:
    # After an act, another thought and act in 3 of 5 (p = 0.6), the end in 2.
    runs = (react("a", 4), react("b", 1))
    v = act_view(runs[0])
    for k, kept in ((0.5, True), (0.6, True), (0.7, False)):
        policy = make_prewarm("pdgraph", context(*runs), k=k, cold_starts=COLD)
        assert (policy.retain_s(v, "act", "env", 0.0) > 0) == kept


def test_retain_is_seeded_and_follows_the_graph() -> None:
    runs = [react(f"r{n}", 3, thought=n) for n in range(20, 60)]
    ctx = context(*runs, seed=4)
    v = act_view(runs[0])
    a = make_prewarm("pdgraph", ctx, cold_starts=COLD)
    b = make_prewarm("pdgraph", ctx, cold_starts=COLD)
    first = a.retain_s(v, "act", "env", 0.0)
    assert b.retain_s(v, "act", "env", 9.0) == first
    # Longer thoughts learned: a new graph version, a longer hold.
    ctx.models["agent"].graph.observe_all([react(f"s{n}", 3, thought=400) for n in range(40)])
    assert a.retain_s(v, "act", "env", 0.0) > first + 2


# --- in the simulator --------------------------------------------------------------------------


def simulation(
    prewarm: str | None,
    runs: list[tuple[float, AppRun]],
    training: tuple[AppRun, ...] = TRAINING,
    *,
    k: float = 0.5,
    keepalive_s: float = 60.0,
) -> Simulation:
    policy = None if prewarm is None else make_prewarm(prewarm, context(*training), k=k,
                                                       cold_starts=COLD)  # fmt: skip
    sim = Simulation(FCFS(), prewarm=policy)
    sim.add_model("llama-2-7b", MODEL, EngineConfig(), replicas=1)
    for name, cold in COLD.items():
        sim.add_tool_backend(ToolBackendSpec(name, cold_start_s=cold, keepalive_s=keepalive_s))
    sim.add_apps(runs)
    sim.run()
    assert all(a.finish_s is not None and a.failed is None for a in sim.apps.values())
    return sim


def tools(sim: Simulation) -> dict[str, dict[str, float]]:
    out = sim.results()["tools"]
    assert isinstance(out, dict)
    return out


def test_pdgraph_hides_the_cold_start_late_and_none_pays_it() -> None:
    sims = {name: simulation(name, [(0.0, CODE)]) for name in PREWARM_NAMES}
    cold = {name: s.apps[0].cold_wait_s for name, s in sims.items()}
    assert cold == {"none": 2.0, "keepalive": 2.0, "on-queue": 0.0, "pdgraph": 0.0}
    for name in ("on-queue", "pdgraph"):
        docker = tools(sims[name])["docker"]
        assert (docker["prewarms"], docker["prewarms_unused"], docker["cold_starts"]) == (1, 0, 1)
    # pdgraph starts the instance 0.4 s into the stage, on-queue at once: 0.4 warm s less.
    warm = {name: tools(s)["docker"]["warm_instance_s"] for name, s in sims.items()}
    assert warm["on-queue"] - warm["pdgraph"] == pytest.approx(0.4)
    # Warm until the call ends, then gone (TTL 0); keepalive keeps it 60 s more.
    assert warm["none"] == pytest.approx(2.5)
    assert warm["keepalive"] == pytest.approx(62.5)


def test_pdgraph_skips_a_backend_below_the_threshold() -> None:
    for k, prewarms, cold in ((0.7, 0, 2.0), (0.5, 1, 0.0)):
        sim = simulation("pdgraph", [(0.0, CODE)], k=k)
        assert tools(sim)["docker"]["prewarms"] == prewarms
        assert sim.apps[0].cold_wait_s == cold
    sim = simulation("on-queue", [(0.0, CODE)], k=0.7)  # on-queue has no threshold
    assert sim.apps[0].cold_wait_s == 0.0


def test_an_unused_prewarm_is_held_then_dropped() -> None:
    sim = simulation("on-queue", [(0.0, STOP)])
    docker = tools(sim)["docker"]
    assert (docker["prewarms"], docker["prewarms_unused"]) == (1, 1)
    # Warming 2 s, then held 4.4 s (p95 of t_c 2.4 + the cold start 2) and removed.
    assert docker["warm_instance_s"] == pytest.approx(2.0 + 4.4)
    assert sim.tools["docker"].pool.instances(sim.loop.now) == {"warming": 0, "busy": 0, "idle": 0}
    assert sim.reservations == {"docker": 0}


def test_a_hold_is_renewed_while_the_app_is_still_in_the_ordering_stage() -> None:
    # Trained on 0.24 s thoughts, pdgraph warms docker at once and holds it 0.24 + 2 s after
    # it is ready, to 4.24 s; this thought takes about 8 s.
    training = (app("q", llm("think", 30), tool("exec", "docker", 0.5)),)
    run = app("slow", llm("think", 800), tool("exec", "docker", 0.5), llm("summary", 10))
    sim = simulation("pdgraph", [(0.0, run)], training)
    assert sim.apps[0].cold_wait_s == 0.0
    docker = tools(sim)["docker"]
    assert (docker["prewarms"], docker["prewarms_unused"], docker["cold_starts"]) == (1, 0, 1)
    assert sim.prewarm_renewals >= 2
    # Renewed up to the call, then gone when it ended (TTL 0; the end comes next).
    exec_end = sim.apps[0].finish_s
    assert exec_end is not None
    assert docker["warm_instance_s"] < exec_end
    assert sim.tools["docker"].pool.instances(sim.loop.now) == {"warming": 0, "busy": 0, "idle": 0}


def test_keepalive_keeps_instances_across_applications() -> None:
    runs = [(20.0 * i, CODE) for i in range(4)]
    by_name = {name: simulation(name, runs) for name in ("none", "keepalive")}
    docker = {name: tools(s)["docker"] for name, s in by_name.items()}
    assert docker["keepalive"]["cold_starts"] == 1
    assert docker["none"]["cold_starts"] == 4
    waits = {name: [a.cold_wait_s for a in s.apps.values()] for name, s in by_name.items()}
    assert waits == {"keepalive": [2.0, 0, 0, 0], "none": pytest.approx([2.0] * 4)}
    assert docker["keepalive"]["warm_instance_s"] > 3 * docker["none"]["warm_instance_s"]


def test_an_order_that_fires_after_the_app_moved_on_is_skipped() -> None:
    # Trained on long thoughts (8 s of service): pdgraph waits 6 s before warming docker. This
    # thought takes 0.1 s, so the app is in its summary (or done) when the order fires.
    slow = app("slow", llm("think", 1000), tool("exec", "docker", 0.5), llm("summary", 20))
    quick = app("q", llm("think", 10), tool("exec", "docker", 0.5), llm("summary", 900))
    for run in (quick, app("q2", llm("think", 10), tool("exec", "docker", 0.5))):
        sim = simulation("pdgraph", [(0.0, run)], training=(slow,))
        assert (sim.prewarm_orders, sim.prewarm_orders_late) == (1, 1)
        assert tools(sim)["docker"]["prewarms"] == 0
        assert sim.apps[0].cold_wait_s == 2.0
    assert sim.apps[0].finish_s is not None
    assert sim.apps[0].finish_s < 6.0  # q2 was finished when its order came


def test_two_applications_ordering_at_once_get_two_instances() -> None:
    sim = simulation("pdgraph", [(0.0, CODE), (0.0, CODE)])
    docker = tools(sim)["docker"]
    assert (docker["prewarms"], docker["prewarms_unused"], docker["cold_starts"]) == (2, 0, 2)
    assert [a.cold_wait_s for a in sim.apps.values()] == [0.0, 0.0]
    assert sim.reservations == {"docker": 0}  # both spent by the exec stages


def test_a_reservation_given_up_frees_its_instance_for_the_next_order() -> None:
    # App 0 stops after thinking (at 2.9 s): its instance stays held until 6.4 s, and app 1's
    # order, fired at 3.4 s, counts on it (and holds it longer) instead of starting another.
    sim = simulation("pdgraph", [(0.0, STOP), (3.0, CODE)])
    docker = tools(sim)["docker"]
    assert (docker["prewarms"], docker["cold_starts"]) == (1, 1)
    assert sim.apps[1].cold_wait_s == 0.0


def test_a_react_loop_pays_only_its_first_cold_start_under_pdgraph(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = react("loop", 8)
    sims = {
        name: simulation(name, [(0.0, run)], REACT_TRAINING)
        for name in ("none", "on-queue", "pdgraph")
    }
    cold = {name: s.apps[0].cold_wait_s for name, s in sims.items()}
    env = {name: tools(s)["env"] for name, s in sims.items()}
    assert cold["none"] == pytest.approx(8.0)
    assert env["none"]["cold_starts"] == 8
    # pdgraph warms env as the first thought starts, which hides the thought's 0.3 s of the
    # first act's cold start, then keeps the instance from act to act.
    assert 0.5 < cold["pdgraph"] < 1.0
    assert (env["pdgraph"]["cold_starts"], sims["pdgraph"].retains) == (1, 8)
    # Looking one stage ahead, every act waits about as long as the first.
    assert cold["on-queue"] == pytest.approx(8 * cold["pdgraph"], rel=0.05)
    # Keeping an instance through a thought costs less than warming a new one for each act.
    assert env["pdgraph"]["warm_instance_s"] < 0.75 * env["none"]["warm_instance_s"]
    # It is the retention: without it pdgraph is on-queue.
    monkeypatch.setattr(PDGraphPrewarm, "retain_s", lambda *args: 0.0)
    alone = simulation("pdgraph", [(0.0, run)], REACT_TRAINING)
    assert alone.apps[0].cold_wait_s == pytest.approx(cold["on-queue"])


def test_react_loops_side_by_side_each_pay_only_their_first_cold_start() -> None:
    runs = [(0.1 * i, react(f"loop{i}", 6 + i)) for i in range(4)]
    pdgraph, none = (simulation(name, runs, REACT_TRAINING) for name in ("pdgraph", "none"))
    assert [a.cold_wait_s for a in none.apps.values()] == pytest.approx([6.0, 7.0, 8.0, 9.0])
    waits = [a.cold_wait_s for a in pdgraph.apps.values()]
    assert all(0 < w < 1.0 for w in waits), waits
    assert tools(pdgraph)["env"]["cold_starts"] == 4


def test_critical_path_cold_wait_is_the_longest_call_per_stage() -> None:
    run = app("p", llm("think", 50), tool("exec", "docker", 0.5, 1.0), tool("act", "env", 0.2))
    sim = simulation("none", [(0.0, run)], training=(run,))
    assert sim.apps[0].cold_wait_s == pytest.approx(2.0 + 1.0)  # not 2 + 2 + 1
    out = sim.results()
    apps = out["apps"]
    assert isinstance(apps, dict)
    assert apps["cold_wait_total_s"] == pytest.approx(3.0)
    assert apps["cold_wait"]["max"] == pytest.approx(3.0)
    assert out["tools_total"] == {
        "warm_instance_s": pytest.approx(2.5 + 3.0 + 1.2),
        "cold_wait_s": pytest.approx(5.0),
        "cold_starts": 3,
    }


def without_wall(out: dict[str, object]) -> str:
    out.pop("wall_s")
    return json.dumps(out, sort_keys=True)


def test_no_prewarm_policy_is_keepalive(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(EXAMPLE)
    cfg = cfg.model_copy(
        update={
            "requests": cfg.requests.model_copy(update={"limit": 300}) if cfg.requests else None,
            "apps": cfg.apps.model_copy(update={"count": 40}) if cfg.apps else None,
        }
    )
    assert cfg.policy_options.prewarm == "keepalive"
    out = simulate(cfg)
    total = out["tools_total"]
    assert isinstance(total, dict)
    assert total["cold_starts"] > 0  # cold backends were used
    default = without_wall(out)
    monkeypatch.setattr(build_module, "make_prewarm", lambda *args, **kwargs: None)
    assert without_wall(simulate(cfg)) == default


def test_end_to_end_pdgraph_waits_much_less_than_none() -> None:
    def run(prewarm: PrewarmName) -> dict[str, float]:
        cfg = SimConfig(
            policy_options=PolicyOptions(prewarm=prewarm, training_runs=100),
            tools=[
                ToolBackend(name="docker", cold_start_s=2.0),
                ToolBackend(name="env", cold_start_s=1.0),
            ],
            apps=AppWorkload(
                templates={"factool_code": 1, "react_alfw": 1},
                count=20,
                arrivals=Arrivals(process="poisson", rate_per_s=0.2),
            ),
        )
        out = simulate(cfg)
        apps, total = out["apps"], out["tools_total"]
        assert isinstance(apps, dict)
        assert isinstance(total, dict)
        assert apps["completed"] == 20
        return {"cold_wait": apps["cold_wait_total_s"], "warm": total["warm_instance_s"]}

    none, pdgraph, keepalive = run("none"), run("pdgraph"), run("keepalive")
    assert none["cold_wait"] > 50
    # The ReAct loops pay their first act's cold start only.
    assert pdgraph["cold_wait"] < 0.2 * none["cold_wait"]
    # Keeping an instance through a thought costs less than warming a new one for each act;
    # keeping instances for a minute costs much more.
    assert pdgraph["warm"] < none["warm"]
    assert keepalive["warm"] > 1.5 * pdgraph["warm"]
