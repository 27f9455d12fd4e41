"""Where a run goes next from a stage, given how many times it has visited that stage.

A Markov PDGraph leaves a stage with the same probabilities on every visit, so a loop's length
is geometric and an agent on its 20th step has the same remaining demand as one on its 2nd.
Measured agent episodes are narrower than that (react_alfw: p50 15 and p95 25 steps, where a
geometric loop of the same mean has 11 and 43). The graph therefore also counts, per source
stage, where runs went after their k-th visit of it; this module turns those counts into one
row of next-stage probabilities per visit number (an empirical hazard per visit count).

Rows need observations: a visit number that few runs reached borrows from the sparse tail of
visits pooled together, and a stage with few visit observations at all (a graph read from a
file written before visits were counted) uses the aggregate counts, as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from hermes.types import FloatArray

# A visit number needs this many observed departures before its own counts are used: below it,
# a hazard near 0.2 (a long loop's exit) would be off by 0.09 or more (one standard error), and
# noise in a late row moves every remainder sampled from it. From the first visit number with
# fewer (the sparse tail) on, visits share one row pooled over the tail (extended back to
# earlier visits until it holds this many); where even all visits together hold fewer, the
# aggregate counts are used. A pooled tail keeps the mean of what is left exact where it
# starts: its exit hazard is runs / departures, and 1 / hazard is their mean remaining visits.
MIN_VISIT_OBSERVATIONS = 20


@dataclass(frozen=True, slots=True)
class VisitTable:
    """Next-stage probabilities of one source stage by visit number.

    ``rows[k - 1]`` holds P(next = ``dsts[j]`` | the run is on its k-th visit) for k up to
    ``depth``; every later visit uses the last row.
    """

    dsts: tuple[str, ...]
    rows: FloatArray  # shape (depth, len(dsts)); each row sums to 1

    @property
    def depth(self) -> int:
        return int(self.rows.shape[0])

    def row(self, visit: int) -> FloatArray:
        if visit < 1:
            raise ValueError(f"visit must be >= 1, got {visit}")
        row: FloatArray = self.rows[min(visit, self.depth) - 1]
        return row

    def probabilities(self, visit: int) -> dict[str, float]:
        return {d: float(p) for d, p in zip(self.dsts, self.row(visit), strict=True) if p > 0}


def visit_table(
    dsts: Sequence[str],
    aggregate: Mapping[str, int],
    by_visit: Mapping[int, Mapping[str, int]],
    min_observations: int = MIN_VISIT_OBSERVATIONS,
) -> VisitTable:
    """The rows of one source stage from its aggregate counts and its counts per visit number
    (``by_visit[k][dst]``: departures to ``dst`` after the k-th visit). ``dsts`` fixes the
    column order and must cover every destination counted."""
    if min_observations < 1:
        raise ValueError(f"min_observations must be >= 1, got {min_observations}")
    col = {d: j for j, d in enumerate(dsts)}
    fallback = _row(aggregate, col)
    depth = max((k for k, c in by_visit.items() if sum(c.values()) > 0), default=0)
    if depth == 0 or fallback is None:
        return VisitTable(tuple(dsts), _single(fallback, len(dsts)))
    counts = np.zeros((depth, len(dsts)), dtype=np.float64)
    for k, c in by_visit.items():
        if k < 1:
            raise ValueError(f"visit numbers start at 1, got {k}")
        if k <= depth:
            for d, n in c.items():
                counts[k - 1, col[d]] += n
    seen = counts.sum(axis=1)
    tails = np.cumsum(seen[::-1])[::-1]  # tails[i]: departures after visits i + 1, i + 2, ...
    if tails[0] < min_observations:
        return VisitTable(tuple(dsts), _single(fallback, len(dsts)))
    sparse = np.flatnonzero(seen < min_observations)
    rows = counts / np.maximum(seen, 1.0)[:, None]
    if sparse.size:
        # Pool from the first sparse visit, or from the latest earlier one whose tail holds
        # enough (0-based indices).
        first = int(sparse[0])
        start = int(np.flatnonzero(tails[: first + 1] >= min_observations)[-1])
        tail = counts[start:].sum(axis=0)
        rows = np.vstack([rows[:start], tail / tail.sum()])
        depth = start + 1
    last = depth  # trim trailing rows equal to the one before: later visits repeat the last
    while last > 1 and np.array_equal(rows[last - 1], rows[last - 2]):
        last -= 1
    return VisitTable(tuple(dsts), np.ascontiguousarray(rows[:last]))


def _row(counts: Mapping[str, int], col: Mapping[str, int]) -> FloatArray | None:
    total = sum(counts.values())
    if total <= 0:
        return None
    row = np.zeros(len(col), dtype=np.float64)
    for d, n in counts.items():
        row[col[d]] += n / total
    return row


def _single(row: FloatArray | None, width: int) -> FloatArray:
    return (np.zeros((0, width)) if row is None else row[None, :]).astype(np.float64)
