"""`Dispatcher.rerank_groups`: re-ranking only the groups whose rank moved grants what
re-ranking every call grants (`rerank_all`), whatever the submits, releases, cancellations,
aging and rank changes (ranks that move and come back included), and stale heap entries are
compacted away so that the heaps stay within a bound of the calls waiting."""

from __future__ import annotations

from typing import Any, cast
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from hermes.gateway import dispatch
from hermes.gateway.dispatch import Dispatcher, Upstream, Waiting
from hermes.policies.aging import Aging

UPSTREAMS = [Upstream("u0", frozenset({"a"}), 1), Upstream("u1", frozenset({"a", "b"}), 2)]
GROUPS = 5

_OPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("submit"),
            st.integers(0, GROUPS - 1),
            st.sampled_from(["a", "b"]),
            st.booleans(),
            st.integers(1, 4),
        ),
        st.tuples(st.just("release"), st.sampled_from(["u0", "u1"])),
        st.tuples(st.just("cancel"), st.integers(0, 60)),
        st.tuples(st.just("rank"), st.integers(0, GROUPS - 1), st.integers(0, 3)),
        st.tuples(st.just("age"), st.floats(0, 5)),
        st.just(("round",)),
    ),
    min_size=5,
    max_size=80,
)


def _run(ops: list[tuple[Any, ...]], incremental: bool) -> list[object]:
    d = Dispatcher(UPSTREAMS, aging=Aging(3.0))
    rank = dict.fromkeys(range(GROUPS), 0.0)  # each group's rank now
    moved: set[int] = set()  # groups whose rank moved since the last round
    calls: list[Waiting] = []
    out: list[object] = []
    now = 0.0
    for op in ops:
        grants = []
        if op[0] == "submit":
            _, g, model, rt, n = op
            for _ in range(int(n)):
                w, more = d.submit(len(calls), str(model), rank[g], bool(rt), now, group=g)
                calls.append(w)
                grants += more
        elif op[0] == "release" and d.busy(str(op[1])):
            grants = d.release(str(op[1]))
        elif op[0] == "cancel" and calls:
            d.cancel(calls[int(op[1]) % len(calls)])
        elif op[0] == "rank":  # few values: a rank often comes back to one it had
            rank[op[1]] = float(op[2])
            moved.add(int(op[1]))
        elif op[0] == "age":
            now += float(op[1])
            d.age(now)
        elif op[0] == "round":

            def ranks(ws: list[Waiting]) -> list[float]:
                return [rank[cast(int, w.group)] for w in ws]

            if incremental:
                d.rerank_groups(sorted(moved), ranks)
            else:
                d.rerank_all(ranks)
            moved.clear()
            heaps = [h for pair in d._heaps.values() for h in pair]
            assert sum(map(len, heaps)) <= 2 * d.queued + dispatch._COMPACT_SLACK
        out += [(g.call.key, g.upstream) for g in grants]
        waiting = sorted(d.waiting(), key=lambda w: (w.rt, w.priority, w.seq))
        out.append([(w.key, w.priority) for w in waiting])
    return out


@settings(max_examples=200, deadline=None)
@given(ops=_OPS, slack=st.sampled_from([0, 64]))
def test_rerank_groups_grants_what_rerank_all_grants(
    ops: list[tuple[Any, ...]], slack: int
) -> None:
    with mock.patch.object(dispatch, "_COMPACT_SLACK", slack):  # 0: compacts at every chance
        assert _run(ops, incremental=True) == _run(ops, incremental=False)


def test_ranks_that_move_back_and_forth_leave_no_duplicates_and_the_heap_bounded() -> None:
    d = Dispatcher([Upstream("u", frozenset({"m"}), 1)])
    d.submit("running", "m", 0.0)
    calls = [d.submit(i, "m", 1.0, group=i % 10)[0] for i in range(200)]
    for r in range(100):

        def ranks(ws: list[Waiting], r: int = r) -> list[float]:
            return [float(r % 2) + w.seq for w in ws]

        d.rerank_groups(range(10), ranks)
        assert len(d._heaps["m"][1]) <= 2 * 200 + dispatch._COMPACT_SLACK
    assert sorted(w.seq for w in d.waiting()) == [c.seq for c in calls]  # each once
    granted = [d.release("u")[0].call for _ in range(200)]
    assert granted == sorted(calls, key=lambda w: w.seq)  # ranks 1 + seq: queue order
    assert d.queued == 0
    assert d.waiting() == []


def test_a_retried_call_keeps_its_place_at_the_front_through_ranking_rounds() -> None:
    """A call queued again after its upstream failed (-inf: it was granted once already) goes
    first; a round, whole or over its group, must not give it its application's rank again
    (before: the next round did, and it waited behind every better-ranked call)."""
    for incremental in (False, True):
        d = Dispatcher([Upstream("u", frozenset({"m"}), 1)])
        d.submit("running", "m", 0.0)
        ahead = [d.submit(i, "m", float(i), group=i)[0] for i in range(5)]
        retried = d.submit("retry", "m", float("-inf"), group=9)[0]

        def ranks(ws: list[Waiting]) -> list[float]:
            return [100.0 if w.group == 9 else float(w.key) for w in ws]  # type: ignore[arg-type]

        if incremental:
            d.rerank_groups([9, *range(5)], ranks)
        else:
            d.rerank_all(ranks)
        granted = [d.release("u")[0].call for _ in range(6)]
        assert granted == [retried, *ahead]
