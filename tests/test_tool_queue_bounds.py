"""What the tools experiment measures beside FIFO and policy order: each tool call's wait for a
slot, and a clairvoyant order of the pools (the oracle) while the LLM queue keeps its policy."""

from __future__ import annotations

import pytest

from hermes.cluster.tool_pool import ToolBackendSpec, ToolOrder
from hermes.core.runs import AppRun, Stage, ToolCall
from hermes.experiments.tool_queues import order_by_oracle
from hermes.policies.app_fifo import AppFIFO
from hermes.policies.base import AppView, BasePolicy, CallInfo
from hermes.sim.app_state import ToolCallId
from hermes.sim.simulation import Simulation


def tool(name: str, backend: str, *durations: float) -> Stage:
    return Stage(name, "tool", backend, tuple(ToolCall(d) for d in durations))


class _Flat(BasePolicy):
    """Every call ranked alike: the pool's tie-break (the earlier application) decides."""

    name = "flat"

    def priority(self, call: CallInfo, app: AppView | None, now: float) -> float:
        return 1.0


def contention(order: ToolOrder = "policy") -> Simulation:
    """One `env` instance, held by `z` until 10. `y` (arrived 0.5) queues at 0.5 and has 5 s
    of work after its step; `x` (arrived 1.0) queues at 1.0 and is done after its step."""
    sim = Simulation(_Flat())
    sim.add_tool_backend(ToolBackendSpec("env", max_instances=1, order=order))
    z = AppRun("demo", "z", (tool("hold", "env", 10.0),))
    y = AppRun("demo", "y", (tool("act", "env", 1.0), tool("rest", "warm", 5.0)))
    x = AppRun("demo", "x", (tool("act", "env", 1.0),))
    sim.add_apps([(0.0, z), (0.5, y), (1.0, x)])
    return sim


def finish_times(sim: Simulation) -> dict[str, float]:
    sim.run()
    out = {}
    for a in sim.apps.values():
        assert a.finish_s is not None
        out[a.run_id] = a.finish_s
    return out


def test_each_started_call_records_its_wait_for_a_slot() -> None:
    sim = contention()
    assert finish_times(sim) == {"z": 10.0, "y": 16.0, "x": 12.0}
    by_run = {}
    for call, waited in sim.tools["env"].queue_waits.items():
        assert isinstance(call, ToolCallId)
        by_run[sim.apps[call.app_id].run_id] = waited
    # z starts at once; y waits from 0.5 to 10, x from 1.0 to 11.
    assert by_run == {"z": 0.0, "y": pytest.approx(9.5), "x": pytest.approx(10.0)}
    assert sum(by_run.values()) == pytest.approx(sim.tools["env"].pool.queue_wait_s)


def test_the_oracle_grants_the_call_with_the_least_true_demand_left() -> None:
    # Equal ranks would give y the slot (the earlier application); the oracle knows that x
    # finishes with its step and y has 5 s more, so x goes first. Fails if order_by does not
    # replace the LLM queue's policy in the pool.
    sim = contention()
    order_by_oracle(sim)
    assert finish_times(sim) == {"z": 10.0, "x": 11.0, "y": 17.0}


def test_order_by_leaves_fifo_pools_fifo_and_refuses_a_pool_in_use() -> None:
    sim = contention("fifo")
    order_by_oracle(sim)  # a FIFO pool has no ranks to replace
    assert finish_times(sim) == {"z": 10.0, "y": 16.0, "x": 12.0}
    with pytest.raises(ValueError, match="'env': order_by before any call"):
        sim.tools["env"].order_by(AppFIFO())
