"""Scheduling policies: each one's defining property, and the registry."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hermes.core.demand_cost import LinearCost
from hermes.core.demand_sampler import DemandModel
from hermes.core.pdgraph import learn
from hermes.core.runs import AppRun, LLMCall, Stage, ToolCall
from hermes.policies.base import NO_DEADLINE, AppView, CallInfo, PolicyContext
from hermes.policies.registry import make_policy, policy_names, register
from hermes.sim.build import build, simulate
from hermes.sim.config import AppWorkload, Arrivals, InstanceGroup, SimConfig
from hermes.sim.simulation import Simulation

COST = LinearCost()
CALL = CallInfo("c", 5.0, 100)


def fixed_run(app: str, prompts: list[int], completion: int, tool_s: float = 0.0) -> AppRun:
    stages = [
        Stage(f"s{i}", "llm", "llm", (LLMCall(p, completion),)) for i, p in enumerate(prompts)
    ]
    if tool_s:
        stages.insert(1, Stage("t", "tool", "env", (ToolCall(tool_s),)))
    return AppRun(app, f"{app}-run", tuple(stages))


def view(run: AppRun, stage: int = 0, attained: float = 0.0, **kw: float) -> AppView:
    v = AppView(
        run.app,
        run.app,
        arrival_s=kw.get("arrival_s", 0.0),
        deadline_s=kw.get("deadline_s"),
        stage_index=stage,
        stage=run.stages[stage],
        unfinished_calls=run.stages[stage].fanout,
        finished=list(run.stages[:stage]),
        attained_s=attained,
        stage_service_s=attained,
        run=run,
    )
    return v


def context(runs: list[AppRun]) -> PolicyContext:
    # Learned from identical copies of each run: every demand is deterministic.
    graphs = learn([r for r in runs for _ in range(5)])
    models = {name: DemandModel(g, COST) for name, g in graphs.items()}
    return PolicyContext(models, COST, samples=200)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.integers(1, 3000), min_size=1, max_size=4),
            st.integers(1, 500),
            st.integers(0, 3),
        ),
        min_size=2,
        max_size=6,
    )
)
def test_gittins_orders_as_oracle_when_demand_is_deterministic(
    specs: list[tuple[list[int], int, int]],
) -> None:
    runs = [fixed_run(f"app{i}", prompts, c) for i, (prompts, c, _) in enumerate(specs)]
    ctx = context(runs)
    gittins, oracle = make_policy("gittins", ctx), make_policy("oracle", ctx)
    views = [
        view(r, stage=min(s, len(r.stages) - 1)) for r, (_, _, s) in zip(runs, specs, strict=True)
    ]
    g = [gittins.priority(CALL, v, 0.0) for v in views]
    o = [oracle.priority(CALL, v, 0.0) for v in views]
    for a, b in zip(g, o, strict=True):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12)


def test_srjf_mean_is_the_expected_remaining_demand() -> None:
    short = fixed_run("short", [100], 10)
    long = fixed_run("long", [100, 2000, 2000], 300)
    ctx = context([short, long])
    srjf = make_policy("srjf-mean", ctx)
    expected = float(COST.llm_calls_s(np.array([100.0]), np.array([10.0]))[0])
    assert srjf.priority(CALL, view(short), 0.0) == pytest.approx(expected)
    assert srjf.priority(CALL, view(short), 0.0) < srjf.priority(CALL, view(long), 0.0)
    # Attained service is subtracted from what is left.
    assert srjf.priority(CALL, view(short, attained=0.01), 0.0) == pytest.approx(expected - 0.01)


def test_app_level_policies() -> None:
    run = fixed_run("a", [10], 5)
    early, late = view(run, arrival_s=1.0), view(run, arrival_s=9.0)
    vllm, parrot = make_policy("vllm"), make_policy("parrot")
    assert vllm.priority(CALL, early, 20.0) == CALL.arrival_s  # the request, not the app
    assert parrot.priority(CALL, early, 20.0) == 1.0
    assert parrot.priority(CALL, late, 20.0) == 9.0
    plas = make_policy("plas")
    late.total_attained_s = 0.5
    early.total_attained_s = 3.0
    assert plas.priority(CALL, late, 0.0) < plas.priority(CALL, early, 0.0)


def test_vtc_lifts_newcomers_to_the_least_served_active_counter() -> None:
    vtc = make_policy("vtc")
    run = fixed_run("a", [10], 5)
    a, b = view(run), view(run)
    a.app_id, b.app_id = "a", "b"
    vtc.on_arrival(a, 0.0)
    a.served_tokens = 700
    vtc.on_arrival(b, 1.0)  # starts level with a, not at 0
    assert vtc.priority(CALL, b, 1.0) == 700
    b.served_tokens = 10
    assert vtc.priority(CALL, b, 1.0) > vtc.priority(CALL, a, 1.0)
    vtc.on_done(a, 2.0)
    c = view(run)
    c.app_id = "c"
    vtc.on_arrival(c, 2.0)
    assert vtc.priority(CALL, c, 2.0) == 710  # b's counter is now the floor


@pytest.mark.parametrize("name", ["edf", "lstf"])
def test_deadline_applications_never_queue_behind_ones_without(name: str) -> None:
    runs = [fixed_run("x", [3000, 3000], 400), fixed_run("y", [10], 1)]
    policy = make_policy(name, context(runs))
    far = view(runs[0], deadline_s=1e6)
    none = view(runs[1], arrival_s=0.0)
    for now in (0.0, 1e3, 1e5):
        assert policy.priority(CALL, far, now) < policy.priority(CALL, none, now)
    assert policy.priority(CALL, none, 0.0) >= NO_DEADLINE


def test_lstf_starts_long_work_before_a_nearer_short_deadline() -> None:
    long = fixed_run("long", [4000, 4000, 4000], 500)
    short = fixed_run("short", [10], 1)
    ctx = context([long, short])
    lstf, edf = make_policy("lstf", ctx), make_policy("edf", ctx)
    need = float(COST.llm_calls_s(np.full(3, 4000.0), np.full(3, 500.0)).sum())
    lv = view(long, deadline_s=need + 0.5)
    sv = view(short, deadline_s=1.0)
    assert edf.priority(CALL, sv, 0.0) < edf.priority(CALL, lv, 0.0)
    assert lstf.priority(CALL, lv, 0.0) < lstf.priority(CALL, sv, 0.0)
    assert lstf.priority(CALL, lv, 0.0) == pytest.approx(0.5)


def test_lstf_counts_parallel_calls_once_on_the_critical_path() -> None:
    fan = AppRun("fan", "fan-run", (Stage("map", "llm", "llm", (LLMCall(1000, 100),) * 3),))
    lstf = make_policy("lstf", context([fan]))
    one = float(COST.llm_calls_s(np.array([1000.0]), np.array([100.0]))[0])
    v = view(fan, deadline_s=10.0)
    # The three calls run side by side: the stage lasts one call, not three.
    assert lstf.priority(CALL, v, 2.0) == pytest.approx(10.0 - 2.0 - one)
    # A third of the attained service is each call's progress.
    v.attained_s = 0.3 * one
    assert lstf.priority(CALL, v, 2.0) == pytest.approx(10.0 - 2.0 - 0.9 * one)


def test_lstf_puts_apps_out_of_slack_behind_those_with_slack_and_ahead_of_none() -> None:
    long = fixed_run("long", [4000, 4000, 4000], 500)
    short = fixed_run("short", [10], 1)
    lstf = make_policy("lstf", context([long, short]))
    late = view(long, deadline_s=1.0)  # needs far more than a second
    later = view(long, deadline_s=2.0)
    ok = view(short, deadline_s=1e4)
    none = view(short)
    p = [lstf.priority(CALL, v, 0.0) for v in (ok, late, later, none)]
    assert p == sorted(p)
    assert p[0] < 1e4 < p[1] < NO_DEADLINE <= p[3]


def test_run_deadlines_are_relative_to_arrival() -> None:
    run = AppRun("a", "r", fixed_run("a", [10], 2).stages, deadline_s=5.0)
    sim = build(
        SimConfig(instances=[InstanceGroup(count=1)], apps=AppWorkload(runs=["x"], count=1)),
        runs=[(100.0, run)],
        graphs={},
    )
    assert sim.apps[0].view.deadline_s == 105.0


@pytest.mark.parametrize("name", ["gittins", "srjf-mean"])
def test_a_batched_ranking_round_equals_ranking_one_by_one(name: str) -> None:
    from hermes.experiments.ranking_overhead import _views
    from hermes.sim.build import template_graphs

    graphs = template_graphs(["factool_kbqa", "react_alfw", "langchain_mapreduce"], 50, 0)
    models = {k: DemandModel(g, COST) for k, g in graphs.items()}
    views = _views(graphs, 300, np.random.default_rng(3))
    views.append(view(fixed_run("unseen", [10], 5)))  # no graph: attained-service fallback
    views[-1].total_attained_s = 0.75
    batched = make_policy(name, PolicyContext(models, COST, samples=200))
    single = make_policy(name, PolicyContext(models, COST, samples=200))
    ranks = batched.rank_apps(views, 0.0)
    assert ranks is not None
    assert ranks == [single.priority(CALL, v, 0.0) for v in views]
    assert ranks[-1] == 0.75
    assert make_policy("vllm").rank_apps(views, 0.0) is None


def test_gittins_without_a_graph_falls_back_to_attained_service() -> None:
    gittins = make_policy("gittins", PolicyContext())
    v = view(fixed_run("unseen", [10], 5))
    v.total_attained_s = 1.25
    assert gittins.priority(CALL, v, 0.0) == 1.25


def test_registry() -> None:
    assert policy_names() == [
        "edf",
        "gittins",
        "lstf",
        "oracle",
        "parrot",
        "plas",
        "srjf-mean",
        "vllm",
        "vtc",
    ]
    with pytest.raises(ValueError, match="already registered"):
        register("vllm", lambda ctx: make_policy("parrot"))
    with pytest.raises(ValueError, match="unknown policy 'x'; known: edf"):
        make_policy("x")


def test_gittins_beats_fcfs_when_the_engine_queues() -> None:
    """With few sequences per batch, requests queue and application order matters."""

    def act(policy: str) -> float:
        cfg = SimConfig(
            policy=policy,
            instances=[InstanceGroup(count=1, max_num_seqs=4)],
            apps=AppWorkload(
                templates={"factool_math": 1, "langchain_mapreduce": 1, "react_fever": 1},
                count=40,
                arrivals=Arrivals(process="poisson", rate_per_s=0.5),
            ),
        )
        out = simulate(cfg)
        apps = out["apps"]
        assert isinstance(apps, dict)
        assert apps["completed"] == 40
        mean = apps["act"]["mean"]
        assert isinstance(mean, float)
        return mean

    assert act("gittins") < 0.8 * act("vllm")


def test_ranking_rounds_run_only_for_dynamic_policies() -> None:
    def rounds(policy: str) -> int:
        cfg = SimConfig(
            policy=policy,
            apps=AppWorkload(
                templates={"factool_math": 1},
                count=5,
                arrivals=Arrivals(process="poisson", rate_per_s=1.0),
            ),
        )
        sim: Simulation = build(cfg)
        sim.run()
        assert all(a.finish_s is not None for a in sim.apps.values())
        return sim.rank_rounds

    assert rounds("parrot") == 0
    assert rounds("gittins") > 0


def test_one_registry_names_every_kind_of_decision_unambiguously() -> None:
    from hermes.engine.bros_engine import BrosEngine
    from hermes.engine.scheduler import Engine
    from hermes.policies.qlm.policy import QLMPolicy
    from hermes.policies.registry import REGISTRY, make_named_engine, make_queue_policy
    from hermes.profiles import load_profile

    qualified = [e.qualified for e in REGISTRY.entries()]
    assert len(qualified) == len(set(qualified))
    assert {"ranking:vllm", "engine:vllm", "queue:vllm", "queue:qlm", "engine:bros"} <= set(
        qualified
    )
    # A short name two kinds share needs its kind; with it, each kind gets its own thing.
    with pytest.raises(ValueError, match="'edf' is ambiguous: say queue:edf or ranking:edf"):
        REGISTRY.resolve("edf")
    assert REGISTRY.resolve("edf", "queue").qualified == "queue:edf"
    assert REGISTRY.resolve("ranking:edf").kind == "ranking"
    assert REGISTRY.resolve("gittins").qualified == "ranking:gittins"  # unique: no kind needed
    with pytest.raises(ValueError, match="the kind must be queue"):
        REGISTRY.resolve("ranking:edf", "queue")
    with pytest.raises(ValueError, match="unknown engine 'fifo'"):
        REGISTRY.resolve("fifo", "engine")
    cost = load_profile("llama-2-7b@a100")
    assert isinstance(make_named_engine("vllm-priority", cost), Engine)
    assert isinstance(make_named_engine("engine:bros", cost), BrosEngine)
    qlm, noplan = make_queue_policy("qlm"), make_queue_policy("qlm-noplan")
    assert isinstance(qlm, QLMPolicy)
    assert isinstance(noplan, QLMPolicy)
    assert (qlm.options.planner, noplan.options.planner) == ("milp", "edf")
