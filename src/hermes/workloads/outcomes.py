"""Applications' outcomes, however they ran (simulated, or replayed through a live gateway),
and their summary: completion-time statistics and the deadline satisfaction rate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class Outcome:
    """One application's fate in one run."""

    app: str
    act_s: float | None  # None: failed or never finished
    deadline_s: float | None  # relative to arrival
    cold_wait_s: float = 0.0  # cold-start wait on its critical path


def summary(outcomes: Sequence[Outcome]) -> dict[str, float | int | None]:
    """apps, failed, ACT mean and percentiles (inverted CDF, as every hermes report), and the
    deadline satisfaction rate (None when no application has a deadline)."""
    acts = np.array([o.act_s for o in outcomes if o.act_s is not None], dtype=np.float64)
    out: dict[str, float | int | None] = {
        "apps": len(outcomes),
        "failed": sum(o.act_s is None for o in outcomes),
    }
    if acts.size:
        p50, p95, p99 = np.percentile(acts, (50, 95, 99), method="inverted_cdf")
        out.update(act_mean=float(acts.mean()), act_p50=float(p50), act_p95=float(p95))
        out["act_p99"] = float(p99)
    else:
        out.update(act_mean=None, act_p50=None, act_p95=None, act_p99=None)
    with_ddl = [o for o in outcomes if o.deadline_s is not None]
    met = sum(
        1
        for o in with_ddl
        if o.act_s is not None and o.deadline_s is not None and o.act_s <= o.deadline_s
    )
    out["dsr"] = met / len(with_ddl) if with_ddl else None
    return out
