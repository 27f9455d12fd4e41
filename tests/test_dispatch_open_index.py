"""The dispatcher finds an arrival's free upstreams in a per-model index (`_open`) instead of
scanning every upstream, and re-ranks in whole lists, keeping a heap where no rank moved: its
grants must be exactly those of the scan and the full rebuild, whatever the sequence of
arrivals, ends, limits, health, loaded models and ranking rounds."""

from __future__ import annotations

import heapq

from hypothesis import given, settings
from hypothesis import strategies as st

from hermes.gateway.dispatch import BE, RT, Dispatcher, Grant, Upstream, Waiting, _entry, _live

MODELS = ("a", "b")
UPSTREAMS = [
    Upstream("u0", frozenset({"a"}), 2),
    Upstream("u1", frozenset({"a", "b"}), 1),
    Upstream("u2", frozenset({"b"}), 3),
    Upstream("u3", frozenset({"a", "b"}), 2),
]


class ScanningDispatcher(Dispatcher):
    """The dispatcher as it was: each arrival scans every upstream for a free slot."""

    def _fill(self, model: str) -> list[Grant]:
        grants: list[Grant] = []
        heaps = self._heaps[model]
        while True:
            free = [
                u for u in self.upstreams if model in self._loaded[u.name] and self.room(u.name)
            ]
            if not free:
                return grants
            cls = self._class(bool(self._prune(heaps[RT])), bool(self._prune(heaps[BE])))
            if cls is None:
                return grants
            _, _, w = heapq.heappop(heaps[cls])
            self._granted(w)
            best = self.router.choose(w, free, self.busy, self.room)
            self._busy[best.name] += 1
            self._running += 1
            self._sync(best.name)
            self.router.placed(w, best.name)
            grants.append(Grant(w, best.name))

    def rerank_all(self, priorities: object) -> None:
        raise AssertionError("not used: `rerank` below is the old one")

    def rerank(self, priority: object) -> None:
        """The round as it was: every heap rebuilt, one call to `priority` per call."""
        for heaps in self._heaps.values():
            for heap in heaps:
                fresh = []
                for entry in heap:
                    if not _live(entry):
                        continue
                    w = entry[2]
                    if not w.aged:
                        w.priority = priority(w)  # type: ignore[operator]
                    fresh.append(_entry(w))
                heapq.heapify(fresh)
                heap[:] = fresh


_NAMES = st.sampled_from([u.name for u in UPSTREAMS])
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.sampled_from(MODELS), st.floats(0, 10), st.booleans()),
        st.tuples(st.just("burst"), st.sampled_from(MODELS), st.integers(1, 8), st.booleans()),
        st.tuples(st.just("release"), _NAMES),
        st.tuples(st.just("limit"), _NAMES, st.integers(1, 4)),
        st.tuples(st.just("health"), _NAMES, st.booleans()),
        st.tuples(st.just("load"), _NAMES, st.integers(0, 3)),
        st.tuples(st.just("cancel"), st.integers(0, 50)),
        st.tuples(st.just("rerank"), st.integers(0, 3)),
    ),
    max_size=80,
)


def _run(d: Dispatcher, ops: list[tuple[object, ...]]) -> list[tuple[int, str]]:
    """The grants `ops` make, as (call number, upstream)."""
    out: list[tuple[int, str]] = []
    calls: list[Waiting] = []
    for op in ops:
        grants: list[Grant] = []
        if op[0] == "submit":
            _, model, rank, rt = op
            w, grants = d.submit(len(calls), str(model), float(rank), bool(rt))  # type: ignore[arg-type]
            calls.append(w)
        elif op[0] == "burst":  # calls enough to queue, at ranks with ties
            _, model, n, rt = op
            for _ in range(int(n)):  # type: ignore[call-overload]
                w, more = d.submit(len(calls), str(model), float(len(calls) % 3), bool(rt))
                calls.append(w)
                grants += more
        elif op[0] == "release":
            if d.busy(str(op[1])) > 0:
                grants = d.release(str(op[1]))
        elif op[0] == "limit":
            grants = d.set_limit(str(op[1]), int(op[2]))  # type: ignore[call-overload]
        elif op[0] == "health":
            grants = d.set_health(str(op[1]), bool(op[2]))
        elif op[0] == "load":
            u = next(u for u in UPSTREAMS if u.name == op[1])
            models = sorted(u.models)
            pick = int(op[2])  # type: ignore[call-overload]
            grants = d.set_loaded(u.name, [m for i, m in enumerate(models) if pick >> i & 1])
        elif op[0] == "cancel" and calls:
            d.cancel(calls[int(op[1]) % len(calls)])  # type: ignore[call-overload]
        elif op[0] == "rerank":
            seed = int(op[1])  # type: ignore[call-overload]

            def rank(w: Waiting, seed: int = seed) -> float:
                # seed 0 moves no rank; the others move some, ties included
                return w.priority if seed == 0 else float((int(w.key) * 7 + seed) % (2 + seed))  # type: ignore[call-overload]

            d.rerank(rank)
        assert d.running == sum(d.busy(u.name) for u in UPSTREAMS)  # kept, not summed
        out += [(int(g.call.key), g.upstream) for g in grants]  # type: ignore[call-overload]
    return out


@settings(max_examples=300, deadline=None)
@given(ops=_OPS)
def test_the_index_grants_what_the_scan_grants(ops: list[tuple[object, ...]]) -> None:
    indexed = _run(Dispatcher(UPSTREAMS), ops)
    assert indexed == _run(ScanningDispatcher(UPSTREAMS), ops)


def test_a_full_cluster_grants_nothing_and_a_freed_slot_goes_to_the_best_call() -> None:
    d = Dispatcher([Upstream(f"u{i}", frozenset({"m"}), 1) for i in range(512)])
    for i in range(512):
        _, (g,) = d.submit(i, "m", float(i))
        assert g.upstream == f"u{i}"  # each to the first of the equally free
    assert d.submit("late", "m", 5.0)[1] == []
    assert d.submit("best", "m", -1.0)[1] == []
    (g,) = d.release("u7")
    assert (g.call.key, g.upstream) == ("best", "u7")
