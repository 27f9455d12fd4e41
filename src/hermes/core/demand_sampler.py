"""Monte Carlo demand of an application from its PDGraph.

``DemandModel`` answers two questions in seconds of service (through a ``DemandCost``): the
total demand of a fresh application, and the remaining demand of one in progress. It walks many
paths through the graph at once, vectorised over walkers: at each step every walker at a node
draws a fan-out, that many calls, and its next stage, with the probabilities of its visit
number of that node (``visit_hazards``): each walker counts its visits, starting from the
application's own, so a loop's remainder depends on how far the application has come.

Randomness comes only from the ``numpy.random.Generator`` the caller passes in.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from hermes.core.demand_cost import DemandCost, LinearCost
from hermes.core.pdgraph import END, START, PDGraph
from hermes.core.refinement import Correlation, Refiner
from hermes.core.runs import Stage
from hermes.types import FloatArray, IntArray


@dataclass(frozen=True, slots=True)
class Progress:
    """Where an application stands.

    ``stage`` is the stage it is in (None: not started). ``unfinished_calls`` counts that
    stage's calls not yet finished (None: the fan-out is not known yet, so it is sampled).
    ``finished`` lists the stages it has completed, in order; refinement conditions on them.
    """

    stage: str | None = None
    unfinished_calls: int | None = None
    finished: tuple[Stage, ...] = ()

    def __post_init__(self) -> None:
        if self.unfinished_calls is not None and self.unfinished_calls < 0:
            raise ValueError(f"unfinished_calls must be >= 0, got {self.unfinished_calls}")

    def visits(self) -> Counter[str]:
        """Visits so far per stage, the current one included (its visit number)."""
        seen = Counter(s.name for s in self.finished)
        if self.stage is not None:
            seen[self.stage] += 1
        return seen


@dataclass(frozen=True, slots=True)
class DemandState:
    """What a remaining-demand distribution depends on: a cache key."""

    graph_version: int
    stage: str | None
    unfinished_calls: int | None
    conditioned: tuple[tuple[str, frozenset[int]], ...]
    # Visits so far of each stage whose next-stage probabilities depend on the visit number,
    # capped where they stop changing; empty for a graph without such stages.
    visits: tuple[tuple[str, int], ...] = ()

    def label(self) -> str:
        """A text that is the same in every process (frozenset order is not), for seeding."""
        cond = [(target, sorted(runs)) for target, runs in self.conditioned]
        if not self.visits:  # the label of graphs without visit-dependent stages is unchanged
            return repr((self.stage, self.unfinished_calls, cond))
        return repr((self.stage, self.unfinished_calls, cond, self.visits))


@dataclass(frozen=True, slots=True)
class _Pool:
    fanouts: IntArray
    fanout_seqs: IntArray
    costs: FloatArray
    cost_seqs: IntArray

    def restricted_to(self, runs: frozenset[int]) -> _Pool:
        keep = np.fromiter(runs, dtype=np.int64, count=len(runs))
        f = np.isin(self.fanout_seqs, keep)
        c = np.isin(self.cost_seqs, keep)
        if not f.any() or not c.any():
            return self  # those runs have left the window: fall back to everything
        return _Pool(self.fanouts[f], self.fanout_seqs[f], self.costs[c], self.cost_seqs[c])


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """The graph as arrays; node 0 is START, the last index is END."""

    index: Mapping[str, int]
    pools: tuple[_Pool | None, ...]
    next_nodes: tuple[IntArray, ...]
    # Per node: cumulative next-stage probabilities, one row per visit number (the last row
    # serves every later visit); shape (depth, len(next_nodes)).
    next_cum: tuple[FloatArray, ...]
    max_steps: int

    @property
    def end(self) -> int:
        return len(self.pools) - 1


def _snapshot(graph: PDGraph, cost: DemandCost) -> _Snapshot:
    names = [START, *graph.nodes, END]
    index = {name: i for i, name in enumerate(names)}
    pools: list[_Pool | None] = [None]
    for node in graph.nodes.values():
        fan = np.array(node.fanouts, dtype=np.int64).reshape(-1, 2)
        calls = np.array(node.calls, dtype=np.float64).reshape(-1, 3)
        if node.kind == "llm":
            costs = cost.llm_calls_s(calls[:, 1], calls[:, 2])
        else:
            costs = cost.tool_calls_s(calls[:, 1])
        pools.append(
            _Pool(
                fan[:, 1],
                fan[:, 0],
                np.asarray(costs, dtype=np.float64),
                calls[:, 0].astype(np.int64),
            )
        )
    pools.append(None)
    next_nodes: list[IntArray] = []
    next_cum: list[FloatArray] = []
    for name in names:
        table = graph.visit_table(name)
        next_nodes.append(np.array([index[d] for d in table.dsts], dtype=np.int64))
        next_cum.append(np.cumsum(table.rows, axis=1))
    # Loops end with probability 1 in a learned graph, but a walker is cut off after this many
    # steps so that a pathological graph cannot hang the caller.
    max_steps = 4 * graph.longest_run + 16
    return _Snapshot(index, tuple(pools), tuple(next_nodes), tuple(next_cum), max_steps)


class DemandModel:
    """Demand samples of one application type, in seconds of service."""

    def __init__(self, graph: PDGraph, cost: DemandCost | None = None) -> None:
        self.graph = graph
        self.cost: DemandCost = cost if cost is not None else LinearCost()
        self._version = -1
        self._snap: _Snapshot | None = None
        self._refiner: Refiner | None = None

    def _fresh(self) -> _Snapshot:
        if self._snap is None or self._version != self.graph.version:
            self._snap = _snapshot(self.graph, self.cost)
            self._refiner = Refiner(self.graph)
            self._version = self.graph.version
        return self._snap

    def _refiner_now(self) -> Refiner:
        self._fresh()
        assert self._refiner is not None
        return self._refiner

    @property
    def correlations(self) -> dict[str, list[Correlation]]:
        return self._refiner_now().table

    def call_costs(self, stage: str) -> FloatArray:
        """The per-call demand (seconds of service) of the calls in ``stage``'s window: the
        pool a sampled call of that stage is drawn from. Read-only."""
        snap = self._fresh()
        i = snap.index.get(stage)
        pool = None if i is None else snap.pools[i]
        if pool is None:
            raise ValueError(f"{self.graph.app!r} has no stage {stage!r}")
        view = pool.costs.view()
        view.flags.writeable = False
        return view

    def conditioning(self, progress: Progress, refine: bool = True) -> dict[str, frozenset[int]]:
        """Stages to come whose demand refinement restricts to some runs (empty if off)."""
        if not refine:
            return {}
        return self._refiner_now().conditioning(progress.finished)

    def state(self, progress: Progress, refine: bool = True) -> DemandState:
        """Two progresses with equal states have the same remaining-demand distribution."""
        snap = self._fresh()
        cond = self.conditioning(progress, refine)
        seen = progress.visits()
        names = list(snap.index)
        visits = tuple(
            (names[i], min(seen[names[i]], cum.shape[0]))
            for i, cum in enumerate(snap.next_cum)
            if cum.shape[0] > 1
        )
        return DemandState(
            self.graph.version,
            progress.stage,
            progress.unfinished_calls,
            tuple(sorted(cond.items())),
            visits,
        )

    def total(self, n: int, rng: np.random.Generator) -> FloatArray:
        """Samples of the total demand of a fresh application."""
        return self.remaining(Progress(), n, rng)

    def remaining_given_attained(
        self,
        progress: Progress,
        attained: float,
        n: int,
        rng: np.random.Generator,
        *,
        refine: bool = True,
    ) -> FloatArray:
        """Samples of the demand left once the unfinished calls have had ``attained`` seconds:
        X − a given X > a. Empty when every sample is already exceeded."""
        demand = self.remaining(progress, n, rng, refine=refine)
        alive = demand[demand > attained]
        return alive - attained

    def remaining(
        self,
        progress: Progress,
        n: int,
        rng: np.random.Generator,
        *,
        refine: bool = True,
        critical_path: bool = False,
    ) -> FloatArray:
        """Samples of the demand still to come: unfinished calls of the current stage, then every
        later stage. Tool calls count as the cost function weighs them. `critical_path`: each
        stage counts its longest call instead of the sum (its calls run in parallel), which
        estimates time rather than service."""
        snap = self._fresh()
        if not self.graph.nodes:
            raise ValueError(f"the PDGraph of {self.graph.app!r} has learned no runs yet")
        if progress.stage is None:
            start = 0
        elif progress.stage in snap.index and progress.stage not in (START, END):
            start = snap.index[progress.stage]
        else:
            raise ValueError(f"{self.graph.app!r} has no stage {progress.stage!r}")
        pools = list(snap.pools)
        for target, runs in self.conditioning(progress, refine).items():
            i = snap.index[target]
            pool = pools[i]
            if pool is not None:
                pools[i] = pool.restricted_to(runs)
        visits = np.zeros(len(snap.pools), dtype=np.int64)
        visits[0] = 1  # START, left once
        for name, count in progress.visits().items():
            if name in snap.index:
                visits[snap.index[name]] = count
        return _walk(snap, pools, start, progress.unfinished_calls, n, rng, critical_path, visits)


def _walk(
    snap: _Snapshot,
    pools: list[_Pool | None],
    start: int,
    unfinished: int | None,
    n: int,
    rng: np.random.Generator,
    critical_path: bool = False,
    visits0: IntArray | None = None,
) -> FloatArray:
    demand = np.zeros(n, dtype=np.float64)
    cur = np.full(n, start, dtype=np.int64)
    # Each walker's visits per node, kept only where some node's probabilities depend on them.
    counted = visits0 is not None and any(c.shape[0] > 1 for c in snap.next_cum)
    visits = np.tile(visits0, (n, 1)) if counted and visits0 is not None else None
    for step in range(snap.max_steps):
        live = cur != snap.end
        if not live.any():
            break
        # Group walkers before moving any, so none is served twice in one step.
        groups = [(int(node), np.flatnonzero(cur == node)) for node in np.unique(cur[live])]
        for node, idx in groups:
            pool = pools[node]
            if pool is not None:
                if step == 0 and unfinished is not None:
                    fan = np.full(idx.size, unfinished, dtype=np.int64)
                else:
                    fan = pool.fanouts[rng.integers(pool.fanouts.size, size=idx.size)]
                m = int(fan.sum())
                if m:
                    costs = pool.costs[rng.integers(pool.costs.size, size=m)]
                    owner = np.repeat(np.arange(idx.size), fan)
                    if critical_path:
                        longest = np.zeros(idx.size, dtype=np.float64)
                        np.maximum.at(longest, owner, costs)
                        demand[idx] += longest
                    else:
                        demand[idx] += np.bincount(owner, weights=costs, minlength=idx.size)
            dsts, cum = snap.next_nodes[node], snap.next_cum[node]
            if dsts.size == 0:
                cur[idx] = snap.end
                continue
            r = rng.random(idx.size)
            if cum.shape[0] == 1 or visits is None:
                pick = np.searchsorted(cum[0], r, side="right")
            else:
                rows = np.minimum(visits[idx, node], cum.shape[0]) - 1
                pick = (cum[rows] <= r[:, None]).sum(axis=1)
            nxt = dsts[np.minimum(pick, dsts.size - 1)]
            cur[idx] = nxt
            if visits is not None:
                visits[idx, nxt] += 1
    return demand
