"""QLM's planner: which instance's virtual queue each group joins, and in what order.

`plan_edf`: groups in deadline order, each where it drains earliest, kept with its model unless
a move saves its deadline. `plan_milp`: a MILP over the most urgent groups decides which model
each instance serves and which groups are given up, when EDF predicts violations; `plan` takes
it only when the estimator finds it better. The design, the MILP and why it has this shape:
docs/design/qlm-planner.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from hermes.policies.qlm.estimator import GroupView, InstanceView, drain_times, group_tokens
from hermes.policies.qlm.groups import LengthStats

Solver = Literal["milp", "edf", "edf-fallback"]


@dataclass(frozen=True, slots=True)
class Plan:
    """Each instance's virtual queue (group ids in execution order) and the estimator's count
    of groups that would miss their deadlines (`late`; `weighted_violations` weighs them by
    class). `solver` says whose plan it is: `milp`; `edf` (EDF predicted no violation, only
    of groups late in any plan, or the MILP found nothing better); `edf-fallback` (the MILP
    had no answer within its time limit)."""

    queues: Mapping[str, tuple[int, ...]]
    predicted_violations: int
    solver: Solver
    weighted_violations: float = 0.0
    hit_time_limit: bool = False
    late: tuple[int, ...] = ()  # the groups predicted to miss, by instance and queue order


@dataclass(frozen=True, slots=True)
class MilpSettings:
    """`window`: how many of the most urgent groups the MILP plans; `mip_rel_gap`: HiGHS stops
    once its plan is provably within this fraction of the best."""

    window: int = 192
    mip_rel_gap: float = 0.01

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"MilpSettings.window must be >= 1, got {self.window!r}")
        if not 0 <= self.mip_rel_gap < 1:
            raise ValueError(
                f"MilpSettings.mip_rel_gap must be in [0, 1), got {self.mip_rel_gap!r}"
            )


class _Lanes:
    """Queues under construction, with each one's drain time and last model."""

    __slots__ = ("changed", "instances", "load", "model", "queues")

    def __init__(self, instances: Sequence[InstanceView]) -> None:
        self.instances = instances
        self.load = [inst.busy_s for inst in instances]
        self.model = [inst.active_model for inst in instances]
        self.changed = [False] * len(instances)
        self.queues: list[list[GroupView]] = [[] for _ in instances]

    def _finish(self, i: int, model: str, service_s: float) -> float:
        if model == self.model[i]:
            return self.load[i] + service_s
        inst = self.instances[i]
        swap = inst.later_swap_s(model) if self.changed[i] else inst.first_swap_s(model)
        return self.load[i] + swap + service_s

    def append_earliest(
        self, g: GroupView, tokens: float, candidates: Sequence[int], due_s: float = math.inf
    ) -> None:
        """Append `g` where it drains earliest among `candidates` (the first on ties), but
        on a queue that already ends with its model if one drains it within `due_s`, or if no
        queue does: a swap costs more than its load time (the instance drains its running
        batch first, serving ever fewer requests), so groups of a model stay together unless
        moving one saves its deadline."""
        model = g.model
        best, best_t = -1, math.inf
        same, same_t = -1, math.inf
        for i in candidates:
            t = self._finish(i, model, tokens / self.instances[i].throughput_tok_s)
            if t < best_t:
                best, best_t = i, t
            if self.model[i] == model and t < same_t:
                same, same_t = i, t
        # Kept with its model when that meets its deadline, or when nothing does: a swap
        # cannot save a group that is late anyway, and it costs every group behind it.
        if same >= 0 and (same_t <= due_s or best_t > due_s):
            best, best_t = same, same_t
        if model != self.model[best]:
            self.model[best], self.changed[best] = model, True
        self.load[best] = best_t
        self.queues[best].append(g)


def edf_order(groups: Sequence[GroupView]) -> list[GroupView]:
    return sorted(groups, key=lambda g: (g.deadline_s, g.id))


def _check(groups: Sequence[GroupView], instances: Sequence[InstanceView]) -> dict[str, list[int]]:
    """The instances that can serve each model."""
    if not instances:
        raise ValueError("the planner needs at least one instance")
    names = [inst.name for inst in instances]
    if len(set(names)) != len(names):
        raise ValueError(f"instance names must be unique, got {names}")
    serving: dict[str, list[int]] = {}
    for g in groups:
        if g.model not in serving:
            serving[g.model] = [i for i, inst in enumerate(instances) if inst.serves(g.model)]
            if not serving[g.model]:
                raise ValueError(f"group {g.id}: no instance can serve model {g.model!r}")
    return serving


def _weight(g: GroupView, weights: Mapping[str, float] | None) -> float:
    return 1.0 if weights is None else weights.get(g.key.slo_class, 1.0)


@dataclass(frozen=True, slots=True)
class _Problem:
    """A planning round's inputs, with each group's tokens and each model's instances."""

    groups: list[GroupView]  # in deadline order
    instances: Sequence[InstanceView]
    now: float
    tokens: dict[int, float]
    serving: dict[str, list[int]]
    weights: Mapping[str, float] | None

    @classmethod
    def of(
        cls,
        groups: Sequence[GroupView],
        instances: Sequence[InstanceView],
        now: float,
        stats: LengthStats,
        z: float,
        weights: Mapping[str, float] | None,
    ) -> _Problem:
        serving = _check(groups, instances)
        tokens = {g.id: group_tokens(g, stats, z) for g in groups}
        return cls(edf_order(groups), instances, now, tokens, serving, weights)

    def judge(self, lanes: _Lanes, solver: Solver, hit_time_limit: bool = False) -> Plan:
        """The plan of these queues, its violations counted by the estimator."""
        late: list[int] = []
        weighted = 0.0
        for inst, queue in zip(self.instances, lanes.queues, strict=True):
            service = [self.tokens[g.id] / inst.throughput_tok_s for g in queue]
            for g, t in zip(queue, drain_times(queue, inst, service), strict=True):
                if t > g.deadline_s - self.now:
                    late.append(g.id)
                    weighted += _weight(g, self.weights)
        queues = {
            inst.name: tuple(g.id for g in queue)
            for inst, queue in zip(self.instances, lanes.queues, strict=True)
        }
        return Plan(queues, len(late), solver, weighted, hit_time_limit, tuple(late))

    def edf(self) -> Plan:
        lanes = _Lanes(self.instances)
        for g in self.groups:
            due = g.deadline_s - self.now
            lanes.append_earliest(g, self.tokens[g.id], self.serving[g.model], due)
        return self.judge(lanes, "edf")

    def hopeless(self, g: GroupView) -> bool:
        """Whether `g` would be late even alone on any instance: late in every plan."""
        return all(
            inst.busy_s + inst.first_swap_s(g.model) + self.tokens[g.id] / inst.throughput_tok_s
            > g.deadline_s - self.now
            for inst in (self.instances[i] for i in self.serving[g.model])
        )

    def milp(self, edf: Plan, time_limit_s: float, settings: MilpSettings) -> Plan:
        window, rest = self.groups[: settings.window], self.groups[settings.window :]
        solved = _solve(
            window,
            self.instances,
            self.now,
            self.tokens,
            self.weights,
            time_limit_s,
            settings.mip_rel_gap,
        )
        if solved is None:  # x = 0 is feasible, so HiGHS ran out of time before finding it
            return replace(edf, solver="edf-fallback", hit_time_limit=True)
        on_time, served, hit_limit = solved
        lanes = _Lanes(self.instances)
        for g, ok in zip(window, on_time, strict=True):
            if ok:
                mine = [i for i in self.serving[g.model] if served[i] == g.model]
                lanes.append_earliest(g, self.tokens[g.id], mine or self.serving[g.model])
        for g, ok in zip(window, on_time, strict=True):
            if not ok:
                lanes.append_earliest(g, self.tokens[g.id], self.serving[g.model])
        for g in rest:
            due = g.deadline_s - self.now
            lanes.append_earliest(g, self.tokens[g.id], self.serving[g.model], due)
        planned = self.judge(lanes, "milp", hit_limit)
        better = (planned.weighted_violations, planned.predicted_violations) < (
            edf.weighted_violations,
            edf.predicted_violations,
        )
        return planned if better else replace(edf, hit_time_limit=hit_limit)


def plan_edf(
    groups: Sequence[GroupView],
    instances: Sequence[InstanceView],
    now: float,
    stats: LengthStats,
    z: float,
    weights: Mapping[str, float] | None = None,
) -> Plan:
    """Deadline order, each group where it would drain earliest (docs/design/qlm-planner.md)."""
    return _Problem.of(groups, instances, now, stats, z, weights).edf()


def plan(
    groups: Sequence[GroupView],
    instances: Sequence[InstanceView],
    now: float,
    stats: LengthStats,
    z: float,
    time_limit_s: float,
    weights: Mapping[str, float] | None = None,
    settings: MilpSettings = MilpSettings(),
) -> Plan:
    """EDF's plan if no plan can do better (it predicts no violation, or only of groups that
    would be late even alone), else the better of it and the MILP's."""
    _check_time_limit(time_limit_s)
    problem = _Problem.of(groups, instances, now, stats, z, weights)
    edf = problem.edf()
    if edf.predicted_violations == 0:
        return edf
    by_id = {g.id: g for g in problem.groups}
    if all(problem.hopeless(by_id[gid]) for gid in edf.late):
        return edf
    return problem.milp(edf, time_limit_s, settings)


def plan_milp(
    groups: Sequence[GroupView],
    instances: Sequence[InstanceView],
    now: float,
    stats: LengthStats,
    z: float,
    time_limit_s: float,
    weights: Mapping[str, float] | None = None,
    settings: MilpSettings = MilpSettings(),
) -> Plan:
    """The MILP's plan if it predicts fewer (weighted) violations than EDF's, else EDF's."""
    _check_time_limit(time_limit_s)
    problem = _Problem.of(groups, instances, now, stats, z, weights)
    edf = problem.edf()
    return problem.milp(edf, time_limit_s, settings) if groups else edf


def _check_time_limit(time_limit_s: float) -> None:
    if not (math.isfinite(time_limit_s) and time_limit_s > 0):
        raise ValueError(f"time_limit_s must be finite and > 0, got {time_limit_s!r}")


class _Rows:
    """The MILP's constraint rows, as COO triplets with each row's bounds."""

    def __init__(self) -> None:
        self.rows: list[np.ndarray] = []
        self.cols: list[np.ndarray] = []
        self.vals: list[np.ndarray] = []
        self.lower: list[np.ndarray] = []
        self.upper: list[np.ndarray] = []
        self.n = 0

    def add(
        self, r: np.ndarray, c: np.ndarray, v: np.ndarray, n: int, lo: float, hi: float
    ) -> None:
        """`n` rows, bounded by [lo, hi]; `r` counts from the first of them."""
        self.rows.append(self.n + r)
        self.cols.append(c)
        self.vals.append(v)
        self.lower.append(np.full(n, lo))
        self.upper.append(np.full(n, hi))
        self.n += n

    def constraint(self, n_var: int) -> Any:
        """The rows as scipy's `LinearConstraint`."""
        from scipy.optimize import LinearConstraint  # type: ignore[import-untyped]
        from scipy.sparse import coo_array  # type: ignore[import-untyped]

        a = coo_array(
            (np.concatenate(self.vals), (np.concatenate(self.rows), np.concatenate(self.cols))),
            shape=(self.n, n_var),
        ).tocsr()
        return LinearConstraint(a, np.concatenate(self.lower), np.concatenate(self.upper))


def _constraints(
    window: Sequence[GroupView],
    instances: Sequence[InstanceView],
    models: Sequence[str],
    swap: np.ndarray,
    slack: np.ndarray,
    tau: np.ndarray,
) -> _Rows:
    """The rows of the MILP (docs/design/qlm-planner.md); variables x[g] | s[g] | y[i, m]."""
    n_w, n_i, n_m = len(window), len(instances), len(models)
    s0, y0 = n_w, 2 * n_w
    serves = np.array([[inst.serves(m) for m in models] for inst in instances])
    theta = np.array([inst.throughput_tok_s for inst in instances])
    busy = np.array([inst.busy_s for inst in instances])
    out = _Rows()
    # Σ_m y[i,m] ≤ 1.
    out.add(
        np.repeat(np.arange(n_i), n_m),
        y0 + np.arange(n_i * n_m),
        np.ones(n_i * n_m),
        n_i,
        -np.inf,
        1.0,
    )
    model_of = np.array([models.index(g.model) for g in window])
    for m in range(n_m):
        members = np.flatnonzero(model_of == m)  # in deadline order
        n = members.size
        r = np.arange(n)
        # s[g] − s[previous] − τ_g·x[g] = 0.
        out.add(
            np.concatenate([r, r, r[1:]]),
            np.concatenate([s0 + members, members, s0 + members[:-1]]),
            np.concatenate([np.ones(n), -tau[members], -np.ones(n - 1)]),
            n,
            0.0,
            0.0,
        )
        # s[g] − Σ_i Θ_i·(D_g − busy_i − swap_i(m))⁺·y[i,m] ≤ 0.
        cap = theta * np.maximum(0.0, slack[members, None] - busy - swap[:, m])
        cap[:, ~serves[:, m]] = 0.0
        rr, ii = np.nonzero(cap > 0)
        out.add(
            np.concatenate([r, rr]),
            np.concatenate([s0 + members, y0 + ii * n_m + m]),
            np.concatenate([np.ones(n), -cap[rr, ii]]),
            n,
            -np.inf,
            0.0,
        )
    return out


def _solve(
    window: Sequence[GroupView],
    instances: Sequence[InstanceView],
    now: float,
    tokens: Mapping[int, float],
    weights: Mapping[str, float] | None,
    time_limit_s: float,
    mip_rel_gap: float,
) -> tuple[list[bool], list[str | None], bool] | None:
    """The MILP of docs/design/qlm-planner.md over `window` (in deadline order): which groups are
    on time, each instance's model (None: free), and whether HiGHS stopped at its time limit.
    None if HiGHS found no feasible answer in time."""
    models = sorted({g.model for g in window})
    n_w, n_i, n_m = len(window), len(instances), len(models)
    s0, y0 = n_w, 2 * n_w  # variables: x[g] | s[g] | y[i, m]
    n_var = y0 + n_i * n_m
    serves = np.array([[inst.serves(m) for m in models] for inst in instances])
    swap = np.array(
        [[inst.first_swap_s(m) if inst.serves(m) else 0.0 for m in models] for inst in instances]
    )
    tau = np.array([tokens[g.id] for g in window])
    slack = np.array([g.deadline_s - now for g in window])
    rows = _constraints(window, instances, models, swap, slack, tau)
    weight = np.array([_weight(g, weights) for g in window])
    cost = np.zeros(n_var)
    cost[:n_w] = -weight
    cost[y0:] = swap.ravel() * (0.5 * weight.min() / (1.0 + swap.sum()))
    ub = np.ones(n_var)
    ub[s0:y0] = np.inf
    ub[y0:] = serves.ravel()
    integrality = np.zeros(n_var)
    integrality[y0:] = 1
    # scipy.optimize is slow to import: only runs that plan with the MILP pay for it.
    from scipy.optimize import Bounds, milp

    res = milp(
        cost,
        constraints=rows.constraint(n_var),
        integrality=integrality,
        bounds=Bounds(0.0, ub),
        options={"time_limit": time_limit_s, "mip_rel_gap": mip_rel_gap},
    )
    if res.x is None:
        return None
    x = np.asarray(res.x)
    y = x[y0:].reshape(n_i, n_m) > 0.5
    served = [models[int(np.argmax(row))] if row.any() else None for row in y]
    return [bool(v >= 0.5) for v in x[:n_w]], served, bool(res.status == 1)
