"""QLM's waiting-time estimator: how long until a group in a virtual queue has drained.

A group of n requests whose outputs have mean μ and deviation σ (learned per group key) needs
about n·μ tokens, and n·μ + z·√n·σ with probability 1 − p when z is the normal quantile for a
violation probability p (the central limit theorem for the sum of n lengths). An instance
that decodes Θ tokens per second drains it in that many tokens over Θ. A group's drain time is
what the instance is already running (`busy_s`), every group ahead of it and itself, and a
model swap at every change of model along the way.

Swap costs come from the instance: `swap_s[m]` makes m active from where it is now (a warm
swap from CPU memory or a cold load from disk). A return to the model active now, once it was
swapped out, is a warm swap: the cheapest warm model's time, else the cheapest other one's.
A model missing from `swap_s` is one the instance cannot serve.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from hermes.policies.qlm.groups import GroupKey, LengthStats


@dataclass(frozen=True, slots=True)
class InstanceView:
    """One serving instance as the planner sees it. `throughput_tok_s` is the measured decode
    throughput Θ of the whole batch; `busy_s` the time to finish what already runs."""

    name: str
    active_model: str | None
    warm_models: frozenset[str]
    swap_s: Mapping[str, float]
    throughput_tok_s: float
    busy_s: float = 0.0
    # A return to the active model after it was swapped out (see the module docstring).
    return_s: float = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.throughput_tok_s) and self.throughput_tok_s > 0):
            raise ValueError(
                f"instance {self.name!r}: throughput_tok_s must be finite and > 0, "
                f"got {self.throughput_tok_s!r}"
            )
        if not (math.isfinite(self.busy_s) and self.busy_s >= 0):
            raise ValueError(f"instance {self.name!r}: busy_s must be >= 0, got {self.busy_s!r}")
        for model, s in self.swap_s.items():
            if not (math.isfinite(s) and s >= 0):
                raise ValueError(
                    f"instance {self.name!r}: swap_s[{model!r}] must be >= 0, got {s!r}"
                )
        others = {m: s for m, s in self.swap_s.items() if m != self.active_model}
        warm = [s for m, s in others.items() if m in self.warm_models]
        object.__setattr__(self, "return_s", min(warm or others.values(), default=0.0))

    def serves(self, model: str) -> bool:
        return model == self.active_model or model in self.swap_s

    def first_swap_s(self, model: str) -> float:
        """Time to make `model` active now (0 if it is)."""
        return 0.0 if model == self.active_model else self.swap_s[model]

    def later_swap_s(self, model: str) -> float:
        """Time to make `model` active after a change away from the model active now."""
        return self.return_s if model == self.active_model else self.swap_s[model]


@dataclass(frozen=True, slots=True)
class GroupView:
    """A queued group as the planner sees it: `size` waiting requests, the earliest
    `deadline_s` among them (absolute, on the caller's clock)."""

    id: int
    key: GroupKey
    size: int
    deadline_s: float

    @property
    def model(self) -> str:
        return self.key.model


def z_for(violation_probability: float) -> float:
    """The normal quantile z with P(Z > z) = `violation_probability`: a smaller probability
    budget buys a larger margin."""
    if not 0 < violation_probability < 1:
        raise ValueError(f"violation_probability must be in (0, 1), got {violation_probability!r}")
    # scipy.stats takes most of a second to import: only runs that use QLM pay for it.
    from scipy.stats import norm  # type: ignore[import-untyped]

    return float(norm.isf(violation_probability))  # = ppf(1 − p), exact for tiny p


def group_tokens(group: GroupView, stats: LengthStats, z: float) -> float:
    """n·μ + z·√n·σ, floored at 0 (a large negative z cannot make work negative)."""
    n = group.size
    return max(0.0, n * stats.mean(group.key) + z * math.sqrt(n) * stats.std(group.key))


def waiting_times(
    queue: Sequence[GroupView], instance: InstanceView, stats: LengthStats, z: float
) -> list[float]:
    """Seconds from now until each group of `queue` (in queue order) has drained on
    `instance`: busy time, then every group up to and including it, and swap time at each
    change of model."""
    return drain_times(
        queue, instance, [group_tokens(g, stats, z) / instance.throughput_tok_s for g in queue]
    )


def drain_times(
    queue: Sequence[GroupView], instance: InstanceView, service_s: Sequence[float]
) -> list[float]:
    """`waiting_times` with each group's service time given (the planner computes them once)."""
    t = instance.busy_s
    model = instance.active_model
    changed = False
    out: list[float] = []
    for g, s in zip(queue, service_s, strict=True):
        if g.model != model:
            t += instance.later_swap_s(g.model) if changed else instance.first_swap_s(g.model)
            model, changed = g.model, True
        t += s
        out.append(t)
    return out
