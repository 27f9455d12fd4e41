"""QLM's serving operations: what a plan asks of the instances, as data the shell carries out.

`operations_for` turns a plan into operations, per instance in the order to carry them out:

1. `MoveGroup` for each queued group the plan puts on another instance than before (virtual
   queues are logical, so a move costs nothing but is worth counting: it is load balancing).
2. `Evict` (+ `SwapKV` to CPU) when the instance's head group is predicted to miss its
   deadline, it does not fit in the backlog's room, and requests of a lower class (a longer
   SLO) of the same model run there: as many of those as the head group needs, the least
   urgent first. Their KV cache is kept in CPU memory, not recomputed.
3. `SwapModel` when the head group needs a model that is not active and nothing runs on the
   instance (an instance never drops running work to swap; it stops pulling the old model's
   groups, since the queue order is its execution order, and swaps once they have finished).
   `warm`: the model is in CPU memory (fast); else it loads from disk.
4. `SwapKV` to GPU: evicted requests of the active model resume when there is room and the
   next group of that model is of their class or a lower one.
5. `Pull` from the head of the queue while the instance's backlog (running requests) is
   under `pull_threshold` and the groups need the active model.
6. `ScaleOut` once, when the plan still predicts violations: no order of these instances
   meets the SLOs, so more instances would.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from hermes.policies.qlm.estimator import GroupView, InstanceView, waiting_times
from hermes.policies.qlm.groups import LengthStats
from hermes.policies.qlm.planner import Plan


@dataclass(frozen=True, slots=True)
class RunningView:
    """A request being served (or evicted to CPU memory) on an instance."""

    request_id: str
    model: str
    slo_class: str
    deadline_s: float


@dataclass(frozen=True, slots=True)
class Pull:
    """Start `count` requests on `instance`: the first waiting ones of group `group_id` (None
    for a policy without groups). Policies name them in `request_ids`."""

    instance: str
    group_id: int | None
    count: int
    request_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"Pull.count must be >= 1, got {self.count!r}")
        if self.request_ids and len(self.request_ids) != self.count:
            raise ValueError(
                f"Pull names {len(self.request_ids)} requests but count is {self.count}"
            )


@dataclass(frozen=True, slots=True)
class Evict:
    """Preempt these running requests; their KV cache goes to CPU memory (`SwapKV`)."""

    instance: str
    request_ids: tuple[str, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class SwapKV:
    """Move these requests' KV cache: to "cpu" as they are evicted, to "gpu" to resume them."""

    instance: str
    request_ids: tuple[str, ...]
    to: Literal["cpu", "gpu"]


@dataclass(frozen=True, slots=True)
class SwapModel:
    """Make `model` active on `instance`: from CPU memory if `warm`, else from disk."""

    instance: str
    model: str
    warm: bool


@dataclass(frozen=True, slots=True)
class MoveGroup:
    """A queued group changes virtual queue (load balancing)."""

    group_id: int
    from_instance: str
    to_instance: str


@dataclass(frozen=True, slots=True)
class ScaleOut:
    """A recommendation: even the best plan predicts violations on these instances."""

    reason: str
    predicted_violations: int


Operation = Pull | Evict | SwapKV | SwapModel | MoveGroup | ScaleOut


def moves(plan: Plan, current: Mapping[str, Sequence[int]]) -> list[MoveGroup]:
    """A `MoveGroup` per group that the plan queues on another instance than `current` does
    (groups new to the queues are placed, not moved)."""
    where = {gid: name for name, queue in current.items() for gid in queue}
    return [
        MoveGroup(gid, where[gid], name)
        for name, queue in plan.queues.items()
        for gid in queue
        if gid in where and where[gid] != name
    ]


def operations_for(
    plan: Plan,
    current: Mapping[str, Sequence[int]],
    groups: Mapping[int, GroupView],
    instances: Sequence[InstanceView],
    running: Mapping[str, Sequence[RunningView]],
    *,
    now: float,
    stats: LengthStats,
    z: float,
    pull_threshold: int,
    class_slo_s: Mapping[str, float],
    evicted: Mapping[str, Sequence[RunningView]] | None = None,
) -> list[Operation]:
    """The operations that carry `plan` out (see the module docstring). `current` is the
    virtual queues before the plan; `groups` has a view of every group the plan queues;
    `class_slo_s` ranks SLO classes (a longer SLO is a lower class; unknown ones are lowest);
    `evicted` is the requests parked in each instance's CPU memory."""

    def rank(slo_class: str) -> float:
        return class_slo_s.get(slo_class, math.inf)

    ops: list[Operation] = list(moves(plan, current))
    for inst in instances:
        queue = [groups[gid] for gid in plan.queues.get(inst.name, ())]
        busy = running.get(inst.name, ())
        room = pull_threshold - len(busy)
        model = inst.active_model
        head = queue[0] if queue else None

        if head is not None and head.model == model and room < head.size:
            lower = sorted(
                (
                    r
                    for r in busy
                    if r.model == model and rank(r.slo_class) > rank(head.key.slo_class)
                ),
                key=lambda r: (-rank(r.slo_class), -r.deadline_s, r.request_id),
            )
            if lower and waiting_times([head], inst, stats, z)[0] > head.deadline_s - now:
                ids = tuple(r.request_id for r in lower[: head.size - max(room, 0)])
                reason = f"group {head.id} ({head.key.slo_class}) is predicted to miss its deadline"
                ops += [Evict(inst.name, ids, reason), SwapKV(inst.name, ids, "cpu")]
                room += len(ids)

        if head is not None and head.model != model and not busy:
            ops.append(SwapModel(inst.name, head.model, head.model in inst.warm_models))
            model = head.model

        parked = sorted(
            (r for r in (evicted or {}).get(inst.name, ()) if r.model == model),
            key=lambda r: (r.deadline_s, r.request_id),
        )
        if parked and room > 0:
            nxt = next((g for g in queue if g.model == model), None)
            if nxt is None or min(rank(r.slo_class) for r in parked) <= rank(nxt.key.slo_class):
                ids = tuple(r.request_id for r in parked[:room])
                ops.append(SwapKV(inst.name, ids, "gpu"))
                room -= len(ids)

        for g in queue:
            if room <= 0 or g.model != model:
                break
            take = min(room, g.size)
            ops.append(Pull(inst.name, g.id, take))
            room -= take

    if plan.predicted_violations > 0:
        reason = (
            f"{plan.predicted_violations} groups are predicted to miss their deadlines "
            f"under the best plan found ({plan.solver})"
        )
        ops.append(ScaleOut(reason, plan.predicted_violations))
    return ops
