"""Request streams on the event loop (a timed trace, a standing backlog) and the measured window."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from numpy.typing import NDArray

from hermes.engine.engine_config import EngineConfig
from hermes.engine.request import EngineRequest, RequestState
from hermes.engine.scheduler import Engine
from hermes.profiles import load_profile
from hermes.sim.engine_runner import EngineRunner
from hermes.sim.kernel import EventLoop
from hermes.sim.request_streams import Backlog, RequestClass, TraceFeeder
from hermes.sim.window import Window, WindowMeter

COST = load_profile("llama-2-7b@a100")
CFG = EngineConfig()


@dataclass(frozen=True, slots=True)
class _Trace:
    arrival_s: NDArray[np.float64]
    prompt_tokens: NDArray[np.int64]
    output_tokens: NDArray[np.int64]


@dataclass(slots=True)
class _Lengths:
    lengths: list[tuple[int, int]]
    taken: int = 0
    asked: list[int] = field(default_factory=list)

    def take(self, n: int) -> list[tuple[int, int]]:
        self.asked.append(n)
        out = [self.lengths[(self.taken + i) % len(self.lengths)] for i in range(n)]
        self.taken += n
        return out


def test_request_class_stamps_its_requests() -> None:
    rt = RequestClass("rt", priority=-1.0, ttft_slo_s=1.0, tpot_slo_s=0.1)
    r = rt.request(7, 100, 20, 3.5)
    assert (r.id, r.prompt_tokens, r.output_tokens, r.arrival_s) == (("rt", 7), 100, 20, 3.5)
    assert (r.priority, r.slo_class, r.ttft_slo_s, r.tpot_slo_s) == (-1.0, "rt", 1.0, 0.1)


def test_a_trace_arrives_on_time_and_one_instant_is_submitted_together() -> None:
    loop = EventLoop()
    plans: list[tuple[float, int]] = []
    done: list[EngineRequest] = []
    engine = Engine(COST, CFG)
    runner = EngineRunner(
        loop,
        engine,
        "e",
        lambda r, now: done.append(r),
        before_plan=lambda now: plans.append((now, len(engine.waiting))),
    )
    trace = _Trace(
        np.array([0.5, 2.0, 2.0, 2.0, 9.0]),
        np.array([100, 200, 5000, 300, 300], dtype=np.int64),
        np.array([3, 3, 3, 3, 3], dtype=np.int64),
    )
    feeder = TraceFeeder(loop, runner, trace, RequestClass("rt"))
    assert not feeder.exhausted
    loop.run(until=2.0)
    reqs = feeder.requests
    assert [r.id for r in reqs] == [("rt", k) for k in range(4)]
    assert [r.arrival_s for r in reqs] == [0.5, 2.0, 2.0, 2.0]
    assert reqs[2].state is RequestState.REJECTED  # too long; reported done at once
    assert reqs[2] in done
    # The two accepted arrivals at 2.0 were both queued when the engine planned at 2.0.
    assert plans[-1] == (2.0, 2)
    loop.run()
    assert feeder.exhausted
    assert {r.id for r in done} == {("rt", k) for k in range(5)}
    scheduled = [r for r in feeder.requests if r.state is RequestState.FINISHED]
    assert all(r.first_scheduled_s == r.arrival_s for r in scheduled)


def test_an_empty_trace_schedules_nothing() -> None:
    loop = EventLoop()
    runner = EngineRunner(loop, Engine(COST, CFG), "e", lambda r, now: None)
    none = np.zeros(0, dtype=np.int64)
    feeder = TraceFeeder(loop, runner, _Trace(np.zeros(0), none, none), RequestClass("rt"))
    assert feeder.exhausted
    assert len(loop) == 0


def _backlog_run(depth: int, until: float) -> tuple[Backlog, _Lengths, list[int]]:
    loop = EventLoop()
    queued: list[int] = []
    lengths = _Lengths([(600, 8), (900, 20), (512, 3)])

    def before_plan(now: float) -> None:
        backlog.top_up(now)
        queued.append(sum(r.state is RequestState.WAITING for r in backlog.live.values()))

    def on_done(req: EngineRequest, now: float) -> None:
        backlog.done(req)

    runner = EngineRunner(loop, Engine(COST, CFG), "e", on_done, before_plan=before_plan)
    backlog = Backlog(runner, lengths, RequestClass("be", priority=2.0), depth)
    runner.wake(0.0)
    loop.run(until=until)
    runner.stop()
    return backlog, lengths, queued


def test_a_backlog_keeps_its_depth_queued_at_every_plan() -> None:
    backlog, lengths, queued = _backlog_run(depth=5, until=5.0)
    assert len(queued) > 20
    assert min(queued) >= 5
    assert lengths.asked[0] == 5
    assert backlog.finished > 10
    live = list(backlog.live.values())
    assert sum(r.state is not RequestState.RUNNING for r in live) >= 1
    assert all(r.priority == 2.0 and r.slo_class == "be" for r in live)
    assert backlog.tokens == backlog.finished_tokens + sum(r.generated for r in live)
    assert backlog.finished_tokens > 0
    assert lengths.taken == backlog.finished + len(live)


def test_a_backlog_refuses_a_request_the_engine_rejects() -> None:
    loop = EventLoop()
    runner = EngineRunner(loop, Engine(COST, CFG), "e", lambda r, now: backlog.done(r))
    backlog = Backlog(runner, _Lengths([(5000, 10)]), RequestClass("be"), 1)
    with pytest.raises(ValueError, match="rejected"):
        backlog.top_up(0.0)
    with pytest.raises(ValueError, match="depth"):
        Backlog(runner, _Lengths([(1, 1)]), RequestClass("be"), 0)


def test_window_checks_its_bounds() -> None:
    w = Window(10.0, 20.0, 5.0)
    assert w.stop_s == 25.0
    assert [w.contains(t) for t in (9.9, 10.0, 19.9, 20.0)] == [False, True, True, False]
    for bad in ((5.0, 5.0, 0.0), (-1.0, 5.0, 0.0), (0.0, 5.0, -1.0)):
        with pytest.raises(ValueError, match="Window"):
            Window(*bad)


def test_the_meter_snapshots_at_the_first_boundaries_past_each_edge_and_stops() -> None:
    count = {"n": 0}
    settled = {"yes": False}
    meter = WindowMeter(Window(10.0, 20.0, 100.0), lambda: dict(count), lambda: settled["yes"])
    for t, n in ((4.0, 1), (9.0, 2), (11.0, 5), (15.0, 9), (19.0, 12), (22.0, 15), (30.0, 20)):
        count["n"] = n
        settled["yes"] = t >= 30.0
        assert meter.boundary(t) is (t >= 30.0)
    assert meter.first is not None
    assert meter.last is not None
    assert (meter.first.at_s, meter.last.at_s) == (11.0, 22.0)
    assert meter.delta("n") == 15 - 5
    assert meter.span_s == 11.0
    assert meter.stopped_s == 30.0
    # Past the drain the run stops, settled or not.
    late = WindowMeter(Window(0.0, 1.0, 2.0), lambda: {"n": 0}, lambda: False)
    assert not late.boundary(1.5)
    assert late.boundary(3.0)


def test_a_meter_closed_early_takes_the_edges() -> None:
    meter = WindowMeter(Window(10.0, 20.0, 0.0), lambda: {"n": 7}, lambda: True)
    assert not meter.boundary(12.0)  # the end not reached: not settled yet
    meter.close()
    assert meter.last is not None
    assert meter.last.at_s == 20.0
    assert meter.span_s == 8.0
    assert meter.delta("n") == 0
    never = WindowMeter(Window(10.0, 20.0, 0.0), lambda: {"n": 3}, lambda: True)
    with pytest.raises(RuntimeError, match="close"):
        never.delta("n")
    never.close()
    assert never.span_s == 10.0
