"""Tool pools in policy order in the simulator: waiting tool calls are granted by their
applications' ranks (the LLM queue's order), re-ranked in ranking rounds; `order: fifo` keeps
first come, first served; session routing keeps an application on its replica."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from hermes.cluster.router import SessionAffinity
from hermes.cluster.tool_pool import ToolBackendSpec, ToolOrder
from hermes.core.runs import AppRun, LLMCall, Stage, ToolCall
from hermes.engine.engine_config import EngineConfig
from hermes.policies.app_fifo import AppFIFO
from hermes.policies.base import AppView, BasePolicy, CallInfo, Policy
from hermes.profiles import load_profile
from hermes.sim.build import build
from hermes.sim.config import AppWorkload, InstanceGroup, SimConfig, ToolBackend
from hermes.sim.simulation import Simulation


def tool(name: str, backend: str, *durations: float) -> Stage:
    return Stage(name, "tool", backend, tuple(ToolCall(d) for d in durations))


def contention() -> list[tuple[float, AppRun]]:
    """One `env` instance, held by `z` until 10; `y` (arrived 1.0) queues for it at 1.0, `x`
    (arrived 0.5) at 3.5, after a step on an always-warm backend."""
    z = AppRun("demo", "z", (tool("hold", "env", 10.0),))
    x = AppRun("demo", "x", (tool("think", "warm", 3.0), tool("act", "env", 1.0)))
    y = AppRun("demo", "y", (tool("act", "env", 1.0),))
    return [(0.0, z), (0.5, x), (1.0, y)]


def finish_times(policy: Policy, order: ToolOrder) -> dict[str, float]:
    sim = Simulation(policy)
    sim.add_tool_backend(ToolBackendSpec("env", max_instances=1, order=order))
    sim.add_apps(contention())
    sim.run()
    out = {}
    for a in sim.apps.values():
        assert a.finish_s is not None
        out[a.run_id] = a.finish_s
    return out


def test_policy_order_grants_the_better_ranked_application_first() -> None:
    # parrot ranks by application arrival: x (0.5) before y (1.0), though y queued first.
    assert finish_times(AppFIFO(), "policy") == {"z": 10.0, "x": 11.0, "y": 12.0}


def test_fifo_order_grants_the_first_to_queue() -> None:
    assert finish_times(AppFIFO(), "fifo") == {"z": 10.0, "y": 11.0, "x": 12.0}


class _Flat(BasePolicy):
    """Ranks every call alike, as Gittins ranks agents waiting in the same loop state."""

    name = "flat"

    def priority(self, call: CallInfo, app: AppView | None, now: float) -> float:
        return 1.0


def test_equal_ranks_go_to_the_earlier_application() -> None:
    # y queued first, but x's application is older: with equal ranks x goes first (fails on
    # the pool that broke ties by submission); a FIFO pool still takes y first.
    assert finish_times(_Flat(), "policy") == {"z": 10.0, "x": 11.0, "y": 12.0}
    assert finish_times(_Flat(), "fifo") == {"z": 10.0, "y": 11.0, "x": 12.0}


class _Flipping(BasePolicy):
    """Ranks by arrival when a call is submitted; a ranking round reverses that."""

    name = "flipping"
    dynamic = True

    def __init__(self) -> None:
        self.rounds = 0

    def priority(self, call: CallInfo, app: AppView | None, now: float) -> float:
        assert app is not None
        return app.arrival_s

    def rank_apps(self, apps: Sequence[AppView], now: float) -> list[float] | None:
        self.rounds += 1
        return [-a.arrival_s for a in apps]


def test_ranking_rounds_reorder_waiting_tool_calls() -> None:
    policy = _Flipping()
    # Submitted ranks put x first; the rounds while both wait put y (the later arrival) first.
    assert finish_times(policy, "policy") == {"z": 10.0, "y": 11.0, "x": 12.0}
    assert policy.rounds > 0


def test_the_config_carries_the_order_and_policy_is_the_default() -> None:
    cfg = SimConfig(
        instances=[InstanceGroup()],
        tools=[
            ToolBackend(name="env", max_instances=2),
            ToolBackend(name="docker", max_instances=2, order="fifo"),
        ],
        apps=AppWorkload(templates={"react_alfw": 1}, count=2),
    )
    sim = build(cfg)
    assert sim.tools["env"].pool.spec.order == "policy"
    assert sim.tools["docker"].pool.spec.order == "fifo"
    sim.run()
    assert all(a.finish_s is not None and a.failed is None for a in sim.apps.values())


def test_an_fcfs_policy_gives_the_same_results_in_either_order() -> None:
    def run(order: ToolOrder) -> dict[str, object]:
        cfg = SimConfig(
            policy="vllm",
            instances=[InstanceGroup(max_num_seqs=8)],
            tools=[ToolBackend(name="env", max_instances=1, order=order)],
            apps=AppWorkload(templates={"react_alfw": 1}, count=12),
        )
        sim = build(cfg)
        sim.run()
        return sim.results()

    fifo, policy = run("fifo"), run("policy")
    assert fifo["act"] == policy["act"]
    assert fifo["tools"] == policy["tools"]


MODEL = load_profile("llama-2-7b@a100")


def test_session_routing_keeps_an_applications_calls_on_one_replica() -> None:
    sim = Simulation(AppFIFO())
    sim.add_model("m", MODEL, EngineConfig(), replicas=3, router="session")
    stages = tuple(
        Stage(f"s{k}", "llm", "llm", (LLMCall(200, 20),) * (1 + k % 2)) for k in range(6)
    )
    runs = [(0.1 * i, AppRun("demo", f"r{i}", stages)) for i in range(6)]
    sim.add_apps(runs)
    sim.run()
    replicas: dict[int, set[str]] = {}
    for runner in sim.groups["m"].runners:
        for req in runner.requests:
            assert isinstance(req.id, tuple)
            replicas.setdefault(req.id[1], set()).add(runner.name)
    assert len(replicas) == 6
    assert all(len(names) == 1 for names in replicas.values())
    assert len({n for names in replicas.values() for n in names}) == 3  # spread, not piled
    router = sim.groups["m"].router
    assert isinstance(router, SessionAffinity)
    assert router.moved == 0
    assert router.sticky == pytest.approx(sum(len(s.calls) for s in stages) * 6 - 6)
