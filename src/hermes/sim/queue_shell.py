"""A queue policy (QLM or a baseline) serving requests on multi-model instances, on the event
loop: requests arrive, the policy decides operations, each instance (on an `InstanceRunner`)
carries them out, and every request's fate is recorded.

Each instant at which anything happens runs in a fixed order:

1. arrivals, which the policy hears of (`on_arrival`);
2. each instance's events, in instance order: a step's end reports its finished requests to
   the policy (`on_finished`); a swap ends; work held for the boundary runs;
3. one tick: the policy decides (`decide`) if anything changed, at most once per
   `decide_interval_s` of simulated time and at once when an instance falls idle with work
   waiting; its operations are carried out (`queue_operations`); deferred pulls are placed;
   the safety net restores stranded requests; idle instances plan their next step.

Between instants the loop jumps to the next step end, swap end, end of KV transfers, arrival
or, while a decision is due, the end of the decide interval. The run stops when every request
has finished, when nothing more can happen, or at the horizon. Each call to `decide` is timed
with `timer` (the planner's wall cost); nothing else reads a clock.

A request's SLO is on its completion: it meets it when it finishes within `slo_s` of its
arrival, as QLM's estimator predicts when a group has drained.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hermes.cluster.multi_model import ModelInstance
from hermes.engine.request import EngineRequest
from hermes.policies.qlm.estimator import InstanceView
from hermes.policies.qlm.policy import QueuePolicy
from hermes.sim.instance_runner import INSTANCE_PRIORITY, InstanceEvent, InstanceRunner
from hermes.sim.kernel import Event, EventLoop
from hermes.sim.metrics import pooled_instances
from hermes.sim.queue_operations import LiveRequest, OperationCarrier, RunCounters
from hermes.workloads.qlm_workloads import QlmRequest

ARRIVAL_PRIORITY = 0


@dataclass(frozen=True, slots=True)
class QlmRun:
    requests: tuple[QlmRequest, ...]  # in arrival order
    finish_s: tuple[float | None, ...]  # per request, None if unfinished at the end
    end_s: float
    counters: RunCounters
    swaps: dict[str, int]  # warm, cold
    swap_s: float
    utilisation: float  # mean over instances
    output_tokens: int


def instance_view(inst: ModelInstance, now: float) -> InstanceView:
    """The instance as a queue policy sees it."""
    return InstanceView(
        inst.name,
        inst.active_model,
        frozenset(inst.warm_models),
        inst.swap_times(),
        # An instance with no model loaded yet plans with its first model's prior.
        inst.throughput(inst.active_model or inst.models[0]),
        inst.drain_time_s(now),
    )


class QueueShell:
    """One run: `QueueShell(requests, policy, instances, timer=...).run(horizon_s)`.

    Embedded in a larger simulation, it runs on that simulation's `loop`, takes requests as
    they come (`submit`) and reports each finished or refused one to `on_done`; it never
    stops by itself then, since more may come."""

    def __init__(
        self,
        requests: Sequence[QlmRequest],
        policy: QueuePolicy,
        instances: Sequence[ModelInstance],
        *,
        timer: Callable[[], float],
        decide_interval_s: float = 1.0,
        loop: EventLoop | None = None,
        on_done: Callable[[EngineRequest, float], None] | None = None,
    ) -> None:
        if len({inst.name for inst in instances}) != len(instances):
            raise ValueError("instances need distinct names")
        self.loop = loop if loop is not None else EventLoop()  # an empty loop is falsy
        self._embedded = loop is not None
        self._on_done = on_done
        self._rid_of: dict[int, str] = {}  # id(given request) -> its key in `live`
        self.policy = policy
        self.decide_interval_s = decide_interval_s
        self._timer = timer
        self._pending = sorted(requests, key=lambda r: r.arrival_s)
        self._next = 0  # the next arrival in _pending
        self.live: dict[str, LiveRequest] = {}
        self.finish: dict[str, float] = {}
        self.counters = RunCounters()
        self.runners = {
            inst.name: InstanceRunner(
                self.loop, inst, self._done, self._instance_event, priority=INSTANCE_PRIORITY + k
            )
            for k, inst in enumerate(instances)
        }
        self._tick_priority = INSTANCE_PRIORITY + len(instances)  # after every instance
        self.carrier = OperationCarrier(
            self.runners, self.live, self.finish, self.counters, self._mark_changed, on_done
        )
        self._dirty = False  # something changed since the last decision
        self._last_decide = -math.inf
        self._tick_at: float | None = None
        self._last_tick = self.loop.now
        self._decide_event: Event | None = None
        self._end_s: float | None = None

    def run(self, horizon_s: float) -> QlmRun:
        """Run until every request has finished, nothing more can happen, or `horizon_s`."""
        self._poke(self.loop.now)
        self._schedule_arrival()
        self.loop.run(until=horizon_s)
        if self._end_s is not None:
            end = self._end_s
        elif self._anything_to_come():
            end = horizon_s
        else:
            end = self._last_tick  # stuck: nothing left that could change anything
        return self._result(end)

    def _anything_to_come(self) -> bool:
        return (
            self._next < len(self._pending)
            or self._decide_event is not None
            or any(r.pending for r in self.runners.values())
        )

    # Events ---------------------------------------------------------------------------------

    def _schedule_arrival(self) -> None:
        if self._next < len(self._pending):
            t = max(self._pending[self._next].arrival_s, self.loop.now)
            self.loop.at(t, self._arrive, ARRIVAL_PRIORITY)

    def _arrive(self, now: float) -> None:
        s = self._pending[self._next]
        self._next += 1
        rid = str(s.id)
        self.live[rid] = LiveRequest(s)
        self.policy.on_arrival(rid, s.model, s.slo_class, s.prompt_tokens, s.slo_s, s.arrival_s)
        self._mark_changed()
        self._poke(now)
        self._schedule_arrival()

    def submit(self, spec: QlmRequest, req: EngineRequest, now: float) -> None:
        """`req` (described by `spec`) arrives now; it is the object admitted to an engine."""
        rid = str(spec.id)
        if rid in self.live or rid in self.finish:
            raise ValueError(f"QueueShell.submit: request id {rid!r} was submitted before")
        self._rid_of[id(req)] = rid
        self.live[rid] = LiveRequest(spec, given=req)
        self.policy.on_arrival(
            rid, spec.model, spec.slo_class, spec.prompt_tokens, spec.slo_s, spec.arrival_s
        )
        self._mark_changed()
        self._poke(now)

    def _done(self, req: EngineRequest, end_s: float) -> None:
        rid = self._rid_of.pop(id(req), None) or str(req.id)
        self.finish[rid] = end_s
        self.live.pop(rid, None)
        self.policy.on_finished(rid, req.generated, end_s)
        self._mark_changed()
        if self._on_done is not None:
            self._on_done(req, end_s)

    def _instance_event(self, runner: InstanceRunner, now: float, kind: InstanceEvent) -> None:
        if kind == "swap":
            self._mark_changed()  # a model became servable
        self._poke(now)

    def _mark_changed(self) -> None:
        self._dirty = True

    def _poke(self, now: float) -> None:
        """One tick per instant, after everything else that happens then."""
        if self._tick_at != now:
            self._tick_at = now
            self.loop.at(now, self._tick, self._tick_priority)

    def _decide_due(self, now: float) -> None:
        self._decide_event = None
        self._poke(now)

    # The tick -------------------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        self._last_tick = now
        carrier = self.carrier
        if self._dirty and (
            now - self._last_decide >= self.decide_interval_s or self._idle_with_work_waiting()
        ):
            self._decide(now)
        if carrier.deferred:
            carrier.place_deferred(now)
        carrier.rescue_stranded(now)
        for runner in self.runners.values():
            runner.plan(now)
        if not self.live and self._next >= len(self._pending) and not self._embedded:
            self._stop(now)
        else:
            self._sync_decide_event(now)

    def _idle_with_work_waiting(self) -> bool:
        idle = any(not r.busy and r.instance.idle for r in self.runners.values())
        placed = sum(1 for lv in self.live.values() if lv.instance is not None)
        return idle and len(self.live) > placed

    def _decide(self, now: float) -> None:
        views = [instance_view(r.instance, now) for r in self.runners.values()]
        running = self.carrier.running_views()
        start = self._timer()
        ops = self.policy.decide(views, running, now)
        self.counters.decide_s.append(self._timer() - start)
        self.counters.decisions += 1
        self._last_decide = now
        self._dirty = False
        for op in ops:
            self.carrier.carry(op, now)

    def _sync_decide_event(self, now: float) -> None:
        """While a decision is due and requests are live, wake at the end of the interval."""
        want: float | None = None
        if self._dirty and self.live:
            t = self._last_decide + self.decide_interval_s
            want = t if t > now else None
        event = self._decide_event
        if event is not None and event.time != want:
            event.cancel()
            event = None
        if want is not None and event is None:
            event = self.loop.at(want, self._decide_due, ARRIVAL_PRIORITY)
        self._decide_event = event

    def _stop(self, now: float) -> None:
        self._end_s = now
        for runner in self.runners.values():
            runner.stop()
        if self._decide_event is not None:
            self._decide_event.cancel()
            self._decide_event = None

    def figures(self, now: float) -> dict[str, object]:
        """Swaps, utilisation and the operations carried out, up to `now`."""
        pooled = pooled_instances([r.figures(now) for r in self.runners.values()])
        c = self.counters
        return {
            "model_swaps": pooled.warm_swaps + pooled.cold_swaps,
            "warm_swaps": pooled.warm_swaps,
            "cold_swaps": pooled.cold_swaps,
            "swap_s": pooled.swap_s,
            "gpu_utilisation": pooled.utilisation,
            "decisions": c.decisions,
            "pulls": c.pulls,
            "evictions": c.evictions,
            "restores": c.restores + c.shell_restores,
            "refused_operations": dict(sorted(c.refused.items())),
        }

    def _result(self, end: float) -> QlmRun:
        runners = list(self.runners.values())
        pooled = pooled_instances([r.figures(end) for r in runners])
        return QlmRun(
            tuple(self._pending),
            tuple(self.finish.get(str(r.id)) for r in self._pending),
            end,
            self.counters,
            {"warm": pooled.warm_swaps, "cold": pooled.cold_swaps},
            pooled.swap_s,
            pooled.utilisation,
            sum(r.output_tokens for r in runners),
        )
