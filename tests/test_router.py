"""Routers: which replica takes the next request, from load snapshots alone."""

from __future__ import annotations

import pytest

from hermes.cluster.router import (
    ROUTERS,
    LeastKV,
    LeastOutstanding,
    ReplicaLoad,
    RoundRobin,
    RouteRequest,
    SessionAffinity,
    make_router,
)


def load(outstanding: int = 0, kv_used: float = 0.0, queued_tokens: int = 0) -> ReplicaLoad:
    return ReplicaLoad(outstanding=outstanding, kv_used=kv_used, queued_tokens=queued_tokens)


def test_round_robin_cycles_through_replicas_whatever_their_load() -> None:
    r = RoundRobin()
    replicas = [load(outstanding=100), load(), load(kv_used=0.9)]
    assert [r.choose(replicas) for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_round_robin_keeps_cycling_when_the_replica_count_shrinks() -> None:
    r = RoundRobin()
    assert [r.choose([load()] * 3) for _ in range(2)] == [0, 1]
    # The next index (2) is past the end of two replicas: it wraps instead of failing.
    assert [r.choose([load()] * 2) for _ in range(3)] == [0, 1, 0]


def test_round_robin_instances_are_independent() -> None:
    a, b = RoundRobin(), RoundRobin()
    replicas = [load(), load()]
    assert a.choose(replicas) == 0
    assert a.choose(replicas) == 1
    assert b.choose(replicas) == 0


def test_least_outstanding_picks_the_fewest() -> None:
    replicas = [load(outstanding=5), load(outstanding=2), load(outstanding=9)]
    assert LeastOutstanding().choose(replicas) == 1


def test_least_outstanding_ignores_kv_and_queued_tokens() -> None:
    replicas = [
        load(outstanding=3, kv_used=0.0),
        load(outstanding=1, kv_used=0.99, queued_tokens=10**6),
    ]
    assert LeastOutstanding().choose(replicas) == 1


def test_least_outstanding_ties_go_to_the_lowest_index() -> None:
    replicas = [load(outstanding=4), load(outstanding=2), load(outstanding=7), load(outstanding=2)]
    router = LeastOutstanding()
    assert router.choose(replicas) == 1
    assert router.choose(replicas) == 1  # stateless: the same snapshot, the same answer
    assert router.choose([load(outstanding=0)] * 3) == 0


def test_least_kv_prefers_lower_kv_use() -> None:
    replicas = [load(kv_used=0.5), load(kv_used=0.2, queued_tokens=5000), load(kv_used=0.7)]
    assert LeastKV().choose(replicas) == 1


def test_least_kv_breaks_kv_ties_by_fewer_queued_tokens() -> None:
    replicas = [load(kv_used=0.3, queued_tokens=900), load(kv_used=0.3, queued_tokens=100)]
    assert LeastKV().choose(replicas) == 1


def test_least_kv_ignores_outstanding_and_full_ties_go_to_the_lowest_index() -> None:
    replicas = [
        load(outstanding=50, kv_used=0.1, queued_tokens=10),
        load(outstanding=0, kv_used=0.4, queued_tokens=0),
        load(outstanding=1, kv_used=0.1, queued_tokens=10),
    ]
    assert LeastKV().choose(replicas) == 0


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("round-robin", RoundRobin),
        ("least-outstanding", LeastOutstanding),
        ("least-kv", LeastKV),
        ("session", SessionAffinity),
    ],
)
def test_make_router_by_name(name: str, cls: type) -> None:
    assert isinstance(make_router(name), cls)


def test_make_router_gives_a_fresh_router_each_time() -> None:
    a, b = make_router("round-robin"), make_router("round-robin")
    assert a is not b
    assert a.choose([load(), load()]) == 0
    assert b.choose([load(), load()]) == 0


def test_an_unknown_router_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown router 'random'") as info:
        make_router("random")
    assert "known: round-robin, least-outstanding, least-kv, session" in str(info.value)
    assert {"round-robin", "least-outstanding", "least-kv", "session"} <= set(ROUTERS)


def loads(*outstanding: int) -> list[ReplicaLoad]:
    return [load(outstanding=n) for n in outstanding]


def test_session_keeps_an_application_on_the_replica_that_served_it() -> None:
    r = SessionAffinity(max_excess=2)
    a, b = RouteRequest("app-a"), RouteRequest("app-b")
    assert r.choose(loads(0, 0, 0), a) == 0  # first call: the least loaded
    assert r.choose(loads(1, 0, 0), b) == 1
    # Busier than the least loaded, within the bound: still its replica.
    assert r.choose(loads(3, 1, 1), a) == 0
    assert r.choose(loads(3, 2, 0), b) == 1
    assert (r.sticky, r.moved) == (2, 0)


def test_session_load_guard_moves_an_application_to_the_least_loaded_and_it_stays() -> None:
    r = SessionAffinity(max_excess=2)
    a = RouteRequest("a")
    assert r.choose(loads(0, 0), a) == 0
    assert r.choose(loads(3, 0), a) == 1  # 3 over the least loaded: more than 2
    assert r.moved == 1
    assert r.choose(loads(0, 2), a) == 1  # its replica now
    r.forget("a")
    assert r.choose(loads(0, 2), a) == 0  # forgotten: a first call again


def test_session_without_an_application_is_least_outstanding() -> None:
    r = SessionAffinity()
    assert r.choose(loads(4, 1, 1)) == 1
    assert r.choose(loads(4, 1, 1), RouteRequest(None)) == 1
    assert (r.sticky, r.moved) == (0, 0)


def test_session_replica_gone_and_bad_bound() -> None:
    r = SessionAffinity()
    r.choose(loads(5, 5, 0), RouteRequest("a"))  # its replica is 2
    assert r.choose(loads(1, 0), RouteRequest("a")) == 1  # only 2 replicas now
    with pytest.raises(ValueError, match="max_excess must be >= 0, got -1"):
        SessionAffinity(-1)


def test_routers_other_than_session_ignore_the_request() -> None:
    replicas = loads(3, 1, 2)
    for name in ("round-robin", "least-outstanding", "least-kv"):
        assert make_router(name).choose(replicas, RouteRequest("a")) == make_router(name).choose(
            replicas
        )
