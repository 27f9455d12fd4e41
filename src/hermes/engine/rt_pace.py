"""The real-time pace of BROS (arXiv 2504.09590), as the BROS engine keeps it: each RT
request's next-token deadline (from its TTFT and TPOT SLOs) and the AIMD cap on how long an
iteration may take. Pure: time is an argument. docs/bros.md tells the design.

Deadlines. An RT request's first token is due `ttft_slo_s` after its arrival; once it has one,
token k + 1 is due `k * tpot_slo_s` after the first. A request that falls behind sees
negative slack and goes first.

The cap grows additively while RT deadlines hold and halves when one is missed (AIMD, as TCP
finds a link's capacity): it settles near the longest iteration that RT requests tolerate.
With no RT request in the engine, BE work is not capped.

The margin. RT tokens ride every iteration, so RT's pace is the iteration's length, and
aiming a fraction `m` of the TPOT SLO early cuts RT latency by that fraction. Its price is
more iterations per second, each paying the engine's fixed cost `o` (an iteration of one
decode): over a second, `(o / tpot) * m / (1 - m)` more of the GPU's time. BE work pays it,
so it hurts BE throughput in proportion to the share of the engine BE holds. `AdaptiveMargin`
watches that share online (the BE tokens among all tokens of recent iterations) and aims as
early as costs BE at most `margin_budget` of it: a light RT load (BE holds most of the engine)
gets fast RT tokens for little, a heavy one keeps RT near its SLO and BE its throughput.
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
    # Aim this fraction of each SLO early; None: adapt it online (`AdaptiveMargin`) within
    # [margin_min, margin_max], costing BE at most `margin_budget` of its share of the engine.
    slo_margin: float | None = None
    margin_min: float = 0.1
    margin_max: float = 0.5
    margin_budget: float = 0.15
    margin_memory: float = 200.0  # iterations the BE share is averaged over (EWMA)
    # Waiting BE requests: first come first served (BROS), or by the shell's priority (a
    # ranking policy's order, as the simulator's applications carry).
    be_order: Literal["fcfs", "priority"] = "fcfs"
    cap_start: float = 1.0
    cap_increase: float = 0.01
    cap_backoff: float = 0.5
    cap_min: float = 1.0  # below the TPOT SLO a cap only adds iterations: deadlines pace RT
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
        if self.slo_margin is not None and not 0 <= self.slo_margin < 1:
            raise ValueError(f"BrosOptions.slo_margin must be in [0, 1), got {self.slo_margin!r}")
        if not 0 <= self.margin_min <= self.margin_max < 1:
            raise ValueError(
                "BrosOptions: need 0 <= margin_min <= margin_max < 1, got "
                f"{self.margin_min!r}, {self.margin_max!r}"
            )
        if not (math.isfinite(self.margin_budget) and self.margin_budget >= 0):
            raise ValueError(
                f"BrosOptions.margin_budget must be finite and >= 0, got {self.margin_budget!r}"
            )
        if not (math.isfinite(self.margin_memory) and self.margin_memory >= 1):
            raise ValueError(
                f"BrosOptions.margin_memory must be finite and >= 1, got {self.margin_memory!r}"
            )
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


class AdaptiveMargin:
    """How early RT tokens are aimed (a fraction of their SLO): fixed (`slo_margin` set) or
    adapted to the BE share of the engine (module docstring). `overhead_s`: the engine's
    fixed cost of an iteration (one decode alone)."""

    __slots__ = ("_weight", "be_share", "options", "overhead_s", "value")

    def __init__(self, options: BrosOptions, overhead_s: float) -> None:
        if not (math.isfinite(overhead_s) and overhead_s > 0):
            raise ValueError(f"AdaptiveMargin: overhead_s must be > 0, got {overhead_s!r}")
        self.options = options
        self.overhead_s = overhead_s
        self._weight = 1.0 / options.margin_memory
        self.be_share = 1.0  # no RT seen yet: BE holds the engine
        fixed = options.slo_margin
        self.value = options.margin_min if fixed is None else fixed

    def observe(self, be_tokens: int, tokens: int, tpot_s: float | None) -> float:
        """One iteration of `tokens` tokens, `be_tokens` of them BE, under the tightest
        TPOT SLO `tpot_s` (None: no RT seen); the margin for the next iterations."""
        o = self.options
        if o.slo_margin is not None or tokens <= 0 or tpot_s is None:
            return self.value
        self.be_share += self._weight * (be_tokens / tokens - self.be_share)
        # Extra fixed cost (o / tpot) * m / (1 - m) <= budget * be_share, solved for m.
        x = o.margin_budget * self.be_share * tpot_s / self.overhead_s
        self.value = min(o.margin_max, max(o.margin_min, x / (1.0 + x)))
        return self.value
