"""Aging (issue 16, defect 11): no call is overtaken without bound. The decision is pure
(`policies.aging`); the gateway's dispatcher applies it to the calls that have waited longest.
The starvation itself is reproduced on the dispatcher with time as an argument: a call ranked
behind a steady stream of newer, better-ranked calls waits for as long as the stream lasts
without aging, and at most `max_wait_s` (plus the aged calls ahead of it) with it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hermes.gateway.dispatch import Dispatcher, Upstream
from hermes.policies.aging import AGED_RANK, Aging


def test_a_call_is_due_once_it_has_waited_max_wait() -> None:
    aging = Aging(10.0)
    assert not aging.due(queued_s=0.0, rank=5.0, now=9.99)
    assert aging.due(queued_s=0.0, rank=5.0, now=10.0)
    assert aging.rank(0.0, 5.0, 9.0) == 5.0
    assert aging.rank(0.0, 5.0, 10.0) == AGED_RANK
    # A call that goes first already (a retry, at -inf) is never "aged" behind others.
    assert not aging.due(0.0, float("-inf"), 100.0)
    assert not Aging(None).due(0.0, 5.0, 1e9)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_a_bad_max_wait_is_refused_with_its_value(bad: float) -> None:
    with pytest.raises(ValueError, match="max_wait_s"):
        Aging(bad)


def _dispatcher(max_wait_s: float | None) -> Dispatcher:
    return Dispatcher([Upstream("u", frozenset({"m"}), 1)], aging=Aging(max_wait_s))


def test_an_aged_call_goes_ahead_of_newer_better_ranked_calls() -> None:
    d = _dispatcher(10.0)
    _, grants = d.submit("running", "m", 0.0, now=0.0)
    assert [g.call.key for g in grants] == ["running"]  # holds the only slot
    d.submit("big", "m", 100.0, now=0.0)
    for t in range(1, 6):
        d.submit(f"small{t}", "m", 1.0, now=float(t))
    assert d.age(now=9.0) == []
    aged = d.age(now=10.0)
    assert [w.key for w in aged] == ["big"]
    assert [g.call.key for g in d.release("u")] == ["big"]
    # The rest in the policy's order, each aged in turn once it has waited 10 s.
    assert [w.key for w in d.age(now=12.0)] == ["small1", "small2"]
    assert [g.call.key for g in d.release("u")] == ["small1"]


def test_aged_calls_go_first_come_first_served_and_keep_their_place_in_a_rerank() -> None:
    d = _dispatcher(5.0)
    d.submit("running", "m", 0.0, now=0.0)
    for i, rank in enumerate([30.0, 10.0, 20.0]):
        d.submit(f"c{i}", "m", rank, now=float(i))
    d.submit("new", "m", 0.5, now=7.0)
    assert [w.key for w in d.age(now=7.0)] == ["c0", "c1", "c2"]
    d.rerank(lambda w: -1.0)  # a round that would put every call ahead: not the aged ones
    assert sorted(str(w.key) for w in d.waiting()) == ["c0", "c1", "c2", "new"]  # each once
    order = [d.release("u")[0].call.key for _ in range(4)]
    assert order == ["c0", "c1", "c2", "new"]


def test_a_cancelled_aged_call_is_not_granted() -> None:
    d = _dispatcher(1.0)
    d.submit("running", "m", 0.0, now=0.0)
    w, _ = d.submit("gone", "m", 9.0, now=0.0)
    d.submit("stays", "m", 1.0, now=0.5)
    d.age(now=1.0)
    assert d.cancel(w)
    assert [g.call.key for g in d.release("u")] == ["stays"]
    assert d.queued == 0


def _starved_wait(max_wait_s: float | None, stream_s: float) -> float:
    """One call ranked 100 queued at 0 behind a slot busy for 1 s, with a newer call ranked 1
    arriving every 0.5 s until `stream_s`, each served in 1 s: when the rank-100 call starts."""
    d = _dispatcher(max_wait_s)
    d.submit("first", "m", 0.0, now=0.0)
    d.submit("big", "m", 100.0, now=0.0)
    t, arrivals = 0.0, 0
    while t < 10 * stream_s:
        t += 0.5
        if t <= stream_s:
            arrivals += 1
            d.submit(f"small{arrivals}", "m", 1.0, now=t)
        d.age(now=t)
        if t.is_integer():  # the slot frees every second
            grants = d.release("u")
            if grants and grants[0].call.key == "big":
                return t
    raise AssertionError("never served")


def test_without_aging_a_stream_of_newer_calls_starves_a_call_for_as_long_as_it_lasts() -> None:
    assert _starved_wait(None, stream_s=100.0) > 100.0
    assert _starved_wait(None, stream_s=200.0) > 200.0


@given(st.floats(1.0, 50.0), st.sampled_from([100.0, 300.0]))
def test_with_aging_the_wait_is_bounded_whatever_the_stream(max_wait: float, stream: float) -> None:
    # Due at max_wait; granted at the next free slot (every second): no later than that.
    assert _starved_wait(max_wait, stream_s=stream) <= max_wait + 1.0
