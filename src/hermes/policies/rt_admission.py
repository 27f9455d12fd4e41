"""How many best-effort (BE) calls a gateway may hold in an engine it cannot change, so that
the real-time (RT) calls beside them keep their time per output token (issue 15, item 5).

An unmodified vLLM engine puts every running sequence into every iteration: the more BE
calls it holds, the longer its iterations, and an RT call's time per token is the iteration's
length. The gateway sees that time in the RT calls' streamed tokens. `RtPaceLimit` keeps the
BE limit as TCP keeps a window (AIMD): while RT tokens come faster than `target` of their TPOT
SLO it admits more BE calls (the limit grows by `increase` of itself, at least one), and when
they come slower it cuts the limit by `backoff`. Lowering it preempts nothing: the shell only
stops sending BE calls until enough finish. With no RT token in an interval there is nothing
to protect and the limit grows. Pure: the shell passes its time and what it measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RtPaceOptions:
    """`target`: the share of the TPOT SLO RT tokens aim at; `interval_s`: how often the limit
    moves (long enough to hold some RT tokens, short enough to follow bursts); the limit stays
    within [`min_limit`, `max_limit`] and starts at `max_limit` (what the engine would take)."""

    target: float = 0.9
    increase: float = 0.05
    backoff: float = 0.9
    interval_s: float = 0.5
    min_limit: int = 1
    max_limit: int = 256

    def __post_init__(self) -> None:
        if not 0 < self.target <= 1:
            raise ValueError(f"RtPaceOptions.target must be in (0, 1], got {self.target!r}")
        if not (math.isfinite(self.increase) and self.increase >= 0):
            raise ValueError(f"RtPaceOptions.increase must be >= 0, got {self.increase!r}")
        if not 0 < self.backoff < 1:
            raise ValueError(f"RtPaceOptions.backoff must be in (0, 1), got {self.backoff!r}")
        if not (math.isfinite(self.interval_s) and self.interval_s > 0):
            raise ValueError(f"RtPaceOptions.interval_s must be > 0, got {self.interval_s!r}")
        if not 1 <= self.min_limit <= self.max_limit:
            raise ValueError(
                "RtPaceOptions: need 1 <= min_limit <= max_limit, got "
                f"{self.min_limit!r}, {self.max_limit!r}"
            )


class RtPaceLimit:
    """The BE limit of one upstream, moved once per interval by RT's measured pace."""

    __slots__ = ("_next_s", "_token_s", "_tokens", "cuts", "limit", "options")

    def __init__(self, options: RtPaceOptions | None = None) -> None:
        self.options = o = options or RtPaceOptions()
        self.limit = o.max_limit
        self.cuts = 0
        self._next_s: float | None = None
        self._tokens = 0
        self._token_s = 0.0

    def observe(self, now: float, *, rt_tokens: int, rt_token_s: float, tpot_slo_s: float) -> int:
        """RT calls made `rt_tokens` more tokens, which took `rt_token_s` seconds summed over
        the calls (each call's time from its previous token); their TPOT SLO is `tpot_slo_s`.
        Returns the BE limit."""
        if rt_tokens < 0 or not (math.isfinite(rt_token_s) and rt_token_s >= 0):
            raise ValueError(
                f"RtPaceLimit.observe: need rt_tokens >= 0 and rt_token_s >= 0, got "
                f"{rt_tokens!r}, {rt_token_s!r}"
            )
        if not (math.isfinite(tpot_slo_s) and tpot_slo_s > 0):
            raise ValueError(f"RtPaceLimit.observe: tpot_slo_s must be > 0, got {tpot_slo_s!r}")
        o = self.options
        self._tokens += rt_tokens
        self._token_s += rt_token_s
        if self._next_s is None:
            self._next_s = now + o.interval_s
        if now < self._next_s:
            return self.limit
        slow = self._tokens > 0 and self._token_s / self._tokens > o.target * tpot_slo_s
        if slow:
            self.limit = max(o.min_limit, math.floor(self.limit * o.backoff))
            self.cuts += 1
        else:
            self.limit = min(o.max_limit, self.limit + max(1, math.floor(self.limit * o.increase)))
        self._tokens, self._token_s = 0, 0.0
        self._next_s = now + o.interval_s
        return self.limit
