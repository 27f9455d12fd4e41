"""SLO classes: the pure decisions (`policies.slo_class`), and the gateway carrying them out:
real-time calls ahead of best-effort ones in the queue and at the engine, best-effort calls
kept to their minimum share."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hermes.gateway.dispatch import Dispatcher, Upstream
from hermes.policies.slo_class import (
    GrantShare,
    SloClassOptions,
    class_of,
    class_priority,
    engine_rank,
)
from hermes.types import SloClass
from test_gateway_server import FakeUpstream, client, fake, gateway  # noqa: F401


def _one_slot(share: float) -> Dispatcher:
    d = Dispatcher([Upstream("u", frozenset({"m"}), 1)], slo=SloClassOptions(be_min_share=share))
    d.submit("busy", "m", 0.0)  # holds the only slot
    return d


def _drain(d: Dispatcher, n: int) -> list[str]:
    order = []
    for _ in range(n):
        (g,) = d.release("u")
        order.append(str(g.call.key))
    return order


def test_real_time_calls_go_first_in_policy_order_when_no_share_is_owed() -> None:
    d = _one_slot(0.0)
    for i in range(3):
        d.submit(f"be{i}", "m", float(i))  # best-effort ranks better...
    for i in range(3):
        d.submit(f"rt{i}", "m", 10.0 - i, rt=True)  # ...but real-time goes first
    assert _drain(d, 6) == ["rt2", "rt1", "rt0", "be0", "be1", "be2"]


@settings(max_examples=30, deadline=None)
@given(st.floats(0.0, 1.0))
def test_best_effort_gets_its_minimum_share_and_no_more_while_both_wait(share: float) -> None:
    d = _one_slot(share)
    for i in range(600):
        d.submit(f"be{i}", "m", float(i))
        d.submit(f"rt{i}", "m", float(i), rt=True)
    order = _drain(d, 500)
    be = sum(k.startswith("be") for k in order)
    # Within one grant per window of 100 of the share, over the whole run.
    assert be / 500 == pytest.approx(share, abs=0.02)
    # Each class stays in its own policy order.
    be_keys = [k for k in order if k.startswith("be")]
    assert be_keys == [f"be{i}" for i in range(len(be_keys))]


def test_the_options_are_checked() -> None:
    with pytest.raises(ValueError, match="be_min_share must be in"):
        SloClassOptions(be_min_share=1.5)
    with pytest.raises(ValueError, match="window must be"):
        SloClassOptions(window=0)
    with pytest.raises(ValueError, match="rt_engine_lead_s must be"):
        SloClassOptions(rt_engine_lead_s=float("inf"))


# The pure decisions ---------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.floats(0.0, 1.0),
    st.integers(1, 200),
    st.lists(st.sampled_from(["rt", "be", "both"]), min_size=1, max_size=600),
)
def test_the_best_effort_share_holds_whatever_waits(
    share: float, window: int, waiting: list[str]
) -> None:
    """While both classes wait, best-effort gets at least its share of the last `window`
    grants (up to the grant being decided) and no more than it is owed; with one class
    waiting, that class gets the grant."""
    keeper = GrantShare(SloClassOptions(be_min_share=share, window=window))
    recent: list[SloClass] = []
    for w in waiting:
        rt, be = w in ("rt", "both"), w in ("be", "both")
        cls = keeper.next_class(rt, be)
        assert cls is not None
        if w != "both":
            assert cls == w
        else:
            seen = recent[-window:]
            owed = seen.count("be") < share * (len(seen) + 1)
            assert cls == ("be" if owed else "rt")
        keeper.granted(cls)
        recent.append(cls)
        seen = recent[-window:]
        assert keeper.be_share == pytest.approx(seen.count("be") / len(seen))
    assert keeper.next_class(False, False) is None


@settings(max_examples=30, deadline=None)
@given(st.floats(0.0, 1.0), st.integers(10, 200))
def test_with_both_always_waiting_best_effort_gets_its_share(share: float, window: int) -> None:
    keeper = GrantShare(SloClassOptions(be_min_share=share, window=window))
    grants = []
    for _ in range(10 * window):
        cls = keeper.next_class(True, True)
        assert cls is not None
        keeper.granted(cls)
        grants.append(cls)
    last = grants[-window:]
    # The floor, to within the grant being decided (the rule counts it in: n + 1).
    assert share * window - 1 <= last.count("be") <= share * (window + 1) + 1


def test_engine_rank_class_of_and_class_priority() -> None:
    o = SloClassOptions()
    assert engine_rank(5.0, "rt", o) == 5.0 - 1e9
    assert engine_rank(5.0, "be", o) == 5.0
    assert engine_rank(1e6, "rt", o) < engine_rank(-1e6, "be", o)
    assert class_of("rt", "be") == "rt"
    assert class_of(None, "rt") == "rt"
    assert class_of(None, None) == "be"
    assert class_priority("vllm-priority", "rt") < class_priority("vllm-priority", "be")
    assert class_priority("vllm", "rt") == class_priority("vllm", "be") == 0.0


# The gateway -------------------------------------------------------------------------------------


def test_real_time_calls_overtake_queued_best_effort_ones_and_lead_at_the_engine(
    fake: tuple[FakeUpstream, str],  # noqa: F811
) -> None:
    up, url = fake
    up.gate = threading.Event()  # be0 holds the one slot until released
    with gateway(url, concurrency=1, policy="vllm", be_min_share=0.0) as (gw, base):

        def call(i: int, cls: str) -> str:
            heads = {"x-hermes-app-id": f"{cls}{i}", "x-hermes-slo-class": cls}
            with client(base, **heads) as c:
                c.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": f"{cls}{i}"}], max_tokens=2
                )
            return f"{cls}{i}"

        def wait_for(what: str, ok: Callable[[], bool]) -> None:  # steps, not timings
            deadline = time.monotonic() + 30
            while not ok():
                assert time.monotonic() < deadline, f"never {what}"
                time.sleep(0.005)

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            first = pool.submit(call, 0, "be")  # takes the slot
            wait_for("be0 in the engine", lambda: up.active == 1)
            later = [pool.submit(call, i, "be") for i in range(1, 4)]
            # best-effort calls queued before the real-time ones arrive
            wait_for("be1..be3 queued", lambda: gw.dispatcher.queued == 3)
            rts = [pool.submit(call, i, "rt") for i in range(2)]
            wait_for("rt0, rt1 queued", lambda: gw.dispatcher.queued == 5)
            up.gate.set()
            for f in [first, *later, *rts]:
                f.result(timeout=30)
    served = [b["messages"][0]["content"] for b in up.seen]
    assert served[0] == "be0"
    assert set(served[1:3]) == {"rt0", "rt1"}  # ahead of be1..be3, which queued first
    priority = {b["messages"][0]["content"]: b["priority"] for b in up.seen}
    assert max(priority["rt0"], priority["rt1"]) < min(priority[f"be{i}"] for i in range(4))
