"""The simulator end to end: applications, tool pools, routing, conservation, determinism."""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from hermes.cluster.tool_pool import ToolBackendSpec
from hermes.core.runs import AppRun, LLMCall, Stage, ToolCall
from hermes.engine.engine_config import EngineConfig
from hermes.engine.request import RequestState
from hermes.policies.fcfs import FCFS
from hermes.profiles import load_profile
from hermes.sim.build import build, simulate
from hermes.sim.config import (
    AppWorkload,
    Arrivals,
    InstanceGroup,
    RequestWorkload,
    SimConfig,
    ToolBackend,
)
from hermes.sim.simulation import Simulation
from hermes.workloads.request_traces import TraceRequest

MODEL = load_profile("llama-2-7b@a100")


def llm(name: str, *calls: tuple[int, int], model: str | None = None) -> Stage:
    return Stage(name, "llm", "llm", tuple(LLMCall(p, c) for p, c in calls), model=model)


def tool(name: str, backend: str, *durations: float) -> Stage:
    return Stage(name, "tool", backend, tuple(ToolCall(d) for d in durations))


def small_sim(max_model_len: int = 4096) -> Simulation:
    sim = Simulation(FCFS())
    sim.add_model("llama-2-7b", MODEL, EngineConfig(max_model_len=max_model_len), replicas=1)
    return sim


def test_stages_run_in_order_and_calls_in_parallel() -> None:
    sim = small_sim()
    run = AppRun(
        "demo",
        "r0",
        (
            llm("plan", (200, 30)),
            tool("exec", "docker", 1.5, 0.5),
            llm("map", (100, 20), (150, 25), (120, 10)),
            llm("reduce", (300, 40)),
        ),
    )
    sim.add_tool_backend(ToolBackendSpec("docker", cold_start_s=2.0, keepalive_s=60.0))
    sim.add_apps([(1.0, run)])
    sim.run()
    app = sim.apps[0]
    assert app.failed is None
    assert app.finish_s is not None
    by_stage: dict[int, list[float]] = defaultdict(list)
    finish: dict[int, float] = defaultdict(float)
    for r in sim.requests:
        assert isinstance(r.id, tuple)
        stage = r.id[2]
        by_stage[stage].append(r.arrival_s)
        assert r.finish_s is not None
        finish[stage] = max(finish[stage], r.finish_s)
    # The three map calls are issued together, after the tool stage: two cold docker
    # instances (2 s warm-up each) and the longer call of 1.5 s.
    assert len(set(by_stage[2])) == 1
    assert by_stage[2][0] == pytest.approx(finish[0] + 2.0 + 1.5)
    assert by_stage[3][0] == finish[2]
    assert app.finish_s == finish[3]
    docker = sim.tools["docker"]
    assert docker.pool.cold_starts == 2
    assert docker.cold_wait_s == pytest.approx(4.0)


def test_keepalive_decides_cold_starts() -> None:
    def cold_starts(keepalive: float) -> int:
        sim = small_sim()
        sim.add_tool_backend(ToolBackendSpec("env", cold_start_s=1.0, keepalive_s=keepalive))
        runs = [
            (10.0 * i, AppRun("a", f"r{i}", (tool("act", "env", 0.5), llm("think", (50, 5)))))
            for i in range(5)
        ]
        sim.add_apps(runs)
        sim.run()
        assert all(a.finish_s is not None for a in sim.apps.values())
        return sim.tools["env"].pool.cold_starts

    assert cold_starts(0.0) == 5
    assert cold_starts(60.0) == 1


def test_a_rejected_call_fails_its_application_with_the_reason() -> None:
    sim = small_sim(max_model_len=1000)
    ok = AppRun("a", "ok", (llm("x", (100, 10)), llm("y", (100, 10))))
    bad = AppRun("a", "bad", (llm("x", (900, 200)), llm("y", (100, 10))))
    sim.add_apps([(0.0, ok), (0.0, bad)])
    sim.run()
    assert sim.apps[0].failed is None
    failed = sim.apps[1].failed
    assert failed is not None
    assert "stages[0].calls[0]" in failed
    assert "max_model_len 1000" in failed
    # The failed application issued nothing after the rejected stage.
    assert len([r for r in sim.requests if isinstance(r.id, tuple) and r.id[1] == 1]) == 1
    summary = sim.results()["apps"]
    assert isinstance(summary, dict)
    assert summary["failed"] == 1
    assert summary["completed"] == 1


def test_calls_go_to_their_model() -> None:
    sim = Simulation(FCFS())
    sim.add_model("small", MODEL, EngineConfig(), replicas=1)
    sim.add_model("big", load_profile("llama-2-70b@a100-tp4"), EngineConfig(), replicas=1)
    run = AppRun("a", "r", (llm("x", (100, 10), model="big"), llm("y", (100, 10))))
    sim.add_apps([(0.0, run)])
    sim.run()
    served = {
        runner.name: [r.id for r in runner.requests]
        for g in sim.groups.values()
        for runner in g.runners
    }
    assert served == {"small/0": [("app", 0, 1, 0)], "big/0": [("app", 0, 0, 0)]}
    with pytest.raises(ValueError, match=r"run 'r2' stages\[0\] \(x\): model 'huge'"):
        sim.add_apps([(0.0, AppRun("a", "r2", (llm("x", (1, 1), model="huge"),)))])


@pytest.mark.parametrize("router", ["round-robin", "least-outstanding", "least-kv"])
def test_routers_spread_requests(router: str) -> None:
    sim = Simulation(FCFS())
    sim.add_model("m", MODEL, EngineConfig(), replicas=3, router=router)
    sim.add_requests([TraceRequest(0.01 * i, 500, 50) for i in range(300)])
    sim.run()
    counts = [len(r.requests) for r in sim.groups["m"].runners]
    assert sum(counts) == 300
    assert min(counts) >= 60, counts


def test_nothing_is_lost_and_engines_end_clean() -> None:
    cfg = SimConfig(
        instances=[InstanceGroup(count=2, num_gpu_blocks=400, max_num_seqs=32)],
        requests=RequestWorkload(limit=1500, arrivals=Arrivals(time_scale=0.05)),
        apps=AppWorkload(
            templates={"factool_code": 1, "react_alfw": 1, "langchain_mapreduce": 1},
            count=30,
            arrivals=Arrivals(process="poisson", rate_per_s=2.0),
        ),
        tools=[ToolBackend(name="docker", cold_start_s=1.0, keepalive_s=5.0)],
    )
    sim = build(cfg)
    sim.run()
    assert sim.requests
    for r in sim.requests:
        assert r.state in (RequestState.FINISHED, RequestState.REJECTED)
        if r.state is RequestState.FINISHED:
            assert r.generated == r.output_tokens
        else:
            assert r.reason
    preempted = 0
    for group in sim.groups.values():
        for runner in group.runners:
            e = runner.engine
            assert e.idle
            assert e.kv_used_fraction == 0
            e.check_invariants()
            preempted += e.stats.preemptions
    assert preempted > 0  # the small pool forced preemptions, and still nothing was lost
    assert all(a.finish_s is not None for a in sim.apps.values())
    out = sim.results()
    assert out["completed"] + out["rejected"] == out["requests"]  # type: ignore[operator]


def test_same_seed_same_json_different_seed_different_json() -> None:
    def run(seed: int) -> str:
        cfg = SimConfig(
            seed=seed,
            apps=AppWorkload(
                templates={"factool_kbqa": 2, "react_fever": 1},
                count=20,
                arrivals=Arrivals(process="gamma", rate_per_s=1.0, cv=2.0),
            ),
        )
        out = simulate(cfg)
        out.pop("wall_s")
        return json.dumps(out)

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_decode_runs_change_nothing_but_speed() -> None:
    cfg = SimConfig(requests=RequestWorkload(limit=400))
    fast = simulate(cfg)
    slow = simulate(cfg, decode_runs=False)
    for key in ("completed", "rejected", "preemptions"):
        assert fast[key] == slow[key]
    for key in ("ttft", "e2e", "itl", "tpot"):
        a, b = fast[key], slow[key]
        assert isinstance(a, dict)
        assert isinstance(b, dict)
        for stat in ("mean", "p50", "p99"):
            assert a[stat] == pytest.approx(b[stat], rel=1e-9)


def test_prewarm_through_the_runner_removes_the_cold_wait() -> None:
    def cold_wait(prewarm_at: float | None) -> float:
        sim = small_sim()
        sim.add_tool_backend(ToolBackendSpec("docker", cold_start_s=2.0, keepalive_s=60.0))
        sim.add_apps([(5.0, AppRun("a", "r", (tool("run", "docker", 1.0),)))])
        started: list[int] = []
        if prewarm_at is not None:
            sim.loop.at(prewarm_at, lambda now: started.append(sim.tools["docker"].prewarm(now)))
        sim.run()
        assert sim.apps[0].finish_s is not None
        assert started == ([] if prewarm_at is None else [1])
        return sim.tools["docker"].cold_wait_s

    assert cold_wait(None) == pytest.approx(2.0)
    assert cold_wait(4.0) == pytest.approx(1.0)  # started 1 s before the call: half hidden
    assert cold_wait(0.0) == 0.0
