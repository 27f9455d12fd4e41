"""Request groups (QLM, arXiv 2407.00047): requests that share a model, an SLO class and a
prompt-length bucket queue together, so the planner orders a few hundred groups instead of
many thousands of requests, and a group's output length is predictable from its peers'.

A key's groups are FIFO: a group takes new members until it holds `max_group_size` of them or
its first member has waited `group_window_s`; then the key's next arrival opens a new group.
Groups therefore stay small enough to place one at a time, and a late arrival never jumps
ahead of an earlier one of the same key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True, order=True)
class GroupKey:
    """What a group's members share. `length_bucket` is `length_bucket(prompt_tokens)`."""

    model: str
    slo_class: str
    length_bucket: int


def length_bucket(prompt_tokens: int) -> int:
    """⌊log2 prompt_tokens⌋ (0 for 0 or 1 token): prompts within a factor of two of each
    other share a bucket, which is as finely as output lengths are predictable from them."""
    if prompt_tokens < 0:
        raise ValueError(f"prompt_tokens must be >= 0, got {prompt_tokens!r}")
    return max(0, prompt_tokens.bit_length() - 1)


class LengthStats:
    """Output-length mean and deviation per key, learned online (Welford's update, exact and
    stable in one pass). A key with fewer than two observations uses the prior deviation, and
    one with none the prior mean too: one sample says nothing about spread."""

    __slots__ = ("_moments", "prior_mean", "prior_std")

    def __init__(self, prior_mean: float, prior_std: float) -> None:
        if not (math.isfinite(prior_mean) and prior_mean > 0):
            raise ValueError(f"LengthStats: prior_mean must be finite and > 0, got {prior_mean!r}")
        if not (math.isfinite(prior_std) and prior_std >= 0):
            raise ValueError(f"LengthStats: prior_std must be finite and >= 0, got {prior_std!r}")
        self.prior_mean = float(prior_mean)
        self.prior_std = float(prior_std)
        self._moments: dict[GroupKey, list[float]] = {}  # key -> [count, mean, M2]

    def observe(self, key: GroupKey, output_tokens: float) -> None:
        if not (math.isfinite(output_tokens) and output_tokens >= 0):
            raise ValueError(f"output_tokens must be finite and >= 0, got {output_tokens!r}")
        m = self._moments.setdefault(key, [0.0, 0.0, 0.0])
        m[0] += 1.0
        delta = output_tokens - m[1]
        m[1] += delta / m[0]
        m[2] += delta * (output_tokens - m[1])

    def count(self, key: GroupKey) -> int:
        m = self._moments.get(key)
        return 0 if m is None else int(m[0])

    def mean(self, key: GroupKey) -> float:
        m = self._moments.get(key)
        return self.prior_mean if m is None else m[1]

    def std(self, key: GroupKey) -> float:
        """The sample deviation (n − 1 in the denominator)."""
        m = self._moments.get(key)
        if m is None or m[0] < 2:
            return self.prior_std
        return math.sqrt(max(0.0, m[2] / (m[0] - 1.0)))


@dataclass(frozen=True, slots=True)
class Member:
    request_id: str
    arrival_s: float
    deadline_s: float


@dataclass(slots=True, eq=False)
class RequestGroup:
    """A group's waiting members in arrival order; pulled requests leave from the front."""

    id: int
    key: GroupKey
    opened_s: float
    members: list[Member] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def deadline_s(self) -> float:
        """The earliest deadline among the members still waiting."""
        return min(m.deadline_s for m in self.members)


class Grouper:
    """Assigns arriving requests to groups and hands out their members when pulled. Group ids
    count up from 0 per grouper, so the same arrivals give the same ids."""

    __slots__ = ("_next_id", "_open", "group_window_s", "groups", "max_group_size")

    def __init__(self, max_group_size: int, group_window_s: float) -> None:
        if max_group_size < 1:
            raise ValueError(f"Grouper: max_group_size must be >= 1, got {max_group_size!r}")
        if not (math.isfinite(group_window_s) and group_window_s >= 0):
            raise ValueError(
                f"Grouper: group_window_s must be finite and >= 0, got {group_window_s!r}"
            )
        self.max_group_size = max_group_size
        self.group_window_s = group_window_s
        self.groups: dict[int, RequestGroup] = {}  # live groups, oldest first
        self._open: dict[GroupKey, RequestGroup] = {}
        self._next_id = 0

    def add(
        self,
        request_id: str,
        model: str,
        slo_class: str,
        prompt_tokens: int,
        arrival_s: float,
        slo_s: float,
    ) -> RequestGroup:
        """Put the request in its key's open group (opening one if needed); returns the group."""
        if not (math.isfinite(slo_s) and slo_s > 0):
            raise ValueError(f"request {request_id!r}: slo_s must be finite and > 0, got {slo_s!r}")
        key = GroupKey(model, slo_class, length_bucket(prompt_tokens))
        group = self._open.get(key)
        if (
            group is None
            or group.size >= self.max_group_size
            or arrival_s - group.opened_s > self.group_window_s
        ):
            group = RequestGroup(self._next_id, key, arrival_s)
            self._next_id += 1
            self.groups[group.id] = group
            self._open[key] = group
        group.members.append(Member(request_id, arrival_s, arrival_s + slo_s))
        return group

    def take(self, group_id: int, count: int) -> list[Member]:
        """Remove and return the group's first `count` members; a group left empty is gone."""
        group = self.groups[group_id]
        taken, group.members = group.members[:count], group.members[count:]
        if not group.members:
            del self.groups[group_id]
            if self._open.get(group.key) is group:
                del self._open[group.key]
        return taken
