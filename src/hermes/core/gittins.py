"""The exact Gittins index of an empirical demand distribution.

For demand X with attained service a, the Gittins rank is

    G(a) = inf_{Δ>0}  E[min(X − a, Δ) | X > a]  /  P(X − a ≤ Δ | X > a)

and lower ranks are served first. For a distribution on finitely many support points the
numerator grows linearly in Δ between support points while the denominator is constant, so
the infimum is attained with Δ at a support point of X − a; we evaluate every one of them.

Many ranks at once (``gittins_many``) use geometry instead. With j the first support point
above a, the candidate ratio for Δ = x_k − a is the slope from P = (W_j, C_j + a·S_j) to
Q_k = (W_{k+1}, q_k) (names as in ``DemandDistribution.__init__``), and every Q_k, k >= j,
lies to the right of P. The least slope from such a point is attained on the lower convex
hull of {Q_k : k >= j}, where the slopes from P fall and then rise along the hull: the
minimum is the tangent from P, which binary lifting along the hull finds in O(log n) numpy
operations for all queries together. The ratio is then evaluated exactly as ``gittins`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray


@dataclass(frozen=True, slots=True)
class RankTables:
    """What a batched rank reads, indexed by position k in the sorted support.

    Tables of several distributions may be laid end to end (``RankPool`` does), their jumps
    staying local to each (see ``tangent_ranks``).
    """

    support: NDArray[np.float64]  # x_k
    base_w: NDArray[np.float64]  # W_k: P's abscissa when k is the first support point above a
    base_c: NDArray[np.float64]  # C_k
    surviving: NDArray[np.float64]  # S_k = total weight − W_k
    hull_w: NDArray[np.float64]  # W_{k+1}: Q_k's abscissa
    hull_q: NDArray[np.float64]  # q_k: Q_k's ordinate
    edge: NDArray[np.float64]  # slope from Q_k to its successor on the hull of {Q_i : i >= k}
    jump: NDArray[np.intp]  # jump[l, k]: the 2^l-th successor of k on that hull (saturating)


def suffix_hull_successors(w: NDArray[np.float64], q: NDArray[np.float64]) -> NDArray[np.intp]:
    """For points (w_k, q_k) with w strictly increasing, the vertex after k on the lower convex
    hull of the points k, k+1, ..., n−1; the last point is its own successor.

    The hulls of all suffixes form a tree: adding point k on the left of the hull of k+1..n−1
    pops the vertices it makes non-convex (Andrew's monotone chain run from the right), so
    all n successors cost O(n) in total.
    """
    n = w.size
    succ = np.empty(n, dtype=np.intp)
    succ[-1] = n - 1
    wl, ql = w.tolist(), q.tolist()  # Python floats: this loop is scalar work
    hull = [n - 1]
    for k in range(n - 2, -1, -1):
        wk, qk = wl[k], ql[k]
        while len(hull) >= 2:
            a, b = hull[-1], hull[-2]
            # Keep a only if it lies strictly below the chord from k to b; collinear vertices
            # go, which keeps the slopes along each hull strictly increasing.
            if (wl[a] - wk) * (ql[b] - qk) - (ql[a] - qk) * (wl[b] - wk) > 0:
                break
            hull.pop()
        succ[k] = hull[-1]
        hull.append(k)
    return succ


def tangent_ranks(
    t: RankTables,
    j: NDArray[np.intp],
    attained: NDArray[np.float64],
    start: NDArray[np.intp] | None = None,
) -> NDArray[np.float64]:
    """Ranks at ``attained[i]`` given ``j[i]``, the index in ``t`` of the first support point
    above it (which must exist). When ``t`` holds several distributions end to end with jumps
    local to each, ``start[i]`` is where the distribution of query i starts."""
    px = t.base_w[j]
    py = t.base_c[j] + attained * t.surviving[j]
    hull_w, hull_q, edge = t.hull_w, t.hull_q, t.edge
    # Along the hull the slope from P to vertex v falls while the edge leaving v is less steep
    # than that slope, and rises from the first vertex where it is not; that vertex, the
    # tangent, is the minimum. Lift v to the last vertex still falling, then step once.
    falling = edge[j] < (hull_q[j] - py) / (hull_w[j] - px)
    v = j
    for level in t.jump[::-1]:
        u = level[v] if start is None else start + level[v]
        v = np.where(edge[u] < (hull_q[u] - py) / (hull_w[u] - px), u, v)
    k = np.where(falling, t.jump[0][v] if start is None else start + t.jump[0][v], j)
    # The same operations as ``gittins``, so that equal arguments give bit-equal ranks.
    return (hull_q[k] - py) / (hull_w[k] - px)


class DemandDistribution:
    """Weighted support points of a demand, sorted once so that each rank costs O(n) numpy."""

    __slots__ = ("_cum_w", "_cum_wx", "_q", "_tables", "_total_w", "_x")

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
        self._tables: RankTables | None = None  # built on the first batched rank

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

    def gittins_many(self, attained: ArrayLike) -> NDArray[np.float64]:
        """``gittins`` at each of ``attained`` (any shape), in O(log n) numpy calls in all."""
        a = np.asarray(attained, dtype=np.float64)
        flat = a.ravel()
        past = ~(flat < self._x[-1])  # NaN included, as in ``gittins``
        # Past the support the rank is 0; ranking those at −inf instead keeps them in bounds.
        flat = np.where(past, -np.inf, flat)
        j = np.searchsorted(self._x, flat, side="right")
        out = tangent_ranks(self.rank_tables(), j, flat)
        out[past] = 0.0
        return out.reshape(a.shape)

    def rank_tables(self) -> RankTables:
        """The tables ``gittins_many`` reads, built on first use: the hulls in O(n) Python steps,
        then O(log n) jump levels."""
        if self._tables is None:
            w, q = self._cum_w[1:], self._q
            succ = suffix_hull_successors(w, q)
            jump = [succ]
            # Double until a level jumps every point to the last; that level is not needed.
            while np.any(jump[-1] != succ.size - 1):
                jump.append(jump[-1][jump[-1]])
            if len(jump) > 1:
                jump.pop()
            edge = np.full(succ.size, np.inf)
            edge[:-1] = (q[succ[:-1]] - q[:-1]) / (w[succ[:-1]] - w[:-1])
            self._tables = RankTables(
                support=self._x,
                base_w=self._cum_w[:-1],
                base_c=self._cum_wx[:-1],
                surviving=self._total_w - self._cum_w[:-1],
                hull_w=w,
                hull_q=q,
                edge=edge,
                jump=np.array(jump, dtype=np.intp),
            )
        return self._tables


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
