"""One QLM experiment run: requests arrive, a queue policy decides operations, multi-model
instances carry them out, and every request's fate is recorded.

The shell is the same for every policy (`vllm`, `edf`, `qlm-noplan`, `qlm`): it tells the
policy of arrivals and completions, asks it for operations after anything changes (at most
once per `decide_interval_s` of simulated time, and at once when an instance falls idle with
work waiting), and carries them out in order: `Pull` adds requests to an instance's engine,
`SwapModel` loads a model, `Evict` and `SwapKV` move running requests' KV between GPU and CPU
memory, `MoveGroup` is bookkeeping the policy keeps, `ScaleOut` is counted. Each call to
`decide` is timed on the wall clock (the planner's cost); nothing else reads a clock.

A request's SLO is on its completion: it meets it when it finishes within `slo_s` of its
arrival, as QLM's estimator predicts when a group has drained.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hermes.cluster.multi_model import ModelInstance
from hermes.engine.request import EngineRequest
from hermes.engine.scheduler import Step
from hermes.policies.qlm.estimator import InstanceView
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
from hermes.policies.qlm.policy import QueuePolicy
from hermes.workloads.qlm_workloads import QlmRequest


@dataclass(slots=True)
class _Live:
    spec: QlmRequest
    engine_req: EngineRequest | None = None
    instance: str | None = None


@dataclass(slots=True)
class RunCounters:
    decisions: int = 0
    decide_s: list[float] = field(default_factory=list)
    pulls: int = 0
    moves: int = 0
    evictions: int = 0
    restores: int = 0
    shell_restores: int = 0  # evicted requests the shell brought back on an idle instance
    scale_outs: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # operations that could not be done


@dataclass(frozen=True, slots=True)
class QlmRun:
    requests: tuple[QlmRequest, ...]
    finish_s: tuple[float | None, ...]  # per request, None if unfinished at the end
    end_s: float
    counters: RunCounters
    swaps: dict[str, int]  # warm, cold
    swap_s: float
    utilisation: float  # mean over instances
    output_tokens: int


def _view(inst: ModelInstance, now: float) -> InstanceView:
    return InstanceView(
        inst.name,
        inst.active_model,
        frozenset(inst.warm_models),
        inst.swap_times(),
        # An instance with no model loaded yet plans with its first model's prior.
        inst.throughput(inst.active_model or inst.models[0]),
        inst.drain_time_s(now),
    )


def simulate(
    requests: Sequence[QlmRequest],
    policy: QueuePolicy,
    instances: Sequence[ModelInstance],
    *,
    horizon_s: float,
    decide_interval_s: float = 1.0,
    timer: Callable[[], float] = time.perf_counter,
) -> QlmRun:
    """Run until every request has finished or `horizon_s` of simulated time has passed."""
    by_name = {inst.name: inst for inst in instances}
    if len(by_name) != len(instances):
        raise ValueError("instances need distinct names")
    pending = sorted(requests, key=lambda r: r.arrival_s)
    live: dict[str, _Live] = {}
    finish: dict[str, float] = {}
    steps: dict[str, Step] = {}
    counters = RunCounters()
    next_arrival = 0
    last_decide = -math.inf
    dirty = False
    now = 0.0
    tokens = 0
    deferred: list[str] = []
    held_back: dict[str, list[Operation]] = {}  # evictions and restores for a step's end

    def refuse(kind: str) -> None:
        counters.refused[kind] = counters.refused.get(kind, 0) + 1

    def running_views() -> dict[str, list[RunningView]]:
        out: dict[str, list[RunningView]] = {name: [] for name in by_name}
        for rid, lv in live.items():
            if lv.instance is not None and lv.engine_req is not None:
                inst = by_name[lv.instance]
                if any(e is lv.engine_req for e in inst.evicted):
                    continue
                s = lv.spec
                out[lv.instance].append(RunningView(rid, s.model, s.slo_class, s.deadline_s))
        return out

    def admit(rid: str, inst: ModelInstance) -> None:
        lv = live[rid]
        s = lv.spec
        req = EngineRequest(rid, s.prompt_tokens, s.output_tokens, s.arrival_s)
        if not inst.add(req, now, model=s.model):
            refuse("rejected")
            finish[rid] = now  # a request the engine can never serve ends here, missed
            del live[rid]
            return
        lv.engine_req, lv.instance = req, inst.name
        counters.pulls += 1
        step = steps.get(inst.name)
        if step is not None and step.decode_run:
            inst.shorten(step, now)

    def place_deferred() -> None:
        """Pulled requests whose model was not active where they were sent go to the
        least-loaded instance that has it active (the policy has let go of them)."""
        for rid in list(deferred):
            model = live[rid].spec.model
            ready = [i for i in by_name.values() if i.active_model == model]
            if ready:
                deferred.remove(rid)
                admit(rid, min(ready, key=lambda i: i.outstanding))

    def carry(op: Operation) -> None:
        if isinstance(op, Pull):
            inst = by_name[op.instance]
            for rid in op.request_ids:
                if inst.active_model != live[rid].spec.model:
                    refuse("pull-wrong-model")
                    deferred.append(rid)
                else:
                    admit(rid, inst)
        elif isinstance(op, SwapModel):
            inst = by_name[op.instance]
            if inst.active_model == op.model:
                return
            if op.instance in steps or inst.swapping:
                refuse("swap-busy")
                return
            try:
                inst.begin_swap(op.model, now)
            except RuntimeError:
                refuse("swap-not-idle")
        elif isinstance(op, Evict):
            inst = by_name[op.instance]
            if op.instance in steps:  # at the iteration boundary, as an engine would
                held_back.setdefault(op.instance, []).append(op)
                return
            # Held back to a step's end, some may have finished or been evicted meanwhile.
            engine = inst.engine
            queued = (
                set()
                if engine is None
                else {id(r) for r in (*engine.running, *engine.waiting, *engine.swapped)}
            )
            reqs: list[EngineRequest] = []
            for r in op.request_ids:
                lv = live.get(r)
                if lv is not None and lv.engine_req is not None and id(lv.engine_req) in queued:
                    reqs.append(lv.engine_req)
            if reqs:
                inst.evict(reqs, now)
            counters.evictions += len(reqs)
        elif isinstance(op, SwapKV):
            if op.to == "gpu":
                inst = by_name[op.instance]
                if op.instance in steps or inst.swapping:
                    held_back.setdefault(op.instance, []).append(op)
                    return
                held = {id(e) for e in inst.evicted}
                back = [
                    e
                    for r in dict.fromkeys(op.request_ids)  # restored once, however often named
                    if r in live and (e := live[r].engine_req) is not None and id(e) in held
                ]
                if back and inst.active_model == inst.evicted_model(back[0]):
                    inst.restore(back, now)
                    counters.restores += len(back)
                else:
                    refuse("restore-wrong-model")
        elif isinstance(op, MoveGroup):
            counters.moves += 1
        elif isinstance(op, ScaleOut):
            counters.scale_outs += 1

    while True:
        changed = False
        # Arrivals up to now.
        while next_arrival < len(pending) and pending[next_arrival].arrival_s <= now:
            s = pending[next_arrival]
            next_arrival += 1
            rid = str(s.id)
            live[rid] = _Live(s)
            policy.on_arrival(rid, s.model, s.slo_class, s.prompt_tokens, s.slo_s, s.arrival_s)
            changed = True
        # Steps and swaps that end now.
        for name, inst in by_name.items():
            step = steps.get(name)
            if step is not None and step.end_s <= now:
                del steps[name]
                result = inst.complete(step)
                tokens += result.tokens
                for req in result.finished:
                    rid = str(req.id)
                    finish[rid] = step.end_s
                    live.pop(rid, None)
                    policy.on_finished(rid, req.generated, step.end_s)
                    changed = True
            sw = inst.swap_in_progress
            if sw is not None and sw.end_s <= now:
                inst.complete_swap(now)
                changed = True
            if name not in steps and not inst.swapping and held_back.get(name):
                for op in held_back.pop(name):
                    carry(op)
                changed = True
        dirty = dirty or changed
        idle_waiting = any(
            n not in steps and not i.swapping and i.idle for n, i in by_name.items()
        ) and len(live) > sum(1 for lv in live.values() if lv.instance is not None)
        if dirty and (now - last_decide >= decide_interval_s or idle_waiting):
            start = timer()
            ops = policy.decide([_view(i, now) for i in by_name.values()], running_views(), now)
            counters.decide_s.append(timer() - start)
            counters.decisions += 1
            last_decide = now
            dirty = False
            for op in ops:
                carry(op)
        if deferred:
            place_deferred()
        # A safety net, so that nothing is lost: requests evicted on an instance that has
        # their model active and nothing else to do come back, whatever the policy thinks.
        for name, inst in by_name.items():
            if name in steps or inst.swapping or held_back.get(name) or not inst.idle:
                continue
            stranded = [e for e in inst.evicted if inst.evicted_model(e) == inst.active_model]
            if stranded:
                inst.restore(stranded, now)
                counters.shell_restores += len(stranded)
        # Start steps where none is in flight.
        for name, inst in by_name.items():
            if name not in steps and not inst.swapping and now >= inst.free_at_s:
                step = inst.plan(now)
                if step is not None:
                    steps[name] = step
        # The next event.
        candidates = [s.end_s for s in steps.values()]
        candidates += [
            i.swap_in_progress.end_s for i in by_name.values() if i.swap_in_progress is not None
        ]
        candidates += [i.free_at_s for i in by_name.values() if i.free_at_s > now]
        if next_arrival < len(pending):
            candidates.append(pending[next_arrival].arrival_s)
        if dirty and live:
            candidates.append(last_decide + decide_interval_s)
        later = [t for t in candidates if t > now]
        if not later or (not live and next_arrival >= len(pending)):
            break
        nxt = min(later)
        if nxt > horizon_s:
            now = horizon_s
            break
        now = nxt

    swaps = {
        "warm": sum(i.stats.warm_swaps for i in instances),
        "cold": sum(i.stats.cold_swaps for i in instances),
    }
    return QlmRun(
        tuple(pending),
        tuple(finish.get(str(r.id)) for r in pending),
        now,
        counters,
        swaps,
        sum(i.stats.swap_s for i in instances),
        float(np.mean([i.utilisation(now) for i in instances])) if instances else 0.0,
        tokens,
    )


def summary(run: QlmRun, window: tuple[float, float] | None = None) -> dict[str, Any]:
    """SLO attainment per class and overall, throughput, swaps, utilisation, decide times.
    `window`: only requests arriving in it count (all by default)."""
    lo, hi = window or (-math.inf, math.inf)
    rows = [
        (r, f) for r, f in zip(run.requests, run.finish_s, strict=True) if lo <= r.arrival_s < hi
    ]
    by_class: dict[str, list[bool]] = {}
    for r, f in rows:
        by_class.setdefault(r.slo_class, []).append(f is not None and f - r.arrival_s <= r.slo_s)
    met = [m for ms in by_class.values() for m in ms]
    done = [f for _, f in rows if f is not None]
    decide = np.asarray(run.counters.decide_s) * 1e3
    return {
        "requests": len(rows),
        "finished": len(done),
        "slo_attainment": float(np.mean(met)) if met else None,
        "slo_attainment_by_class": {c: float(np.mean(ms)) for c, ms in sorted(by_class.items())},
        "throughput_req_s": len(done) / run.end_s if run.end_s > 0 else 0.0,
        "output_tokens_per_s": run.output_tokens / run.end_s if run.end_s > 0 else 0.0,
        "model_swaps": run.swaps,
        "swap_s": run.swap_s,
        "gpu_utilisation": run.utilisation,
        "decisions": run.counters.decisions,
        "decide_ms_p50": float(np.percentile(decide, 50)) if decide.size else None,
        "decide_ms_p95": float(np.percentile(decide, 95)) if decide.size else None,
        "decide_ms_max": float(decide.max()) if decide.size else None,
        "evictions": run.counters.evictions,
        "restores": run.counters.restores,
        "shell_restores": run.counters.shell_restores,
        "scale_out_recommendations": run.counters.scale_outs,
        "refused_operations": dict(sorted(run.counters.refused.items())),
        "end_s": run.end_s,
    }
