"""Online refinement: condition later stages on what earlier stages of this application showed.

Across the runs in a graph's window we correlate, for every ordered pair of stages (A, B) where
A always finishes before B starts, A's calls or tokens with B's calls or tokens. Where
|Pearson ρ| exceeds the graph's threshold, an application that has finished A with value v
draws B's demand only from the runs whose A was nearest to v. In factool_kbqa the number of
claims fixes the fan-out of both ``generate_queries`` and ``verifies``, so ρ = 1 and the
refined fan-out of ``verifies`` is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hermes.core.pdgraph import PDGraph, StageFeatures, stage_features
from hermes.core.runs import Stage

FEATURES = ("calls", "tokens")
MIN_RUNS = 8  # fewer shared runs than this give a correlation too noisy to act on


@dataclass(frozen=True, slots=True)
class Correlation:
    source: str
    target: str
    source_feature: str
    target_feature: str
    rho: float
    runs: int


def _value(f: StageFeatures, feature: str) -> int:
    return f.calls if feature == "calls" else f.tokens


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    sx, sy = float(x.std()), float(y.std())
    if sx == 0.0 or sy == 0.0:
        return 0.0  # a constant feature predicts nothing
    return float(np.mean((x - x.mean()) * (y - y.mean())) / (sx * sy))


def correlations(graph: PDGraph) -> dict[str, list[Correlation]]:
    """Per target stage, the correlated earlier stages, strongest first."""
    names = sorted(graph.nodes)
    out: dict[str, list[Correlation]] = {}
    for a in names:
        for b in names:
            if a == b:
                continue
            shared = [r.stages for r in graph.runs if a in r.stages and b in r.stages]
            if len(shared) < MIN_RUNS or any(s[a].last >= s[b].first for s in shared):
                continue
            best: Correlation | None = None
            for fa in FEATURES:
                x = np.array([_value(s[a], fa) for s in shared], dtype=np.float64)
                for fb in FEATURES:
                    y = np.array([_value(s[b], fb) for s in shared], dtype=np.float64)
                    rho = _pearson(x, y)
                    if abs(rho) > graph.correlation_threshold and (
                        best is None or abs(rho) > abs(best.rho)
                    ):
                        best = Correlation(a, b, fa, fb, rho, len(shared))
            if best is not None:
                out.setdefault(b, []).append(best)
    for corrs in out.values():
        corrs.sort(key=lambda c: (-abs(c.rho), c.source))
    return out


class Refiner:
    """The correlations of one graph version, with the neighbour lookups they need cached."""

    def __init__(self, graph: PDGraph, *, min_neighbours: int = 10, fraction: float = 0.1) -> None:
        self.table = correlations(graph)
        self._min_neighbours = min_neighbours
        self._fraction = fraction
        # Per correlation: the runs that have both stages, and the source's feature in each.
        self._index: dict[Correlation, tuple[np.ndarray, np.ndarray]] = {}
        for corrs in self.table.values():
            for c in corrs:
                rows = [
                    (r.seq, _value(r.stages[c.source], c.source_feature))
                    for r in graph.runs
                    if c.source in r.stages and c.target in r.stages
                ]
                arr = np.array(rows, dtype=np.int64).reshape(-1, 2)
                self._index[c] = (arr[:, 0], arr[:, 1].astype(np.float64))
        self._memo: dict[tuple[Correlation, int], frozenset[int]] = {}

    def nearest_runs(self, corr: Correlation, value: int) -> frozenset[int]:
        """Sequence numbers of the runs whose source stage was nearest ``value`` (ties
        included): at least ``min_neighbours`` or ``fraction`` of the runs."""
        key = (corr, value)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        seqs, values = self._index[corr]
        if seqs.size == 0:
            runs: frozenset[int] = frozenset()
        else:
            k = min(seqs.size, max(self._min_neighbours, int(self._fraction * seqs.size)))
            diffs = np.abs(values - value)
            cutoff = np.partition(diffs, k - 1)[k - 1]
            runs = frozenset(seqs[diffs <= cutoff].tolist())
        self._memo[key] = runs
        return runs

    def conditioning(self, finished: Sequence[Stage]) -> dict[str, frozenset[int]]:
        """For each stage still to come, the runs its demand should be drawn from (if refined).

        ``finished`` are the stages this application has completed, in order. A target is
        refined by its strongest correlated source among them; targets already visited are
        left alone.
        """
        if not finished or not self.table:
            return {}
        seen = stage_features(finished)
        out: dict[str, frozenset[int]] = {}
        for target, corrs in self.table.items():
            if target in seen:
                continue
            for corr in corrs:
                if corr.source in seen:
                    runs = self.nearest_runs(corr, _value(seen[corr.source], corr.source_feature))
                    if runs:
                        out[target] = runs
                    break
        return out
