"""The event loop: order, determinism, cancellation, isolation."""

from __future__ import annotations

from functools import partial

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hermes.sim.kernel import EventLoop


def record(seen: list[int], i: int, now: float) -> None:
    seen.append(i)


@given(
    st.lists(
        st.tuples(st.floats(min_value=0, max_value=100), st.integers(min_value=-3, max_value=3)),
        max_size=60,
    )
)
def test_events_run_in_time_priority_then_schedule_order(
    events: list[tuple[float, int]],
) -> None:
    loop = EventLoop()
    seen: list[int] = []
    for i, (t, prio) in enumerate(events):
        loop.at(t, partial(record, seen, i), priority=prio)
    loop.run()
    expected = sorted(range(len(events)), key=lambda i: (events[i][0], events[i][1], i))
    assert seen == expected
    assert loop.processed == len(events)


def test_callbacks_schedule_more_and_see_their_time() -> None:
    loop = EventLoop()
    times: list[float] = []

    def tick(now: float) -> None:
        times.append(now)
        assert loop.now == now
        if len(times) < 5:
            loop.after(0.5, tick)

    loop.at(1.0, tick)
    assert loop.run() == pytest.approx(3.0)
    assert times == [1.0, 1.5, 2.0, 2.5, 3.0]


def test_cancel_and_run_until() -> None:
    loop = EventLoop()
    hits: list[str] = []
    loop.at(1.0, lambda _: hits.append("a"))
    dropped = loop.at(2.0, lambda _: hits.append("b"))
    loop.at(5.0, lambda _: hits.append("c"))
    dropped.cancel()
    assert loop.run(until=3.0) == 3.0
    assert hits == ["a"]
    assert loop.run() == 5.0
    assert hits == ["a", "c"]


def test_two_loops_do_not_interfere() -> None:
    a, b = EventLoop(), EventLoop()

    def schedule_on_b(now: float) -> None:
        b.at(10.0, lambda _: None)

    a.at(1.0, schedule_on_b)
    a.run()
    assert (a.now, b.now, len(b)) == (1.0, 0.0, 1)


def test_rejects_the_past_and_nonsense() -> None:
    loop = EventLoop(start=5.0)
    with pytest.raises(ValueError, match=r"cannot schedule at 4\.0"):
        loop.at(4.0, lambda _: None)
    with pytest.raises(ValueError, match="cannot schedule"):
        loop.at(float("nan"), lambda _: None)
    with pytest.raises(ValueError, match="delay must be >= 0"):
        loop.after(-1.0, lambda _: None)
