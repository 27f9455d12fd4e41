"""QLM as a policy the shells call, and the baselines it is measured against.

Every policy here has the same three methods: `on_arrival` when a request arrives,
`on_finished` when one completes (with its output length, which QLM learns from), and
`decide(instances, running, now)`, which returns the operations to carry out now. A policy
assumes the shell carries out every operation it returns, in order: pulled requests leave its
queues at once. The shell calls `decide` at its own cadence (after arrivals and completions,
or every planning interval).

- `qlm`: request groups, virtual queues planned by EDF and, when EDF predicts violations, by
  the MILP (`planner`), carried out by `operations_for`.
- `qlm-noplan`: the same with EDF plans only.
- `vllm`: first come first served per model, as separate vLLM deployments would be: an
  instance pulls its active model's requests in arrival order; an idle instance with none
  waiting swaps to the model whose oldest request has waited longest among those no instance
  serves (else it stays as it is).
- `edf`: one global queue of requests by deadline, no groups: each request in turn goes to the
  instance with room that has its model active and the most room; failing that, an idle
  instance swaps to its model; failing that, it waits and later requests may go ahead.
- `vllm-shared`: models share the GPUs behind one first-come-first-served queue, as vLLM
  instances with sleep mode behind a naive router (`FcfsShared`): the head of the queue goes
  to an instance with its model and room; a model no instance holds takes an instance over in
  arrival order (an idle one at once, else the least busy, drained first: sleep mode frees a
  GPU only once its requests finish); until the head is placed, nothing behind it is.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from hermes.policies.qlm.estimator import GroupView, InstanceView
from hermes.policies.qlm.groups import Grouper, GroupKey, LengthStats, length_bucket
from hermes.policies.qlm.operations import (
    Evict,
    Operation,
    Pull,
    RunningView,
    SwapKV,
    SwapModel,
    operations_for,
)
from hermes.policies.qlm.options import QLMOptions as QLMOptions
from hermes.policies.qlm.options import QLMPlanner
from hermes.policies.qlm.planner import Plan


class QueuePolicy(Protocol):
    def on_arrival(
        self,
        request_id: str,
        model: str,
        slo_class: str,
        prompt_tokens: int,
        slo_s: float,
        now: float,
    ) -> None: ...

    def on_finished(self, request_id: str, output_tokens: int, now: float) -> None: ...

    def decide(
        self,
        instances: Sequence[InstanceView],
        running: Mapping[str, Sequence[RunningView]],
        now: float,
    ) -> list[Operation]: ...


class QLMPolicy:
    """QLM (`planner="milp"`) or QLM without its planner (`planner="edf"`)."""

    def __init__(self, options: QLMOptions | None = None) -> None:
        self.options = o = options or QLMOptions()
        self.grouper = Grouper(o.max_group_size, o.group_window_s)
        self.planner = QLMPlanner(o)
        self.queues: dict[str, tuple[int, ...]] = {}  # the virtual queues, by instance
        self.evicted: dict[str, list[RunningView]] = {}  # parked in CPU memory, by instance
        self.last_plan: Plan | None = None
        self._class_slo_s: dict[str, float] = {}
        self._key_of: dict[str, GroupKey] = {}  # every request not yet finished

    @property
    def stats(self) -> LengthStats:
        """Output lengths learned so far (the planner's)."""
        return self.planner.stats

    def on_arrival(
        self,
        request_id: str,
        model: str,
        slo_class: str,
        prompt_tokens: int,
        slo_s: float,
        now: float,
    ) -> None:
        if request_id in self._key_of:
            raise ValueError(f"request {request_id!r} arrived twice")
        group = self.grouper.add(request_id, model, slo_class, prompt_tokens, now, slo_s)
        self._key_of[request_id] = group.key
        self._class_slo_s[slo_class] = min(slo_s, self._class_slo_s.get(slo_class, math.inf))

    def on_finished(self, request_id: str, output_tokens: int, now: float) -> None:
        key = self._key_of.pop(request_id, None)
        if key is None:
            raise ValueError(f"request {request_id!r} finished but never arrived")
        self.stats.observe(key, output_tokens)

    def decide(
        self,
        instances: Sequence[InstanceView],
        running: Mapping[str, Sequence[RunningView]],
        now: float,
    ) -> list[Operation]:
        views = {
            g.id: GroupView(g.id, g.key, g.size, g.deadline_s) for g in self.grouper.groups.values()
        }
        new = self.planner.plan(list(views.values()), instances, now)
        ops = operations_for(
            new,
            self.queues,
            views,
            instances,
            running,
            now=now,
            stats=self.stats,
            z=self.planner.z,
            pull_threshold=self.options.pull_threshold,
            class_slo_s=self._class_slo_s,
            evicted=self.evicted,
        )
        self.last_plan = new
        self.queues = {name: tuple(q) for name, q in new.queues.items()}
        return [self._carry(op, running) for op in ops]

    def _carry(self, op: Operation, running: Mapping[str, Sequence[RunningView]]) -> Operation:
        """Book what the shell is about to do; name a pull's requests."""
        if isinstance(op, Pull) and op.group_id is not None:
            taken = self.grouper.take(op.group_id, op.count)
            if op.group_id not in self.grouper.groups:
                self.queues[op.instance] = tuple(
                    gid for gid in self.queues[op.instance] if gid != op.group_id
                )
            return replace(op, request_ids=tuple(m.request_id for m in taken))
        if isinstance(op, Evict):
            ids = set(op.request_ids)
            parked = [r for r in running.get(op.instance, ()) if r.request_id in ids]
            self.evicted.setdefault(op.instance, []).extend(parked)
        elif isinstance(op, SwapKV) and op.to == "gpu":
            ids = set(op.request_ids)
            left = [r for r in self.evicted.get(op.instance, ()) if r.request_id not in ids]
            self.evicted[op.instance] = left
        return op


@dataclass(slots=True)
class _Waiting:
    request_id: str
    model: str
    deadline_s: float
    arrival_s: float


class _RequestQueues:
    """Waiting requests of the baselines, which know no groups."""

    def __init__(self, options: QLMOptions | None = None) -> None:
        self.options = options or QLMOptions()
        self.waiting: dict[str, _Waiting] = {}  # in arrival order
        self._arrived: set[str] = set()

    def on_arrival(
        self,
        request_id: str,
        model: str,
        slo_class: str,
        prompt_tokens: int,
        slo_s: float,
        now: float,
    ) -> None:
        if request_id in self._arrived:
            raise ValueError(f"request {request_id!r} arrived twice")
        length_bucket(prompt_tokens)  # validates it
        self._arrived.add(request_id)
        self.waiting[request_id] = _Waiting(request_id, model, now + slo_s, now)

    def on_finished(self, request_id: str, output_tokens: int, now: float) -> None:
        if request_id not in self._arrived:
            raise ValueError(f"request {request_id!r} finished but never arrived")
        self._arrived.discard(request_id)

    def _pulls(self, chosen: Mapping[str, list[str]]) -> list[Operation]:
        ops: list[Operation] = []
        for name, ids in chosen.items():
            if ids:
                for rid in ids:
                    del self.waiting[rid]
                ops.append(Pull(name, None, len(ids), tuple(ids)))
        return ops


class FcfsPerModel(_RequestQueues):
    """`vllm`: first come first served per model (see the module docstring)."""

    def decide(
        self,
        instances: Sequence[InstanceView],
        running: Mapping[str, Sequence[RunningView]],
        now: float,
    ) -> list[Operation]:
        by_model: dict[str, deque[_Waiting]] = {}
        for w in self.waiting.values():
            by_model.setdefault(w.model, deque()).append(w)
        served = {inst.active_model for inst in instances}
        ops: list[Operation] = []
        chosen: dict[str, list[str]] = {}
        for inst in instances:
            busy = running.get(inst.name, ())
            model = inst.active_model
            if not busy and (model is None or not by_model.get(model)):
                unserved = [
                    m for m, q in by_model.items() if q and m not in served and inst.serves(m)
                ]
                if unserved:
                    model = min(unserved, key=lambda m: (by_model[m][0].arrival_s, m))
                    ops.append(SwapModel(inst.name, model, model in inst.warm_models))
                    served.add(model)
            queue = by_model.get(model) if model is not None else None
            room = self.options.pull_threshold - len(busy)
            while queue and room > 0:
                chosen.setdefault(inst.name, []).append(queue.popleft().request_id)
                room -= 1
        return ops + self._pulls(chosen)


class EdfPolicy(_RequestQueues):
    """`edf`: one global earliest-deadline-first queue of requests (see the module docstring)."""

    def decide(
        self,
        instances: Sequence[InstanceView],
        running: Mapping[str, Sequence[RunningView]],
        now: float,
    ) -> list[Operation]:
        room = {
            inst.name: self.options.pull_threshold - len(running.get(inst.name, ()))
            for inst in instances
        }
        model = {inst.name: inst.active_model for inst in instances}
        idle = [inst for inst in instances if not running.get(inst.name)]
        ops: list[Operation] = []
        chosen: dict[str, list[str]] = {}
        for w in sorted(
            self.waiting.values(), key=lambda w: (w.deadline_s, w.arrival_s, w.request_id)
        ):
            ready = [
                inst for inst in instances if room[inst.name] > 0 and model[inst.name] == w.model
            ]
            if ready:
                target = max(ready, key=lambda inst: room[inst.name]).name
            else:
                spare = next(
                    (inst for inst in idle if inst.serves(w.model) and inst.name not in chosen),
                    None,
                )
                if spare is None:
                    continue
                target = spare.name
                idle.remove(spare)
                ops.append(SwapModel(target, w.model, w.model in spare.warm_models))
                model[target] = w.model
            chosen.setdefault(target, []).append(w.request_id)
            room[target] -= 1
        return ops + self._pulls(chosen)


class FcfsShared(_RequestQueues):
    """`vllm-shared`: one FCFS queue over GPUs the models share (see the module docstring).
    Head-of-line blocking is the point: it is what a FCFS queue in front of swapping engines
    does, and what QLM's reordering removes."""

    def __init__(self, options: QLMOptions | None = None) -> None:
        super().__init__(options)
        self.draining: dict[str, str] = {}  # instance -> the model it swaps to once empty

    def decide(
        self,
        instances: Sequence[InstanceView],
        running: Mapping[str, Sequence[RunningView]],
        now: float,
    ) -> list[Operation]:
        ops: list[Operation] = []
        model = {inst.name: inst.active_model for inst in instances}
        room = {
            inst.name: self.options.pull_threshold - len(running.get(inst.name, ()))
            for inst in instances
        }
        idle = [inst for inst in instances if not running.get(inst.name)]
        for inst in idle:  # drained: the swap it waited for
            target = self.draining.pop(inst.name, None)
            if target is not None and target != inst.active_model:
                ops.append(SwapModel(inst.name, target, target in inst.warm_models))
                model[inst.name] = target
        free = [inst for inst in idle if inst.name not in self.draining]
        chosen: dict[str, list[str]] = {}
        for w in self.waiting.values():  # arrival order
            ready = [
                i.name
                for i in instances
                if model[i.name] == w.model and room[i.name] > 0 and i.name not in self.draining
            ]
            if not ready and w.model not in model.values():
                if w.model in self.draining.values():
                    break  # its instance is draining: the head waits, and all behind it
                load = {
                    i.name: len(running.get(i.name, ())) + len(chosen.get(i.name, ()))
                    for i in instances
                }
                ready = self._take_over(w.model, instances, free, load, model, ops)
            if not ready:
                break
            target = max(ready, key=lambda name: room[name])
            chosen.setdefault(target, []).append(w.request_id)
            room[target] -= 1
            free = [i for i in free if i.name != target]
        return ops + self._pulls(chosen)

    def _take_over(
        self,
        wanted: str,
        instances: Sequence[InstanceView],
        free: list[InstanceView],
        load: Mapping[str, int],
        model: dict[str, str | None],
        ops: list[Operation],
    ) -> list[str]:
        """An instance for `wanted`, which none holds: an idle one swaps now (its name
        returned), else the one with the fewest requests (`load`) starts draining (none
        returned)."""
        spare = next((i for i in free if i.serves(wanted)), None)
        if spare is not None:
            ops.append(SwapModel(spare.name, wanted, wanted in spare.warm_models))
            model[spare.name] = wanted
            return [spare.name]
        busy = [i for i in instances if i.serves(wanted) and i.name not in self.draining]
        if busy:
            victim = min(busy, key=lambda i: (load[i.name], i.name))
            self.draining[victim.name] = wanted
        return []
