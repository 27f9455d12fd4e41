"""A multi-model instance on the event loop: swaps then steps, work held to a step's end, decode
runs cut short by an arrival, and a fixed order between instances at one instant."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from hermes.cluster.multi_model import ModelInstance, MultiModelConfig
from hermes.engine.request import EngineRequest, RequestState
from hermes.profiles import load_profile
from hermes.sim.instance_runner import InstanceEvent, InstanceRunner
from hermes.sim.kernel import EventLoop

L7 = load_profile("llama-2-7b@a100")
L8 = load_profile("llama-3-8b@a100")


@dataclass
class Driver:
    """Plans after every event of the runner, as a shell with nothing to decide would."""

    loop: EventLoop = field(default_factory=EventLoop)
    done: list[tuple[int | str, float]] = field(default_factory=list)
    events: list[tuple[float, InstanceEvent]] = field(default_factory=list)
    step_ends: list[float] = field(default_factory=list)

    def runner(self, inst: ModelInstance, priority: int = 1) -> InstanceRunner:
        return InstanceRunner(self.loop, inst, self.on_done, self.on_event, priority=priority)

    def on_done(self, req: EngineRequest, t: float) -> None:
        assert isinstance(req.id, int | str)
        self.done.append((req.id, t))

    def on_event(self, runner: InstanceRunner, now: float, kind: InstanceEvent) -> None:
        self.events.append((now, kind))
        if kind == "step":
            self.step_ends.append(now)
        runner.plan(now)


def instance(active: str | None = "llama-2-7b", cpu_kv_bytes: float = 10e9) -> ModelInstance:
    return ModelInstance(
        {"llama-2-7b": L7, "llama-3-8b": L8},
        MultiModelConfig(cpu_memory_bytes=100e9, cpu_kv_bytes=cpu_kv_bytes),
        active=active,
        name="gpu0",
    )


def test_a_swap_then_steps() -> None:
    d = Driver()
    inst = instance(active=None)
    runner = d.runner(inst)
    end = runner.begin_swap("llama-2-7b", 0.0)
    assert end == pytest.approx(13.5e9 / 5e9)  # cold: from disk
    reqs = [EngineRequest(i, 200, 20, 0.0) for i in range(3)]
    for r in reqs:
        assert runner.add(r, 0.0, model="llama-2-7b")  # queued while the weights load
    assert runner.busy
    assert runner.plan(0.0) is None
    d.loop.run()
    assert d.events[0] == (end, "swap")
    assert all(kind == "step" for _, kind in d.events[1:])
    assert all(r.state is RequestState.FINISHED for r in reqs)
    assert all(r.first_scheduled_s == end for r in reqs)  # nothing ran before the swap ended
    assert sorted(i for i, _ in d.done) == [0, 1, 2]
    assert runner.output_tokens == 60
    assert not runner.busy
    assert not runner.pending
    assert inst.stats.cold_swaps == 1


def test_an_eviction_held_back_to_a_step_end() -> None:
    d = Driver()
    inst = instance()
    runner = d.runner(inst)
    reqs = [EngineRequest(i, 500, 300, 0.0) for i in range(2)]
    for r in reqs:
        runner.add(r, 0.0)
    step = runner.plan(0.0)
    assert step is not None
    step_end = step.end_s
    moved: list[tuple[float, float]] = []

    def evict_now_or_later(now: float) -> None:
        def evict(t: float) -> None:
            out = runner.evict(reqs, t)
            moved.append((t, out.done_s))

        assert runner.step is not None  # mid-step: an engine acts at the boundary
        runner.hold(evict)
        assert runner.holding

    d.loop.at(step.start_s + (step_end - step.start_s) / 2, evict_now_or_later)
    d.loop.run()
    [(t, done)] = moved
    assert t == step_end  # carried out when the step in flight ended
    assert not runner.holding
    assert inst.evicted == tuple(reqs)
    assert done > t  # prefilled KV was copied out: the GPU is busy until `done`
    assert (done, "free") in d.events  # the runner woke at the end of the transfer
    assert inst.idle
    assert runner.plan(t) is None  # nothing left to run here


def test_a_decode_run_is_cut_short_by_an_arrival() -> None:
    d = Driver()
    inst = instance()
    runner = d.runner(inst)
    first = EngineRequest("a", 100, 400, 0.0)
    runner.add(first, 0.0)
    runner.plan(0.0)
    d.loop.run(until=0.5)  # prefill, then a long decode run
    step = runner.step
    assert step is not None
    assert step.decode_run
    planned_end = step.end_s
    late = EngineRequest("b", 100, 10, 0.6)
    arrival = 0.6

    def arrive(now: float) -> None:
        assert runner.add(late, now)

    d.loop.at(arrival, arrive)
    d.loop.run()
    cut = next(t for t in d.step_ends if t >= arrival)
    assert arrival <= cut < planned_end  # the run ended at the next iteration boundary
    assert cut - arrival < 0.05  # one decode iteration at most
    assert late.first_scheduled_s == cut  # and the new request joined the next step
    assert first.state is RequestState.FINISHED
    assert late.state is RequestState.FINISHED
    assert first.generated == 400


def test_instances_at_one_instant_run_in_priority_order() -> None:
    d = Driver()
    runners = [d.runner(instance(), priority=p) for p in (2, 1)]
    for k, runner in enumerate(runners):
        runner.add(EngineRequest(k, 100, 1, 0.0), 0.0)
        runner.plan(0.0)
    d.loop.run()
    # Same work, same end time: the lower priority value goes first, not the first planned.
    assert d.done[0][1] == d.done[1][1]
    assert [i for i, _ in d.done] == [1, 0]


def test_stop_cancels_what_is_to_come() -> None:
    d = Driver()
    runner = d.runner(instance())
    runner.add(EngineRequest(0, 100, 50, 0.0), 0.0)
    runner.plan(0.0)
    assert runner.pending
    runner.stop()
    assert not runner.pending
    d.loop.run()
    assert d.done == []
