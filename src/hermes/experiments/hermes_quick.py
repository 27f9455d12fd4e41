"""`hermes bench hermes --quick`: every experiment of the Hermes paper at a size that takes
about a minute rather than a quarter of an hour: fewer applications, one load, one workload
draw, fewer deadline factors, keep-alive TTLs and tool pool sizes. Its figures are noisier than
the full run's (one draw of 60 applications) and its results say `"quick": true`."""

from __future__ import annotations

from typing import Any

QUICK: dict[str, Any] = {
    # kv's nine runs are of a fixed size (100 applications each): a quick run leaves it out
    # unless --experiments names it.
    "experiments": ("load", "deadlines", "prewarm", "ablation", "overhead", "tools"),
    # The batch-limited engine, where a queue forms and the order of service matters.
    "batch_limits": (8,),
    # A fifth of the applications at five times the intensity: the full run's arrival rate
    # (200 applications at intensity 3), so that a queue forms as it does there.
    "apps": 40,
    "intensities": (15.0,),
    "headline_intensity": 15.0,
    "tools_intensity": 150.0,
    "workloads": 1,
    "training_runs": 100,
    "deadline_factors": (1.5,),
    "keepalive_ttls_s": (1.0, 60.0),
    "overhead_apps": (1, 100, 1000),
    "tools_instances": (1,),
}


def quick_overrides(given: dict[str, Any]) -> dict[str, Any]:
    """The quick size under what the command line gave (which wins): the `PaperSettings`
    overrides of a quick run."""
    out = dict(QUICK)
    if "intensities" in given and "headline_intensity" not in given:
        out.pop("headline_intensity")
    return {**out, **given}
