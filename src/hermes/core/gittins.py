"""The exact Gittins index of an empirical demand distribution.

For demand X with attained service a, the Gittins rank is

    G(a) = inf_{Δ>0}  E[min(X − a, Δ) | X > a]  /  P(X − a ≤ Δ | X > a)

and lower ranks are served first. For a distribution on finitely many support points the
numerator grows linearly in Δ between support points while the denominator is constant, so
the infimum is attained with Δ at a support point of X − a; we evaluate every one of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray


class DemandDistribution:
    """Weighted support points of a demand, sorted once so that each rank costs O(n) numpy."""

    __slots__ = ("_cum_w", "_cum_wx", "_q", "_total_w", "_x")

    def __init__(self, samples: ArrayLike, weights: ArrayLike | None = None) -> None:
        x = np.asarray(samples, dtype=np.float64).ravel()
        if x.size == 0:
            raise ValueError("a demand distribution needs at least one sample")
        if not np.all(np.isfinite(x)):
            raise ValueError("demand samples must be finite")
        if weights is None:
            w = np.ones_like(x)
        else:
            w = np.asarray(weights, dtype=np.float64).ravel()
            if w.shape != x.shape:
                raise ValueError(f"{w.size} weights for {x.size} samples")
            if not np.all(np.isfinite(w)) or np.any(w < 0) or not np.any(w > 0):
                raise ValueError("weights must be finite, non-negative and not all zero")
            keep = w > 0
            x, w = x[keep], w[keep]
        order = np.argsort(x, kind="stable")
        self._x: NDArray[np.float64] = x[order]
        w = w[order]
        # Prefix sums with a leading zero: sums over [j, k] are cum[k + 1] - cum[j].
        self._cum_w: NDArray[np.float64] = np.concatenate(([0.0], np.cumsum(w)))
        self._cum_wx: NDArray[np.float64] = np.concatenate(([0.0], np.cumsum(w * self._x)))
        self._total_w = float(self._cum_w[-1])
        # With Δ = x_k − a and j the first support point above a, the defining ratio times the
        # surviving weight is  Σ_{j<=i<=k} w_i (x_i − a) + (x_k − a) Σ_{i>k} w_i , which
        # rearranges to  q_k − (cum_wx_j + a · surviving weight)  with q_k independent of a
        # and j; the denominator is  cum_w_{k+1} − cum_w_j . Two vector operations a rank.
        self._q: NDArray[np.float64] = self._cum_wx[1:] + self._x * (
            self._total_w - self._cum_w[1:]
        )

    @property
    def support(self) -> NDArray[np.float64]:
        return self._x

    def mean_remaining(self, attained: float = 0.0) -> float:
        """E[X − a | X > a]; 0 when no support point exceeds a."""
        j = int(np.searchsorted(self._x, attained, side="right"))
        w = self._total_w - self._cum_w[j]
        if w <= 0:
            return 0.0
        return float((self._cum_wx[-1] - self._cum_wx[j]) / w - attained)

    def survival(self, attained: float) -> float:
        """P(X > a)."""
        j = int(np.searchsorted(self._x, attained, side="right"))
        return float((self._total_w - self._cum_w[j]) / self._total_w)

    def gittins(self, attained: float = 0.0) -> float:
        """The Gittins rank at attained service ``attained`` (lower is served first).

        When no support point exceeds ``attained`` the demand is past every observation; the
        rank is 0, the limit of the rank as attained service approaches the largest sample.
        """
        j = int(np.searchsorted(self._x, attained, side="right"))
        if j >= self._x.size:
            return 0.0
        surviving = self._total_w - self._cum_w[j]
        num = self._q[j:] - (self._cum_wx[j] + attained * surviving)
        return float(np.min(num / (self._cum_w[j + 1 :] - self._cum_w[j])))


def gittins_index(
    samples: Sequence[float] | ArrayLike,
    attained: float = 0.0,
    weights: Sequence[float] | ArrayLike | None = None,
) -> float:
    """Exact Gittins rank of the empirical distribution of ``samples`` at ``attained`` service.

    >>> gittins_index([1, 2, 10])
    2.5
    """
    return DemandDistribution(samples, weights).gittins(attained)
