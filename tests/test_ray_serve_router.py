"""`HermesRequestRouter`'s choice (`place`), pure: an application goes back to its replica
unless that one has more than `max_excess` requests over the least loaded; otherwise (and
at first) to the replica it hashes to among those near the least loaded, the same in every
router; a call of no application to the least loaded first. Every candidate appears once."""

from __future__ import annotations

import asyncio
import random
import warnings

import pytest
from hypothesis import given
from hypothesis import strategies as st

with warnings.catch_warnings():  # Ray's own deprecations, at its import
    warnings.simplefilter("ignore", DeprecationWarning)
    pytest.importorskip("ray.serve")

from hermes.ray_serve.request_router import affinity_score, place

replicas = st.lists(st.text("abcdef0123", min_size=1, max_size=6), min_size=1, max_size=8)
loads_of = replicas.flatmap(
    lambda names: st.fixed_dictionaries({n: st.integers(0, 40) for n in names})
)


def _first(ranks: list[list[str]]) -> str:
    return ranks[0][0]


@given(loads_of, st.text(max_size=8), st.integers(0, 10), st.data())
def test_every_candidate_once_and_the_first_within_the_guard(
    loads: dict[str, int], session: str, max_excess: int, data: st.DataObject
) -> None:
    home = data.draw(st.sampled_from([None, "gone", *loads]))
    ranks = place(session, home, loads, max_excess)
    flat = [r for rank in ranks for r in rank]
    assert sorted(flat) == sorted(loads)
    first = _first(ranks)
    if session:
        assert loads[first] - min(loads.values()) <= max_excess
        # The home replica is kept exactly when it is within the guard.
        if home in loads:
            assert (first == home) == (loads[home] - min(loads.values()) <= max_excess)
    else:
        assert loads[first] == min(loads.values())
        assert ranks == [sorted(loads, key=lambda r: (loads[r], r))]


@given(loads_of, st.text(min_size=1, max_size=8), st.integers(0, 10), st.randoms())
def test_a_new_application_lands_alike_in_every_router(
    loads: dict[str, int], session: str, max_excess: int, rnd: random.Random
) -> None:
    """Two routers (two ingress replicas) that see the candidates in different orders place
    an application's first call on the same replica."""
    names = list(loads)
    rnd.shuffle(names)
    shuffled = {n: loads[n] for n in names}
    assert place(session, None, loads, max_excess) == place(session, None, shuffled, max_excess)


def test_the_home_replica_is_left_only_past_the_guard() -> None:
    loads = {"r1": 10, "r2": 2}
    assert place("app", "r1", loads, max_excess=8) == [["r1"], ["r2"]]
    assert place("app", "r1", loads, max_excess=7) == [["r2"], ["r1"]]
    # No application: the least loaded first, all in one rank (Serve takes the shortest queue).
    assert place("", "r1", loads, max_excess=8) == [["r2", "r1"]]
    assert place("app", None, {}, 8) == []


def test_applications_spread_over_equal_replicas() -> None:
    """With the replicas equally loaded, first calls of many applications hash to all of them
    (not all to one), and the score is the same in every process (no salted hash)."""
    loads = {f"r{i}": 0 for i in range(4)}
    homes = [_first(place(f"app-{i}", None, loads, 8)) for i in range(200)]
    counts = [homes.count(r) for r in loads]
    assert min(counts) >= 25, counts
    assert affinity_score("app-1", "r0") == affinity_score("app-1", "r0")
    assert affinity_score("app-1", "r0") == 10102331321181384831  # blake2b, fixed


class _Replica:
    """What `choose_replicas` reads of Serve's `RunningReplica`: its id."""

    def __init__(self, name: str) -> None:
        from ray.serve._private.common import DeploymentID, ReplicaID

        self.replica_id = ReplicaID(name, DeploymentID(name="E", app_name="llm"))


def test_the_router_remembers_an_application_and_moves_it_past_the_guard() -> None:
    """The router object as Serve drives it (no Ray needed): `choose_replicas`, then
    `on_request_routed` and `on_request_completed`, its loads its own requests in flight
    until Serve's queue-length cache has a figure."""
    from ray.serve._private.common import DeploymentHandleSource, DeploymentID, RequestMetadata
    from ray.serve.request_router import PendingRequest

    from hermes.ray_serve.request_router import HermesRequestRouter

    async def main() -> None:
        router = HermesRequestRouter(
            deployment_id=DeploymentID(name="E", app_name="llm"),
            handle_source=DeploymentHandleSource.UNKNOWN,
        )
        router.initialize_state(max_excess=2)
        a, b = _Replica("a"), _Replica("b")
        ids = iter(range(100))

        def request(session: str) -> PendingRequest:
            n = str(next(ids))
            return PendingRequest([], {}, RequestMetadata(n, n, session_id=session))

        async def send(session: str) -> tuple[str, str]:
            """The replica chosen first for a request of `session`, routed there."""
            pr = request(session)
            chosen = (await router.choose_replicas([a, b], pr))[0][0]  # type: ignore[list-item]
            router.on_request_routed(pr, chosen.replica_id, None)
            return chosen.replica_id.unique_id, pr.metadata.internal_request_id

        home, first_id = await send("s1")
        other = "b" if home == "a" else "a"
        assert (await send("s1"))[0] == home  # remembered
        assert router.running[home] == 2
        for _ in range(2):  # calls of no application go to the least loaded: `other`
            assert (await send(""))[0] == other
        # `home` 2 over `other`: within the guard; 3 over it: s1 moves, and stays moved.
        assert (await send("s1"))[0] == home
        assert (router.running[home], router.running[other]) == (3, 2)
        router.on_request_routed(request(""), _Replica(home).replica_id, None)
        assert router.running[home] - router.running[other] == 2
        router.on_request_routed(request(""), _Replica(home).replica_id, None)
        assert (await send("s1"))[0] == other
        assert (router.kept, router.moved) == (2, 1)
        assert router.homes["s1"] == other
        # A request that ends gives its load back; one Serve's cache knows of wins.
        router.on_request_completed(_Replica(home).replica_id, first_id)
        assert router.running[home] == 4
        router.replica_queue_len_cache.update(_Replica(home).replica_id, 0)
        assert router.load(_Replica(home)) == 0  # type: ignore[arg-type]

    asyncio.run(main())


def test_router_kwargs_are_checked() -> None:
    from ray.serve._private.common import DeploymentHandleSource, DeploymentID

    from hermes.ray_serve.request_router import HermesRequestRouter

    router = HermesRequestRouter(
        deployment_id=DeploymentID(name="E", app_name="llm"),
        handle_source=DeploymentHandleSource.UNKNOWN,
    )
    with pytest.raises(ValueError, match="max_excess must be a whole number >= 0"):
        router.initialize_state(max_excess=-1)
    with pytest.raises(ValueError, match=r"unknown request_router_kwargs \['imbalance'\]"):
        router.initialize_state(imbalance=3)
