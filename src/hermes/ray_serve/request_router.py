"""`HermesRequestRouter`: Ray Serve's request-router extension point, for the engine
deployments Hermes calls through a `DeploymentHandle` (`url: serve://APP/DEPLOYMENT`; a Ray
Serve LLM deployment, or the emulator deployment). Put it on the deployment:

    @serve.deployment(request_router_config=RequestRouterConfig(
        request_router_class="hermes.ray_serve.request_router.HermesRequestRouter",
        request_router_kwargs={"max_excess": 8}))

Placement (`place`, pure): a call of an application (the handle's `session_id`, which the
ingress sets to the application id) goes back to the replica that served the application
before, where the engine's prefix cache still holds its history, unless that replica has more
than `max_excess` requests over the least loaded one; then, and for an application's first
call, to the replica the application hashes to among those within `max_excess` of the least
loaded (rendezvous hashing: every ingress replica has a router of its own, and they agree on
it without talking). A call with no application goes to the least loaded.

What it does not control: which pending request goes first. Ray Serve's routing tasks take
pending requests first come, first served (`RequestRouter._pending_requests_to_route`, not
part of the public API). Hermes needs no more: the scheduler grants calls in policy order and
only as many as the backend's `concurrency`, so with `concurrency` at most replicas x
`max_ongoing_requests` no request waits in Serve's router and the order it sees is the
policy's. The rank itself reaches the engine as the request's `priority` (vLLM with
`--scheduling-policy priority` orders its own queue by it).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, defaultdict
from collections.abc import Mapping
from typing import Any

from ray.serve.request_router import (
    PendingRequest,
    ReplicaID,
    RequestRouter,
    RunningReplica,
)

DEFAULT_MAX_EXCESS = 8  # as the single-process gateway's session_max_excess
_MAX_SESSIONS = 100_000  # applications whose replica is remembered (least recent forgotten)


def affinity_score(session: str, replica: str) -> int:
    """The rendezvous-hash score of `replica` for `session`: the same in every process
    (Python's own `hash` of a string is salted per process)."""
    digest = hashlib.blake2b(f"{session}\0{replica}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def place(
    session: str, home: str | None, loads: Mapping[str, int], max_excess: int
) -> list[list[str]]:
    """The replicas for a request in ranks, the most preferred first (Ray Serve tries each
    rank in turn and takes its replica with the shortest queue that accepts the request).

    `session`: the application ("" for none); `home`: the replica that served it before, if
    any; `loads`: requests on each candidate replica. Every candidate appears once."""
    if not loads:
        return []
    by_load = sorted(loads, key=lambda r: (loads[r], r))
    if not session:
        return [by_load]
    least = loads[by_load[0]]
    near = [r for r in by_load if loads[r] - least <= max_excess]
    first = home if home in near else max(near, key=lambda r: (affinity_score(session, r), r))
    rest = [r for r in by_load if r != first]
    return [[first], rest] if rest else [[first]]


class HermesRequestRouter(RequestRouter):
    """Session affinity with a load guard (`place`); kwargs: `max_excess` (default 8)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.initialize_state()

    def initialize_state(self, max_excess: int = DEFAULT_MAX_EXCESS, **kwargs: Any) -> None:
        if kwargs:
            raise ValueError(f"HermesRequestRouter: unknown request_router_kwargs {sorted(kwargs)}")
        if isinstance(max_excess, bool) or not isinstance(max_excess, int) or max_excess < 0:
            raise ValueError(
                f"HermesRequestRouter: max_excess must be a whole number >= 0, got {max_excess!r}"
            )
        self.max_excess = max_excess
        self.homes: OrderedDict[str, str] = OrderedDict()
        # This router's own requests in flight, by replica: the load where Serve's queue-length
        # cache has no fresh figure.
        self.running: defaultdict[str, int] = defaultdict(int)
        self._where: dict[str, str] = {}  # internal request id -> replica
        self.kept = self.moved = 0

    def load(self, replica: RunningReplica) -> int:
        cached = self.replica_queue_len_cache.get(replica.replica_id)
        return self.running[replica.replica_id.unique_id] if cached is None else cached

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        loads = {uid: self.load(r) for uid, r in by_id.items()}
        session = pending_request.metadata.session_id if pending_request is not None else ""
        ranks = place(session, self.homes.get(session), loads, self.max_excess)
        return [[by_id[uid] for uid in rank] for rank in ranks]

    def on_request_routed(
        self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any
    ) -> None:
        uid = replica_id.unique_id
        self.running[uid] += 1
        self._where[pending_request.metadata.internal_request_id] = uid
        session = pending_request.metadata.session_id
        if not session:
            return
        home = self.homes.get(session)
        if home is not None:
            if home == uid:
                self.kept += 1
            else:
                self.moved += 1
        self.homes[session] = uid
        self.homes.move_to_end(session)
        if len(self.homes) > _MAX_SESSIONS:
            self.homes.popitem(last=False)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        uid = self._where.pop(internal_request_id, None)
        if uid is not None and self.running[uid] > 0:
            self.running[uid] -= 1
