"""SLO classes: real-time (`rt`) calls ahead of best-effort (`be`) ones, with a floor under
best-effort's share so that a stream of real-time calls cannot starve them. Pure: the shells
ask, and carry out the answers.

- In a queue (`GrantShare`): the next grant goes to real-time while both classes wait, unless
  best-effort has had less than `be_min_share` of the last `window` grants. Within a class,
  calls keep the ranking policy's order.
- At the engine (`engine_rank`): a real-time call's rank is lowered by `rt_engine_lead_s`,
  more than any two ranks differ by, so that an engine with priorities serves it first too.
- A call's class (`class_of`): the one it names, else its model's default, else best-effort.
- Under the BROS bench's `vllm-priority` (`class_priority`): the engine priority each class
  gets when requests carry only their class.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from hermes.types import SloClass

SLO_CLASSES: tuple[SloClass, ...] = ("rt", "be")


@dataclass(frozen=True, slots=True)
class SloClassOptions:
    """`be_min_share`: the least share of grants best-effort calls get while both classes
    wait, kept over the last `window` grants. `rt_engine_lead_s`: subtracted from a real-time
    call's rank (seconds) for the engine's priority."""

    be_min_share: float = 0.1
    window: int = 100
    rt_engine_lead_s: float = 1e9

    def __post_init__(self) -> None:
        if not 0.0 <= self.be_min_share <= 1.0:
            raise ValueError(f"be_min_share must be in [0, 1], got {self.be_min_share!r}")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"window must be an integer >= 1, got {self.window!r}")
        if not (math.isfinite(self.rt_engine_lead_s) and self.rt_engine_lead_s > 0):
            raise ValueError(f"rt_engine_lead_s must be > 0, got {self.rt_engine_lead_s!r}")


def class_of(named: SloClass | None, model_default: SloClass | None) -> SloClass:
    """A call's class: the one it names, else its model's default, else best-effort."""
    return named or model_default or "be"


def engine_rank(rank: float, slo_class: SloClass, options: SloClassOptions) -> float:
    """The rank an engine with priorities gets (lower first): real-time calls lead."""
    return rank - options.rt_engine_lead_s if slo_class == "rt" else rank


def class_priority(policy: str, slo_class: str) -> float:
    """The engine priority a request of `slo_class` gets under `policy`: RT first under
    `vllm-priority`, everything equal (arrival order) otherwise."""
    return 1.0 if policy == "vllm-priority" and slo_class == "be" else 0.0


@dataclass(slots=True)
class GrantShare:
    """Which class the next grant goes to, from the classes of the last `window` grants."""

    options: SloClassOptions = field(default_factory=SloClassOptions)
    _recent: deque[bool] = field(init=False)  # True: best-effort
    _recent_be: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._recent = deque(maxlen=self.options.window)

    def next_class(self, rt_waiting: bool, be_waiting: bool) -> SloClass | None:
        """The class to grant next (None if neither waits): real-time, unless best-effort is
        owed its share."""
        if not (rt_waiting and be_waiting):
            return "rt" if rt_waiting else "be" if be_waiting else None
        owed = self._recent_be < self.options.be_min_share * (len(self._recent) + 1)
        return "be" if owed else "rt"

    def granted(self, slo_class: SloClass) -> None:
        """A call of `slo_class` got a grant."""
        be = slo_class == "be"
        if len(self._recent) == self._recent.maxlen and self._recent[0]:
            self._recent_be -= 1
        self._recent.append(be)
        self._recent_be += be

    @property
    def be_share(self) -> float:
        """Best-effort's share of the grants in the window (0 before any)."""
        return self._recent_be / len(self._recent) if self._recent else 0.0
