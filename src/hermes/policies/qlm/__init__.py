"""QLM (arXiv 2407.00047): multi-model queue management. Requests are grouped (`groups`),
groups are queued per instance in an order planned from estimated waiting times (`estimator`,
`planner`), and the plan becomes serving operations (`operations`); `policy` ties them into
the policies the shells call, with the baselines QLM is measured against; `options` holds
`QLMOptions` and the `QLMPlanner` they configure, which both shells plan with."""

from hermes.policies.qlm.estimator import (
    GroupView,
    InstanceView,
    drain_times,
    group_tokens,
    waiting_times,
    z_for,
)
from hermes.policies.qlm.groups import (
    Grouper,
    GroupKey,
    LengthStats,
    Member,
    RequestGroup,
    length_bucket,
)
from hermes.policies.qlm.operations import (
    Evict,
    MoveGroup,
    Operation,
    Pull,
    RunningView,
    ScaleOut,
    SwapKV,
    SwapModel,
    moves,
    operations_for,
)
from hermes.policies.qlm.options import QLMOptions, QLMPlanner
from hermes.policies.qlm.planner import MilpSettings, Plan, edf_order, plan, plan_edf, plan_milp
from hermes.policies.qlm.policy import (
    EdfPolicy,
    FcfsPerModel,
    FcfsShared,
    QLMPolicy,
    QueuePolicy,
)

__all__ = [
    "EdfPolicy",
    "Evict",
    "FcfsPerModel",
    "FcfsShared",
    "GroupKey",
    "GroupView",
    "Grouper",
    "InstanceView",
    "LengthStats",
    "Member",
    "MilpSettings",
    "MoveGroup",
    "Operation",
    "Plan",
    "Pull",
    "QLMOptions",
    "QLMPlanner",
    "QLMPolicy",
    "QueuePolicy",
    "RequestGroup",
    "RunningView",
    "ScaleOut",
    "SwapKV",
    "SwapModel",
    "drain_times",
    "edf_order",
    "group_tokens",
    "length_bucket",
    "moves",
    "operations_for",
    "plan",
    "plan_edf",
    "plan_milp",
    "waiting_times",
    "z_for",
]
