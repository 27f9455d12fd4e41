"""The scheduler as a Ray actor: one named, async actor holding a `SchedulerCore`, restarted by
Ray after a failure (`scheduler_max_restarts`); a restart builds the core afresh, with the
graphs of the run store, under a new epoch (its replicas queue their waiting calls again).
Calls are not retried by Ray (`max_task_retries=0`): a replica decides what to send again."""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import Sequence
from typing import Any

import ray

from hermes.gateway.config import GatewayConfig, gateway_config_from_dict
from hermes.ray_serve.protocol import (
    HttpAnswer,
    HttpCall,
    Op,
    Reply,
    Wire,
    ops_from_wire,
    ops_to_wire,
    reply_from_wire,
    reply_to_wire,
)
from hermes.ray_serve.scheduler import SchedulerCore
from hermes.ray_serve.socket_link import Address, SchedulerServer

# The actor holds every waiting call (10,000 and more), each a few dozen objects that live
# until granted: most survive the young collections, and at Python's default thresholds the
# full collections that follow traversed them (and Ray's and the gateway's start-up objects)
# often enough to take half the actor's CPU per call (measured, docs/benchmarks.md "Ray").
# Start-up objects are frozen out of collection; collections come every 10,000 allocations.
GC_THRESHOLDS = (10_000, 10, 10)


class SchedulerActor:
    """Ray's side of `SchedulerCore`: the core starts on the actor's event loop with the
    first call."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._config = gateway_config_from_dict(config, "the scheduler actor's config")
        self._core: SchedulerCore | None = None
        self._lock: asyncio.Lock | None = None
        self._server: SchedulerServer | None = None

    async def _ready(self) -> SchedulerCore:
        if self._core is None:
            self._lock = self._lock or asyncio.Lock()
            async with self._lock:
                if self._core is None:
                    core = SchedulerCore.from_config(self._config)
                    await core.start()
                    gc.freeze()  # this process is the actor's own
                    gc.set_threshold(*GC_THRESHOLDS)
                    self._core = core
        return self._core

    async def step(self, replica: str, ops: list[Wire]) -> Wire:
        core = await self._ready()
        return reply_to_wire(await core.step(replica, ops_from_wire(ops)))

    async def poll(self, replica: str, wait_s: float) -> Wire:
        return reply_to_wire(await (await self._ready()).poll(replica, wait_s))

    async def http(self, request: HttpCall) -> HttpAnswer:
        return await (await self._ready()).http(request)

    async def address(self) -> Address:
        """Where `step` and `poll` are served over TCP (`scheduler_link: tcp`), and the token
        to open with; on this node's address when replicas may be on others."""
        core = await self._ready()
        if self._server is None:
            local = self._config.ray.address is None
            host = "127.0.0.1" if local else str(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]
            self._server = SchedulerServer(core, host)
        return await self._server.start()

    async def stats(self) -> dict[str, Any]:
        # The actor's CPU seconds so far: its rate per CPU second, on a busy machine.
        return (await self._ready()).stats() | {"pid": os.getpid(), "cpu_s": time.process_time()}

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.close()
        if self._core is not None:
            await self._core.stop()


def start_scheduler(config: GatewayConfig, name: str) -> Any:
    """The scheduler actor `name` (in the config's Ray namespace), started and answering."""
    opts = config.ray
    cls: Any = ray.remote(SchedulerActor)  # Ray's handles are untyped here
    handle = cls.options(
        name=name,
        namespace=opts.namespace,
        max_restarts=opts.scheduler_max_restarts,
        max_task_retries=0,
        num_cpus=opts.replica_num_cpus,
        max_concurrency=10_000,  # long polls wait here, one per replica
    ).remote(config.model_dump(mode="json"))
    ray.get(handle.stats.remote())
    return handle


class ActorRemote:
    """`SchedulerRemote` over the actor's handle."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def step(self, replica: str, ops: Sequence[Op]) -> Reply:
        return reply_from_wire(await self.handle.step.remote(replica, ops_to_wire(ops)))

    async def poll(self, replica: str, wait_s: float) -> Reply:
        return reply_from_wire(await self.handle.poll.remote(replica, wait_s))

    async def http(self, request: HttpCall) -> HttpAnswer:
        answer: HttpAnswer = await self.handle.http.remote(request)
        return answer

    async def address(self) -> Address:
        host, port, token = await self.handle.address.remote()
        return str(host), int(port), str(token)
