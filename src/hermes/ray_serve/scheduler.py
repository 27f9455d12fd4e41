"""The scheduler actor's state and decisions, without Ray: the single-process gateway's own
`Gateway` (built by `build_gateway`: the same policy object, `Dispatcher`, application tracker,
learning, run store, ranking rounds, aging and health checks) minus its HTTP side, driven by
batches of `Submit`/`Release` from ingress replicas. Each replica collects its decisions
(`Granted`, `Refused`) from a mailbox, with the replies to its batches or by a long poll.

A replica that stops asking (`replica_timeout_s`: it died) loses its calls: those waiting
leave the queue, those running give their slots back; nothing else is touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from hermes.gateway.build import build_gateway
from hermes.gateway.calls import Call
from hermes.gateway.config import GatewayConfig
from hermes.gateway.errors import DOMAIN_ERRORS, ApiError, UpstreamError, kind_of
from hermes.gateway.server import Gateway
from hermes.gateway.supervise import every
from hermes.policies.slo_class import engine_rank
from hermes.ray_serve.protocol import (
    Granted,
    HttpAnswer,
    HttpCall,
    Op,
    Refused,
    Release,
    Reply,
    Retry,
    Submit,
)

log = logging.getLogger("hermes.ray")

TICK_S = 0.25  # how often queue timeouts and silent replicas are looked for


@dataclass(slots=True, eq=False)
class _Replica:
    last_seen_s: float
    epoch: str  # the scheduler's epoch, and how often this replica was given up before
    calls: dict[int, Call] = field(default_factory=dict)
    granted: list[Granted] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    ready: asyncio.Event = field(default_factory=asyncio.Event)


def refusal(call_id: int, exc: BaseException) -> Refused:
    """`exc` as the error its call's client gets, in the gateway's table's terms."""
    kind = kind_of(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
    param = exc.param if isinstance(exc, ApiError) else None
    return Refused(call_id, kind.status, kind.type, str(exc), param, dict(kind.headers))


class SchedulerCore:
    """One gateway's queue and applications, shared by ingress replicas (by name)."""

    def __init__(self, gateway: Gateway, replica_timeout_s: float = 5.0) -> None:
        self.gateway = gateway
        self.replica_timeout_s = replica_timeout_s
        self.epoch = uuid.uuid4().hex  # a restarted actor is a new epoch
        self.replicas: dict[str, _Replica] = {}
        self.lost_replicas = 0
        self._slo = gateway.config.slo_class_options()
        # Calls in the order they came, for queue timeouts (the oldest first).
        self._arrivals: deque[tuple[_Replica, int, Call]] = deque()
        self._retries: set[asyncio.Task[None]] = set()
        self._given_up: dict[str, int] = {}  # by replica name
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, config: GatewayConfig) -> SchedulerCore:
        """Built as the single-process gateway is: graphs from the run store (after a restart,
        what it learned so far), online learning."""
        return cls(build_gateway(config), config.ray.replica_timeout_s)

    async def start(self) -> None:
        await self.gateway.start()
        fails = self.gateway.metrics.task_failures
        self._task = asyncio.get_running_loop().create_task(
            every("ray_scheduler_tick", TICK_S, self.tick, fails)
        )

    async def stop(self) -> None:
        """Fail what waits (its replicas hear of it), store what is in progress, close."""
        for task in [self._task, *self._retries]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.gateway.stop(drain_s=0.0)

    # What replicas call ------------------------------------------------------------------------

    async def step(self, replica: str, ops: Sequence[Op]) -> Reply:
        """Carry out `replica`'s batch in order; the decisions it has waiting, those its
        releases made included."""
        r = self._seen(replica)
        for op in ops:
            if isinstance(op, Submit):
                self._submit(r, op)
            elif isinstance(op, Release):
                self._release(r, op)
            else:
                self._retry(r, op)
        # The grants made above reach `_decided` by the futures' callbacks, which the event
        # loop runs at its next turn: one turn, and they are in this reply.
        await asyncio.sleep(0)
        return self._take(r)

    async def poll(self, replica: str, wait_s: float) -> Reply:
        """The decisions `replica` has waiting, after up to `wait_s` for one to come."""
        r = self._seen(replica)
        if not (r.granted or r.refused):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await r.ready.wait()
        return self._take(r)

    async def http(self, request: HttpCall) -> HttpAnswer:
        """One HTTP request (not a completion call) answered by the gateway's own routes, as
        the single-process gateway answers it: application events and finishes, tool grants,
        /metrics, the dashboard's state. Small answers only: the body is gathered whole."""
        method, path, query, headers, body = request
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query,
            "root_path": "",
            "headers": headers,
            "client": None,
            "server": None,
        }
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.Event().wait()  # no disconnect: the replica holds the client
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        answer: dict[str, Any] = {"status": 500, "headers": [], "body": b""}

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                answer["status"], answer["headers"] = message["status"], message["headers"]
            elif message["type"] == "http.response.body":
                answer["body"] += message.get("body", b"")

        await self.gateway.app(scope, receive, send)
        return answer["status"], list(answer["headers"]), answer["body"]

    def stats(self) -> dict[str, Any]:
        d = self.gateway.dispatcher
        return {
            "epoch": self.epoch,
            "queued": d.queued,
            "running": d.running,
            "replicas": {name: len(r.calls) for name, r in self.replicas.items()},
            "lost_replicas": self.lost_replicas,
            "models": d.models(),
            "graphs": sorted(self.gateway.graphs),
        }

    # Periodic work ---------------------------------------------------------------------------

    def tick(self) -> None:
        """Replicas silent for `replica_timeout_s` lose their calls; calls that waited
        `queue_timeout_s` get their error. O(replicas + calls timed out or gone since)."""
        now = self.gateway.clock()
        for name, r in list(self.replicas.items()):
            if now - r.last_seen_s > self.replica_timeout_s:
                self.lose(name, r, f"silent for {self.replica_timeout_s:.1f} s")
        lifecycle = self.gateway.calls
        limit = self.gateway.config.queue_timeout_s
        arrivals = self._arrivals
        while arrivals:
            r, call_id, call = arrivals[0]
            if r.calls.get(call_id) is not call or call.upstream is not None or call.future.done():
                arrivals.popleft()  # granted or ended: nothing to time out
                continue
            if now - call.arrived_s < limit:
                break  # and every later one is younger
            arrivals.popleft()
            error = lifecycle.timed_out(call)
            del r.calls[call_id]
            lifecycle.account(call, {}, "error")
            r.refused.append(refusal(call_id, error))
            r.ready.set()

    # Internals -------------------------------------------------------------------------------

    def _seen(self, replica: str) -> _Replica:
        now = self.gateway.clock()
        r = self.replicas.get(replica)
        if r is None:
            # A replica given up for dead that was only slow comes back under a new epoch:
            # it queues its waiting calls again (they left the queue when it was given up).
            epoch = f"{self.epoch}.{self._given_up.get(replica, 0)}"
            r = self.replicas[replica] = _Replica(now, epoch)
        r.last_seen_s = now
        return r

    def _take(self, r: _Replica) -> Reply:
        reply = Reply(r.epoch, r.granted, r.refused)
        r.granted, r.refused = [], []
        r.ready.clear()
        return reply

    def _submit(self, r: _Replica, op: Submit) -> None:
        try:
            call = self.gateway.admit(op.ctx, op.model, op.prompt_tokens)
        except (ApiError, *DOMAIN_ERRORS) as e:
            r.refused.append(refusal(op.call_id, e))
            return
        r.calls[op.call_id] = call
        self._arrivals.append((r, op.call_id, call))
        if call.future.done():  # granted at once: no wait for the loop's callback
            self._decided(r, op.call_id, call, call.future)
        else:
            call.future.add_done_callback(partial(self._decided, r, op.call_id, call))

    def _decided(self, r: _Replica, call_id: int, call: Call, fut: asyncio.Future[str]) -> None:
        if r.calls.get(call_id) is not call or fut.cancelled():
            return  # released (or lost) meanwhile
        error = fut.exception()
        if error is not None:  # failed while waiting: its model down, the scheduler stopping
            del r.calls[call_id]
            self.gateway.calls.account(call, {}, "error")
            r.refused.append(refusal(call_id, error))
        else:
            g = self.gateway
            g.metrics.queue_time.observe(g.clock() - call.arrived_s)
            r.granted.append(self._grant(call_id, call, fut.result()))
        r.ready.set()

    def _grant(self, call_id: int, call: Call, upstream: str) -> Granted:
        rank = call.waiting.priority if call.waiting is not None else 0.0
        rank = engine_rank(rank, "rt" if call.rt else "be", self._slo)
        extra = self.gateway.forwarder.cache_fields(call, upstream)
        deadline = call.ticket.app.view.deadline_s
        left = None if deadline is None else deadline - self.gateway.clock()
        return Granted(call_id, upstream, rank, extra, left)

    def _retry(self, r: _Replica, op: Retry) -> None:
        call = r.calls.get(op.call_id)
        if call is not None and call.upstream == op.upstream:
            task = asyncio.get_running_loop().create_task(self._retried(r, op, call))
            self._retries.add(task)
            task.add_done_callback(self._retries.discard)

    async def _retried(self, r: _Replica, op: Retry, call: Call) -> None:
        """The single-process gateway's retry: the upstream marked down, the call queued
        once more, first in line, for another (`CallLifecycle.retry_elsewhere`)."""
        error: Exception | None = None
        try:
            upstream = await self.gateway.calls.retry_elsewhere(call, op.upstream, "connect")
        except ApiError as e:
            upstream, error = None, e
        if r.calls.get(op.call_id) is not call:
            return  # released or lost meanwhile
        if upstream is None:
            del r.calls[op.call_id]
            self.gateway.calls.account(call, {}, "error")
            why = error or UpstreamError(f"upstream {op.upstream!r} unavailable, none to retry on")
            r.refused.append(refusal(op.call_id, why))
        else:
            r.granted.append(self._grant(op.call_id, call, upstream))
        r.ready.set()

    def _release(self, r: _Replica, op: Release) -> None:
        call = r.calls.pop(op.call_id, None)
        if call is not None:  # else one the actor never knew (an earlier epoch's)
            self.gateway.calls.account(call, op.usage, op.finish)

    def lose(self, name: str, r: _Replica, why: str) -> None:
        """Replica `name` (`r`) is given up (`why`): its calls end, nothing else is touched;
        if it was only slow, it comes back under a new epoch."""
        log.warning("ingress replica %s %s: its %d calls end", name, why, len(r.calls))
        del self.replicas[name]
        self.lost_replicas += 1
        self._given_up[name] = self._given_up.get(name, 0) + 1
        for call in r.calls.values():
            self.gateway.calls.account(call, {}, "abort")
        r.calls.clear()
