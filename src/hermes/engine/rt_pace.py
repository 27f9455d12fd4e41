"""The real-time pace of BROS (arXiv 2504.09590), as the BROS engine keeps it: each RT
request's next-token deadline (from its TTFT and TPOT SLOs) and the AIMD cap on how long an
iteration may take. Pure: time is an argument. docs/bros.md tells the design.

Deadlines. An RT request's first token is due `ttft_slo_s` after its arrival; once it has one,
token k + 1 is due `k * tpot_slo_s` after the first. A request that falls behind sees
negative slack and goes first.

The cap grows additively while RT deadlines hold and halves when one is missed (AIMD, as TCP
finds a link's capacity): it settles near the longest iteration that RT requests tolerate.
With no RT request in the engine, BE work is not capped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from hermes.engine.request import EngineRequest


@dataclass(frozen=True, slots=True)
class BrosOptions:
    """`urgent_iterations`: an RT request whose slack is under this many iterations goes
    before running BE work; one with more may be displaced by it. The cap is in units of the
    tightest TPOT SLO in the engine: it starts at `cap_start`, grows by `cap_increase` per
    iteration without a miss, is multiplied by `cap_backoff` on a miss, and stays within
    [`cap_min`, `cap_max`]. RT prefills are always urgent: a first token is what a user
    waits for."""

    urgent_iterations: float = 3.0
    slo_margin: float = 0.1  # aim this fraction of each SLO early, for what estimates miss
    # Waiting BE requests: first come first served (BROS), or by the shell's priority (a
    # ranking policy's order, as the simulator's applications carry).
    be_order: Literal["fcfs", "priority"] = "fcfs"
    cap_start: float = 1.0
    cap_increase: float = 0.01
    cap_backoff: float = 0.5
    cap_min: float = 0.2
    cap_max: float = 4.0

    def __post_init__(self) -> None:
        for name in ("urgent_iterations", "cap_start", "cap_increase", "cap_min", "cap_max"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise ValueError(f"BrosOptions.{name} must be finite and >= 0, got {v!r}")
        if self.be_order not in ("fcfs", "priority"):
            raise ValueError(
                f"BrosOptions.be_order must be fcfs or priority, got {self.be_order!r}"
            )
        if not 0 <= self.slo_margin < 1:
            raise ValueError(f"BrosOptions.slo_margin must be in [0, 1), got {self.slo_margin!r}")
        if not 0 < self.cap_backoff < 1:
            raise ValueError(f"BrosOptions.cap_backoff must be in (0, 1), got {self.cap_backoff!r}")
        if not 0 < self.cap_min <= self.cap_start <= self.cap_max:
            raise ValueError(
                "BrosOptions: need 0 < cap_min <= cap_start <= cap_max, got "
                f"{self.cap_min!r}, {self.cap_start!r}, {self.cap_max!r}"
            )


def next_deadline(req: EngineRequest, margin: float = 0.0) -> float:
    """When `req`'s next token is due (an RT request: both SLOs set), aiming `margin` (a
    fraction of each SLO) early."""
    ttft, tpot = req.ttft_slo_s, req.tpot_slo_s
    if ttft is None or tpot is None:
        raise ValueError(f"request {req.id!r} is not real-time: it has no TTFT and TPOT SLO")
    keep = 1.0 - margin
    if req.first_token_s is None:
        return req.arrival_s + ttft * keep
    return req.first_token_s + req.generated * tpot * keep


class AdaptiveCap:
    """The iteration-time cap, in units of a TPOT SLO (AIMD)."""

    __slots__ = ("options", "value")

    def __init__(self, options: BrosOptions) -> None:
        self.options = options
        self.value = options.cap_start

    def observe(self, missed: bool) -> None:
        o = self.options
        if missed:
            self.value = max(o.cap_min, self.value * o.cap_backoff)
        else:
            self.value = min(o.cap_max, self.value + o.cap_increase)
