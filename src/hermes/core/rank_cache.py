"""Gittins ranks of applications in progress, cached so that re-ranking thousands is cheap.

An application's rank depends on its type, its PDGraph state (stage, unfinished calls, and the
runs refinement conditions on) and the service attained by its unfinished calls. The remaining-
demand distribution is sampled once per state (``RankState``); a scheduler keeps each
application's ``RankState`` until the application's progress changes.

A ranking round hands every application's state and attained service to
``GittinsRanker.rank_states``, which ranks them all in a few dozen numpy calls (``RankPool``),
exactly and whatever changed since the last round. ``RankState.rank`` ranks one application and
caches ranks per exact attained value. ``quantum_s`` can round attained service down to a
multiple of itself, but the Gittins index jumps whenever attained service passes a support
point, and benchmarks/gittins_ranking.py measured that even 1 ms of rounding moves ranks by up
to seconds; exact costs no more.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

from hermes.core.demand_sampler import DemandModel, DemandState, Progress
from hermes.core.gittins import DemandDistribution, RankTables, tangent_ranks

DEFAULT_QUANTUM_S = 0.0  # exact: rounding attained service moves ranks across support points
_MAX_CACHED_RANKS = 4096  # per state; beyond that the cache is emptied and refilled
_MIN_POOL_ROWS = 64  # the pool is never compacted below this many states
# A pooled round costs ~40 µs of numpy calls whatever its size, one uncached rank ~6 µs:
# rounds this small are ranked one application at a time.
_POOL_FROM = 8


@dataclass(frozen=True, slots=True, eq=False)
class RankState:
    """The remaining-demand distribution of one application state, with its cached ranks.

    Compared and hashed by identity, so that a round can group applications by state.
    """

    dist: DemandDistribution
    quantum_s: float
    _ranks: dict[float, float] = field(default_factory=dict)

    def rank(self, attained: float = 0.0) -> float:
        """Gittins rank given ``attained`` seconds of service to the unfinished calls so far."""
        a = attained if self.quantum_s <= 0.0 else self.quantum_s * int(attained / self.quantum_s)
        r = self._ranks.get(a)
        if r is None:
            if len(self._ranks) >= _MAX_CACHED_RANKS:
                self._ranks.clear()
            r = self._ranks[a] = self.dist.gittins(a)
        return r

    def rank_many(self, attained: ArrayLike) -> NDArray[np.float64]:
        """``rank`` at each of ``attained`` in one vectorised call (no cache involved)."""
        a = np.asarray(attained, dtype=np.float64)
        if self.quantum_s > 0.0:
            a = self.quantum_s * np.trunc(a / self.quantum_s)
        return self.dist.gittins_many(a)


class RankPool:
    """The rank tables of many states side by side, so that one round ranks applications of
    every state together: its cost is a few dozen numpy calls over all applications, not a
    few per state.

    Each state owns a row of ``width`` entries (one power of two no smaller than any state's
    support; supports are padded with +inf), which turns the search for each application's
    first support point above its attained service into one branchless binary search over all
    applications. Jumps are local to their row, so rows move with whole-array copies. A state
    gets its row the first time it is ranked, capacity doubling when full; when more than half
    of the rows belong to states the latest round did not rank, the pool keeps only that
    round's states.
    """

    def __init__(self) -> None:
        self._rows: dict[RankState, int] = {}
        self._states: list[RankState] = []
        self._width, self._cap = 1, 0
        self._support = np.empty((0, 1))
        self._cols = np.empty((6, 0, 1))
        self._jump = np.empty((1, 0, 1), dtype=np.intp)
        self._size = np.empty(0, dtype=np.intp)
        self._relayout(None, 0, 1, 1)

    def __len__(self) -> int:
        return len(self._states)

    def ranks(self, states: Sequence[RankState], attained: ArrayLike) -> NDArray[np.float64]:
        """``states[i].rank(attained[i])`` for every i, up to floating-point rounding."""
        a = np.asarray(attained, dtype=np.float64)
        if a.shape != (len(states),):
            raise ValueError(f"{a.size} attained values for {len(states)} states")
        if len(states) < _POOL_FROM:
            return np.array([s.rank(v) for s, v in zip(states, a.tolist(), strict=True)])
        get = self._rows.get
        rows = np.array([get(s, -1) for s in states], dtype=np.intp)
        if rows.min() < 0:
            self._add([s for s in dict.fromkeys(states) if s not in self._rows])
            rows = np.array([get(s, -1) for s in states], dtype=np.intp)
        in_use = np.flatnonzero(np.bincount(rows, minlength=len(self._states)))
        if len(self._states) > max(2 * in_use.size, _MIN_POOL_ROWS):
            self._relayout(in_use, 2 * in_use.size, self._width, self._jump.shape[0])
            rows = np.searchsorted(in_use, rows)
        if self._quantized:
            q = self._quantum[rows]
            a = np.where(q > 0, q * np.trunc(a / np.where(q > 0, q, 1.0)), a)
        past = ~(a < self._last_x[rows])  # NaN included, as in ``DemandDistribution.gittins``
        a = np.where(past, -np.inf, a)  # ranked at −inf to stay in bounds; the rank is 0
        # j: the row's start plus its count of support points <= a (so the first one above a),
        # found with halving steps; the +inf padding is never counted.
        start = rows * self._width
        support = self._tables.support
        j = start
        step = self._width // 2
        while step:
            j = np.where(support[j + (step - 1)] <= a, j + step, j)
            step //= 2
        out = tangent_ranks(self._tables, j, a, start)
        out[past] = 0.0
        return out

    def _add(self, states: list[RankState]) -> None:
        tables = [s.dist.rank_tables() for s in states]
        width = max([self._width] + [1 << (t.support.size - 1).bit_length() for t in tables])
        levels = max([self._jump.shape[0]] + [t.jump.shape[0] for t in tables])
        start, need = len(self._states), len(self._states) + len(states)
        if need > self._cap or width > self._width or levels > self._jump.shape[0]:
            capacity = self._cap if need <= self._cap else 2 * need
            self._relayout(None, capacity, width, levels)
        for r, (s, t) in enumerate(zip(states, tables, strict=True), start):
            self._write(r, s, t)

    def _relayout(
        self, keep: NDArray[np.intp] | None, capacity: int, width: int, levels: int
    ) -> None:
        """Fresh arrays of ``capacity`` rows, ``width`` entries and ``levels`` jump levels,
        holding the rows ``keep`` (in that order; all rows in place when None)."""
        rows: slice | NDArray[np.intp]
        if keep is None:
            rows, states = slice(0, len(self._states)), list(self._states)  # slices copy faster
        else:
            rows, states = keep, [self._states[r] for r in keep.tolist()]
        m, w0, l0 = len(states), self._width, self._jump.shape[0]
        support = np.full((capacity, width), np.inf)
        cols = np.empty((6, capacity, width))
        jump = np.empty((levels, capacity, width), dtype=np.intp)
        size = np.zeros(capacity, dtype=np.intp)
        support[:m, :w0] = self._support[rows]
        cols[:, :m, :w0] = self._cols[:, rows]
        size[:m] = self._size[rows]
        jump[:l0, :m, :w0] = self._jump[:, rows]
        jump[:l0, :m, w0:] = (size[:m] - 1)[:, None]  # padding jumps to the last point
        for level in range(l0, levels):  # deeper levels: the previous level, twice
            prev = jump[level - 1, :m]
            jump[level, :m] = np.take_along_axis(prev, prev, axis=1)
        self._states = states
        self._rows.clear()  # in place: a round may hold its ``get``
        self._rows.update((s, r) for r, s in enumerate(self._states))
        self._cap, self._width = capacity, width
        self._support, self._cols, self._jump, self._size = support, cols, jump, size
        self._last_x = np.full(capacity, -np.inf)
        self._last_x[:m] = [s.dist.support[-1] for s in self._states]
        self._quantum = np.zeros(capacity)
        self._quantum[:m] = [s.quantum_s for s in self._states]
        self._quantized = bool(np.any(self._quantum > 0))
        base_w, base_c, surviving, hull_w, hull_q, edge = cols.reshape(6, -1)
        self._tables = RankTables(
            support.reshape(-1), base_w, base_c, surviving, hull_w, hull_q, edge,
            jump.reshape(levels, -1),
        )  # fmt: skip

    def _write(self, r: int, state: RankState, t: RankTables) -> None:
        n, levels = t.support.size, t.jump.shape[0]
        self._support[r, :n] = t.support
        for col, values in zip(
            self._cols,
            (t.base_w, t.base_c, t.surviving, t.hull_w, t.hull_q, t.edge),
            strict=True,
        ):
            col[r, :n] = values
        # Levels past the state's own, and the padding, stay on its last point: every jump
        # ends there.
        self._jump[:, r] = n - 1
        self._jump[:levels, r, :n] = t.jump
        self._size[r] = n
        self._last_x[r] = t.support[-1]
        self._quantum[r] = state.quantum_s
        self._quantized = self._quantized or state.quantum_s > 0
        self._states.append(state)
        self._rows[state] = r


class GittinsRanker:
    """Ranks (lower first) of applications by the Gittins index of their remaining demand."""

    def __init__(
        self,
        models: Mapping[str, DemandModel],
        *,
        samples: int = 1000,
        seed: int = 0,
        quantum_s: float = DEFAULT_QUANTUM_S,
        refine: bool = True,
    ) -> None:
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        if not quantum_s >= 0:
            raise ValueError(f"quantum_s must be >= 0, got {quantum_s}")
        self.models = models
        self.samples = samples
        self.seed = seed
        self.quantum_s = quantum_s
        self.refine = refine
        self._states: dict[tuple[str, DemandState], RankState] = {}
        self._versions: dict[str, int] = {}
        self._pool = RankPool()

    def state(self, app: str, progress: Progress) -> RankState:
        """The rank state of an application of type ``app`` at ``progress`` (cached)."""
        model = self.models.get(app)
        if model is None:
            raise KeyError(f"no PDGraph for application type {app!r}")
        demand_state = model.state(progress, self.refine)
        if self._versions.get(app) != demand_state.graph_version:
            # The graph learned since: states of its older versions can never be asked again.
            self._versions[app] = demand_state.graph_version
            for stale in [k for k in self._states if k[0] == app]:
                del self._states[stale]
        key = (app, demand_state)
        state = self._states.get(key)
        if state is None:
            # A generator per state, seeded from the state itself, so that a rank does not
            # depend on the order in which states were first seen.
            label = f"{app}|{demand_state.label()}"
            rng = np.random.default_rng([self.seed, zlib.crc32(label.encode())])
            demand = model.remaining(progress, self.samples, rng, refine=self.refine)
            state = self._states[key] = RankState(DemandDistribution(demand), self.quantum_s)
        return state

    def distribution(self, app: str, progress: Progress) -> DemandDistribution:
        """The remaining-demand distribution an application at ``progress`` is ranked by."""
        return self.state(app, progress).dist

    def rank(self, app: str, progress: Progress, attained: float = 0.0) -> float:
        return self.state(app, progress).rank(attained)

    def rank_many(self, items: Sequence[tuple[str, Progress, float]]) -> list[float]:
        return [self.state(app, p).rank(a) for app, p, a in items]

    def rank_states(self, states: Sequence[RankState], attained: ArrayLike) -> NDArray[np.float64]:
        """A ranking round: ``states[i].rank(attained[i])`` for every application i at once.

        A scheduler that keeps each application's state (as it should: looking states up costs
        more than ranking them) calls this once per round.
        """
        return self._pool.ranks(states, attained)

    def rank_round(self, items: Sequence[tuple[str, Progress, float]]) -> NDArray[np.float64]:
        """``rank_many`` as one round: states looked up, then ranked together."""
        return self.rank_states(
            [self.state(app, p) for app, p, _ in items], [a for _, _, a in items]
        )

    @property
    def cached_states(self) -> int:
        return len(self._states)

    def clear(self) -> None:
        """Forget every cached state."""
        self._states.clear()
        self._versions.clear()
        self._pool = RankPool()
