"""The engine runner on the event loop: planning, decode runs cut by inputs, and its hooks."""

from __future__ import annotations

from hermes.engine.bros_engine import BrosEngine
from hermes.engine.engine_config import EngineConfig
from hermes.engine.request import EngineRequest, RequestState
from hermes.engine.scheduler import Engine, StepResult
from hermes.profiles import load_profile
from hermes.sim.engine_runner import STEP_END_PRIORITY, EngineRunner
from hermes.sim.kernel import EventLoop

COST = load_profile("llama-2-7b@a100")
CFG = EngineConfig()


class _Log:
    def __init__(self) -> None:
        self.done: list[tuple[EngineRequest, float]] = []
        self.steps: list[tuple[int, float]] = []
        self.plans: list[float] = []

    def on_done(self, req: EngineRequest, now: float) -> None:
        self.done.append((req, now))

    def on_step(self, result: StepResult, now: float) -> None:
        self.steps.append((result.tokens, now))

    def before_plan(self, now: float) -> None:
        self.plans.append(now)


def _runner(log: _Log, engine: Engine | None = None) -> tuple[EventLoop, EngineRunner]:
    loop = EventLoop()
    runner = EngineRunner(
        loop,
        engine or Engine(COST, CFG),
        "e",
        log.on_done,
        before_plan=log.before_plan,
        on_step=log.on_step,
    )
    return loop, runner


def test_a_request_runs_to_its_end_with_a_hook_at_every_plan_and_step() -> None:
    log = _Log()
    loop, runner = _runner(log)
    req = EngineRequest("a", 500, 4, 0.0)
    assert runner.submit(req, 0.0)
    end = loop.run()
    assert req.state is RequestState.FINISHED
    assert log.done == [(req, end)]
    assert req.finish_s == end
    # A prefill, then one decode run of three iterations; then the idle engine plans nothing.
    assert [tokens for tokens, _ in log.steps] == [1, 3]
    assert log.plans == [0.0, log.steps[0][1], end]
    assert runner.requests == [req]


def test_a_rejected_request_is_done_at_once_and_plans_nothing() -> None:
    log = _Log()
    loop, runner = _runner(log)
    big = EngineRequest("big", 5000, 10, 0.0)
    assert not runner.submit(big, 0.0)
    assert big.state is RequestState.REJECTED
    assert log.done == [(big, 0.0)]
    assert log.plans == []
    assert len(loop) == 0


def test_requests_submitted_in_before_plan_join_that_plan() -> None:
    log = _Log()
    loop = EventLoop()
    extra = [EngineRequest(("x", k), 100, 2, 0.0) for k in range(3)]

    def top_up(now: float) -> None:
        log.before_plan(now)
        if now == 0.0:
            for r in extra:
                runner.submit(r, now)  # no plan from inside the hook

    runner = EngineRunner(loop, Engine(COST, CFG), "e", log.on_done, before_plan=top_up)
    runner.wake(0.0)
    assert [r.state for r in extra] == [RequestState.RUNNING] * 3
    assert log.plans == [0.0]
    loop.run()
    assert all(r.state is RequestState.FINISHED for r in extra)


def test_submit_all_plans_once_for_requests_of_one_instant() -> None:
    log = _Log()
    loop, runner = _runner(log)
    reqs = [EngineRequest(("r", k), 100, 2, 1.0) for k in range(4)] + [
        EngineRequest("too long", 5000, 10, 1.0)
    ]
    accepted: list[int] = []
    loop.at(1.0, lambda now: accepted.append(runner.submit_all(reqs, now)))
    loop.run(until=1.0)
    assert accepted == [4]
    assert log.plans == [1.0]
    assert [r.state for r in reqs[:4]] == [RequestState.RUNNING] * 4
    assert log.done == [(reqs[4], 1.0)]


def test_an_arrival_cuts_a_decode_run_at_the_next_iteration_boundary() -> None:
    log = _Log()
    loop, runner = _runner(log)
    long = EngineRequest("long", 100, 200, 0.0)
    runner.submit(long, 0.0)
    loop.run(until=0.05)  # the prefill is done; a decode run of 199 iterations is in flight
    step = runner._step
    assert step is not None
    assert step.decode_run
    assert step.iterations == 199
    planned_end = step.end_s
    late = EngineRequest("late", 50, 2, 0.2)

    def arrive(now: float) -> None:
        runner.submit(late, now)

    loop.at(0.2, arrive)
    loop.run(until=0.2)
    # The run now ends at the end of the iteration in progress at 0.2.
    assert 0.2 <= step.end_s < min(planned_end, 0.2 + step.first_s + step.growth_s * 199)
    loop.run()
    assert long.state is late.state is RequestState.FINISHED
    assert late.first_scheduled_s == step.end_s


def test_an_abort_cuts_a_decode_run_and_is_not_reported_done() -> None:
    log = _Log()
    loop, runner = _runner(log)
    a, b = EngineRequest("a", 100, 300, 0.0), EngineRequest("b", 100, 20, 0.0)
    runner.submit_all([a, b], 0.0)
    cut: list[tuple[float, float]] = []

    def abort_a(now: float) -> None:
        step = runner._step
        assert step is not None
        assert step.decode_run
        planned = step.end_s
        assert runner.abort(a, now)
        cut.append((planned, step.end_s))

    loop.at(0.1, abort_a)
    loop.run()
    ((planned, end),) = cut
    assert 0.1 <= end < planned
    assert a.state is RequestState.ABORTED
    assert b.state is RequestState.FINISHED
    assert [r for r, _ in log.done] == [b]
    assert not runner.abort(a, loop.now)


def test_stop_plans_nothing_more_and_wake_plans_an_idle_engine() -> None:
    log = _Log()
    loop = EventLoop()

    def stop_after_the_first_step(result: StepResult, now: float) -> None:
        log.on_step(result, now)
        runner.stop()

    runner = EngineRunner(
        loop, Engine(COST, CFG), "e", log.on_done, on_step=stop_after_the_first_step
    )
    req = EngineRequest("a", 100, 50, 0.0)
    runner.submit(req, 0.0)
    loop.run()
    assert runner.stopped
    assert len(log.steps) == 1
    assert req.state is RequestState.RUNNING
    assert req.generated == 1
    # wake: an idle engine plans at once; one with a step in flight ignores it.
    log2 = _Log()
    loop2, runner2 = _runner(log2)
    loop2.at(2.0, runner2.wake, STEP_END_PRIORITY)
    loop2.run()
    assert log2.plans == [2.0]
    runner2.submit(EngineRequest("b", 100, 5, 2.0), 2.0)
    runner2.wake(2.0)
    assert log2.plans == [2.0, 2.0]


def test_priorities_reorder_the_queue_at_the_next_plan() -> None:
    log = _Log()
    loop, runner = _runner(log, Engine(COST, EngineConfig(max_num_seqs=1)))
    first, second = EngineRequest("1", 100, 5, 0.0), EngineRequest("2", 100, 5, 0.0)
    blocker = EngineRequest("0", 100, 5, 0.0)
    runner.submit_all([blocker, first, second], 0.0)
    runner.set_priority(second, -1.0, 0.0)
    loop.run()
    assert second.finish_s is not None
    assert first.finish_s is not None
    assert second.finish_s < first.finish_s


def test_the_bros_engine_runs_on_the_runner() -> None:
    log = _Log()
    loop = EventLoop()
    runner = EngineRunner(loop, BrosEngine(COST, CFG), "bros", log.on_done)
    rt = EngineRequest("rt", 200, 5, 0.0, slo_class="rt", ttft_slo_s=1.0, tpot_slo_s=0.05)
    be = EngineRequest("be", 600, 40, 0.0, slo_class="be")
    assert runner.submit_all([be, rt], 0.0) == 2
    loop.run()
    assert {r.id for r, _ in log.done} == {"rt", "be"}
    assert runner.engine.idle


def test_load_reports_the_queue_and_kv_use() -> None:
    _, runner = _runner(_Log())
    assert runner.load().outstanding == 0
    runner.submit(EngineRequest("a", 300, 5, 0.0), 0.0)
    runner.submit(EngineRequest("b", 200, 5, 0.0), 0.0)
    load = runner.load()
    assert load.outstanding == 2
    assert 0 < load.kv_used < 1
    assert load.queued_tokens == 200  # b came after the first iteration was planned
