"""QLM's serving operations carried out on instance runners, and the requests they move.

The rules (the policy assumes every operation it returns is done, in order):

- `Pull` adds requests to the instance's active engine. One whose model is not active there
  is deferred: it goes to the least-loaded instance that has its model active, as soon as
  one does (the policy has let go of it). One the engine can never serve ends, missed.
- `SwapModel` starts a model load; it is refused while a step is in flight or a load runs.
- `Evict` (with its `SwapKV` to CPU, which needs nothing more) takes running requests off the
  GPU at an iteration boundary: with a step in flight it is held until the step ends, and
  then only the requests still queued or running there are taken.
- `SwapKV` to GPU restores evicted requests once the instance is between steps and swaps,
  if their model is the active one.
- `MoveGroup` and `ScaleOut` are counted.

A safety net keeps anything from being lost: requests evicted on an instance that has their
model active and nothing else to do come back, whatever the policy thinks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from hermes.engine.request import EngineRequest
from hermes.policies.qlm.operations import (
    Evict,
    MoveGroup,
    Operation,
    Pull,
    RunningView,
    ScaleOut,
    SwapKV,
    SwapModel,
)
from hermes.sim.instance_runner import InstanceRunner
from hermes.workloads.qlm_workloads import QlmRequest


@dataclass(slots=True)
class LiveRequest:
    """A request that has arrived and not finished: on an instance once pulled."""

    spec: QlmRequest
    engine_req: EngineRequest | None = None
    instance: str | None = None
    given: EngineRequest | None = None  # the request to admit, from an embedding simulation


@dataclass(slots=True)
class RunCounters:
    decisions: int = 0
    decide_s: list[float] = field(default_factory=list)
    pulls: int = 0
    moves: int = 0
    evictions: int = 0
    restores: int = 0
    shell_restores: int = 0  # evicted requests the safety net brought back on an idle instance
    scale_outs: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # operations that could not be done


class OperationCarrier:
    """Carries out operations on `runners` (by instance name) for the requests in `live`.

    A request the engine rejects is recorded in `finish` at once and leaves `live`. Work held
    for a step's end calls `changed()` when it runs (the policy may want to decide again).
    """

    def __init__(
        self,
        runners: Mapping[str, InstanceRunner],
        live: dict[str, LiveRequest],
        finish: dict[str, float],
        counters: RunCounters,
        changed: Callable[[], None],
        on_rejected: Callable[[EngineRequest, float], None] | None = None,
    ) -> None:
        self.runners = runners
        self.live = live
        self.finish = finish
        self.counters = counters
        self._changed = changed
        self.on_rejected = on_rejected  # told of a request the engine refused
        self.deferred: list[str] = []

    def refuse(self, kind: str) -> None:
        self.counters.refused[kind] = self.counters.refused.get(kind, 0) + 1

    def carry(self, op: Operation, now: float) -> None:
        if isinstance(op, Pull):
            self._pull(op, now)
        elif isinstance(op, SwapModel):
            self._swap_model(op, now)
        elif isinstance(op, Evict):
            self._evict(op, now)
        elif isinstance(op, SwapKV):
            if op.to == "gpu":
                self._restore(op, now)
        elif isinstance(op, MoveGroup):
            self.counters.moves += 1
        elif isinstance(op, ScaleOut):
            self.counters.scale_outs += 1

    def running_views(self) -> dict[str, list[RunningView]]:
        """What runs on each instance (queued or running in its engine), as the policy sees
        it; evicted requests are the policy's own bookkeeping."""
        out: dict[str, list[RunningView]] = {name: [] for name in self.runners}
        for rid, lv in self.live.items():
            if lv.instance is not None and lv.engine_req is not None:
                if self.runners[lv.instance].instance.is_evicted(lv.engine_req):
                    continue
                s = lv.spec
                out[lv.instance].append(RunningView(rid, s.model, s.slo_class, s.deadline_s))
        return out

    def place_deferred(self, now: float) -> None:
        """Deferred requests go to the least-loaded instance with their model active."""
        for rid in list(self.deferred):
            model = self.live[rid].spec.model
            ready = [r for r in self.runners.values() if r.instance.active_model == model]
            if ready:
                self.deferred.remove(rid)
                self.admit(rid, min(ready, key=lambda r: r.instance.outstanding), now)

    def rescue_stranded(self, now: float) -> None:
        """The safety net: an idle instance between steps and swaps, with nothing held,
        restores the requests evicted there for its active model."""
        for runner in self.runners.values():
            inst = runner.instance
            if runner.busy or runner.holding or not inst.idle:
                continue
            stranded = [e for e in inst.evicted if inst.evicted_model(e) == inst.active_model]
            if stranded:
                runner.restore(stranded, now)
                self.counters.shell_restores += len(stranded)

    def admit(self, rid: str, runner: InstanceRunner, now: float) -> None:
        lv = self.live[rid]
        s = lv.spec
        req = lv.given or EngineRequest(rid, s.prompt_tokens, s.output_tokens, s.arrival_s)
        if not runner.add(req, now, model=s.model):
            self.refuse("rejected")
            self.finish[rid] = now  # a request the engine can never serve ends here, missed
            del self.live[rid]
            if self.on_rejected is not None:
                self.on_rejected(req, now)
            return
        lv.engine_req, lv.instance = req, runner.name
        self.counters.pulls += 1

    # Operations -----------------------------------------------------------------------------

    def _pull(self, op: Pull, now: float) -> None:
        runner = self.runners[op.instance]
        for rid in op.request_ids:
            if runner.instance.active_model != self.live[rid].spec.model:
                self.refuse("pull-wrong-model")
                self.deferred.append(rid)
            else:
                self.admit(rid, runner, now)

    def _swap_model(self, op: SwapModel, now: float) -> None:
        runner = self.runners[op.instance]
        if runner.instance.active_model == op.model:
            return
        if runner.busy:
            self.refuse("swap-busy")
            return
        try:
            runner.begin_swap(op.model, now)
        except RuntimeError:
            self.refuse("swap-not-idle")

    def _evict(self, op: Evict, now: float) -> None:
        runner = self.runners[op.instance]
        if runner.step is not None:  # at the iteration boundary, as an engine would
            runner.hold(self._held(op))
            return
        # Held back to a step's end, some may have finished or been evicted meanwhile.
        reqs: list[EngineRequest] = []
        for rid in op.request_ids:
            lv = self.live.get(rid)
            req = None if lv is None else lv.engine_req
            if req is not None and runner.instance.holds(req):
                reqs.append(req)
        if reqs:
            runner.evict(reqs, now)
        self.counters.evictions += len(reqs)

    def _restore(self, op: SwapKV, now: float) -> None:
        runner = self.runners[op.instance]
        if runner.busy:
            runner.hold(self._held(op))
            return
        inst = runner.instance
        back = [
            e
            for rid in dict.fromkeys(op.request_ids)  # restored once, however often named
            if rid in self.live
            and (e := self.live[rid].engine_req) is not None
            and inst.is_evicted(e)
        ]
        if back and inst.active_model == inst.evicted_model(back[0]):
            runner.restore(back, now)
            self.counters.restores += len(back)
        else:
            self.refuse("restore-wrong-model")

    def _held(self, op: Operation) -> Callable[[float], None]:
        def run(now: float) -> None:
            self.carry(op, now)
            self._changed()

        return run
