"""QLM's options, and the planner they configure: the one both shells plan with (the
simulator's `qlm` policies through `policies.registry.make_queue_policy`, the gateway's
model swaps directly)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import Literal

from hermes.policies.qlm.estimator import GroupView, InstanceView, z_for
from hermes.policies.qlm.groups import Grouper, LengthStats
from hermes.policies.qlm.planner import MilpSettings, Plan, plan, plan_edf


@dataclass(frozen=True, slots=True)
class QLMOptions:
    """`violation_probability`: the chance a group's estimate may be exceeded (sets z).
    `time_limit_s` bounds HiGHS alone; a planning round adds ~15 ms of Python around it, so the
    default keeps a round of 1,000 groups on 8 instances within 50 ms. `pull_threshold`: the
    most requests a policy lets run on an instance at once. `planner`: "milp" (qlm) or "edf"
    (qlm-noplan). `prior_output_*`: output lengths assumed before any are observed.
    `class_weights`: how much a violation of each SLO class counts (1 if absent)."""

    violation_probability: float = 0.05
    time_limit_s: float = 0.03
    max_group_size: int = 64
    group_window_s: float = 2.0
    pull_threshold: int = 32
    planner: Literal["milp", "edf"] = "milp"
    prior_output_mean: float = 256.0
    prior_output_std: float = 128.0
    milp_window: int = 192
    mip_rel_gap: float = 0.01
    class_weights: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        for name in ("max_group_size", "pull_threshold", "milp_window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Integral):
                raise ValueError(f"QLMOptions.{name} must be an integer, got {value!r}")
        z_for(self.violation_probability)  # validates it
        if not (math.isfinite(self.time_limit_s) and self.time_limit_s > 0):
            raise ValueError(f"QLMOptions.time_limit_s must be > 0, got {self.time_limit_s!r}")
        if self.pull_threshold < 1:
            raise ValueError(f"QLMOptions.pull_threshold must be >= 1, got {self.pull_threshold!r}")
        if self.planner not in ("milp", "edf"):
            raise ValueError(f"QLMOptions.planner must be 'milp' or 'edf', got {self.planner!r}")
        names = [name for name, _ in self.class_weights]
        if len(set(names)) != len(names):
            raise ValueError(f"QLMOptions.class_weights names a class twice: {names}")
        for name, w in self.class_weights:
            if not (math.isfinite(w) and w > 0):
                raise ValueError(f"QLMOptions.class_weights[{name!r}] must be > 0, got {w!r}")
        # The rest are checked where they are used, at construction.
        Grouper(self.max_group_size, self.group_window_s)
        LengthStats(self.prior_output_mean, self.prior_output_std)
        MilpSettings(self.milp_window, self.mip_rel_gap)


class QLMPlanner:
    """A planning round as `options` configure it: output lengths learned as requests finish
    (`stats`, from the prior), the margin z, the MILP's settings and the class weights; EDF
    with the MILP when EDF predicts violations (`planner="milp"`), or EDF alone."""

    def __init__(self, options: QLMOptions | None = None) -> None:
        self.options = o = options or QLMOptions()
        self.stats = LengthStats(o.prior_output_mean, o.prior_output_std)
        self.z = z_for(o.violation_probability)
        self.settings = MilpSettings(o.milp_window, o.mip_rel_gap)
        self.weights: Mapping[str, float] | None = dict(o.class_weights) or None

    def plan(
        self, groups: Sequence[GroupView], instances: Sequence[InstanceView], now: float
    ) -> Plan:
        o = self.options
        if o.planner == "milp":
            return plan(
                groups,
                instances,
                now,
                self.stats,
                self.z,
                o.time_limit_s,
                self.weights,
                self.settings,
            )
        return plan_edf(groups, instances, now, self.stats, self.z, self.weights)
