"""Workload mixes: which item (application type, model, trace) each of n requests is.

Pure: no I/O, no clock, no global random state; draws come only from the given
``numpy.random.Generator``. Items are taken in the mapping's iteration order, so the same
seed and the same mapping (same insertion order) give the same draw.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Integral, Real

import numpy as np
from numpy.typing import NDArray

__all__ = ["sample_mix", "weights_from_counts"]


def sample_mix(weights: Mapping[str, float], n: int, rng: np.random.Generator) -> list[str]:
    """``n`` item names drawn independently, each with probability proportional to its weight.

    Weights need not sum to one. A zero weight is allowed and that item is never drawn.
    """
    if isinstance(n, bool) or not isinstance(n, Integral):
        raise ValueError(f"n must be an integer, got {n!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    names = list(weights)
    w, total = _validated(weights, "weight")
    p = w / total
    cdf = np.cumsum(p)
    # Rounding can leave the cdf's top just under 1; pinning every entry from the last
    # positive weight onward to 1 keeps a trailing zero-weight item unreachable.
    cdf[int(np.flatnonzero(w)[-1]) :] = 1.0
    idx = np.searchsorted(cdf, rng.random(int(n)), side="right")
    return [names[i] for i in idx.tolist()]


def weights_from_counts(counts: Mapping[str, int]) -> dict[str, float]:
    """Observed counts turned into weights that sum to one (same keys, same order)."""
    for key, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, Integral):
            raise ValueError(f"count of {key!r} must be an integer, got {value!r}")
    c, total = _validated(counts, "count")
    return {key: float(v / total) for key, v in zip(counts, c.tolist(), strict=True)}


def _validated(values: Mapping[str, float], what: str) -> tuple[NDArray[np.float64], float]:
    """The values as an array, and their (positive, finite) total."""
    if not values:
        raise ValueError(f"no items: at least one {what} is needed")
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            raise ValueError(f"{what} of {key!r} must be a finite number, got {value!r}")
        if value < 0:
            raise ValueError(f"{what} of {key!r} is negative ({value!r})")
    floats = [float(v) for v in values.values()]
    total = sum(floats)  # Python floats: overflow gives inf, not a numpy RuntimeWarning
    if total == 0:
        raise ValueError(f"every {what} is zero: nothing can be drawn")
    if not math.isfinite(total):
        raise ValueError(f"the {what}s sum to {total}: too large to normalise")
    return np.array(floats, dtype=np.float64), total
