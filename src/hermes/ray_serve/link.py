"""An ingress replica's line to the scheduler: its calls' submits and releases go in batches
(a few in flight at once; what comes while they are goes in the next), and a long poll
brings the grants that other replicas' releases make. The actor is never asked per token, nor
per call more than twice.

Faults: a batch that fails (the actor died) is sent again, its releases dropped (the actor
that knew those calls is gone). A reply from a new incarnation of the actor (another
`epoch`: it restarted and forgot every call) has the calls still waiting here queued again,
in the order they came; calls running upstream run on. If the scheduler cannot be reached
for `scheduler_timeout_s`, the calls waiting get 503: none waits without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from hermes.gateway.context import CallContext
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
from hermes.types import Clock

log = logging.getLogger("hermes.ray")

RETRY_S = 0.1  # between tries of a batch the scheduler did not take
IN_FLIGHT = 4  # batches sent and not answered yet


class SchedulerRemote(Protocol):
    """The scheduler's calls (`SchedulerCore.step`, `poll`, `http`), however it is reached."""

    async def step(self, replica: str, ops: Sequence[Op]) -> Reply: ...

    async def poll(self, replica: str, wait_s: float) -> Reply: ...

    async def http(self, request: HttpCall) -> HttpAnswer: ...


class RefusedError(Exception):
    """The scheduler ended the call with an error (`refused`) before it was granted."""

    def __init__(self, refused: Refused) -> None:
        super().__init__(refused.message)
        self.refused = refused


@dataclass(slots=True, eq=False)
class Pending:
    """A call of this replica, from its submit to its grant or refusal."""

    submit: Submit
    future: asyncio.Future[Granted]
    epoch: str | None = None  # the incarnation of the scheduler that has it queued


class SchedulerLink:
    def __init__(
        self,
        remote: SchedulerRemote,
        replica: str,
        poll_s: float = 1.0,
        scheduler_timeout_s: float = 30.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.remote = remote
        self.replica = replica
        self.poll_s = poll_s
        self.scheduler_timeout_s = scheduler_timeout_s
        self.clock = clock
        self.epoch: str | None = None
        self.restarts_seen = 0
        self._ids = itertools.count()
        self._waiting: dict[int, Pending] = {}
        self._open: set[int] = set()  # submitted, neither released nor refused
        self._ops: list[Op] = []
        self._wake = asyncio.Event()
        self._last_ok = clock()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._last_ok = self.clock()
        for work in (self._pump(), self._poller(), self._watchdog()):
            self._tasks.append(loop.create_task(work))

    async def close(self) -> None:
        """Stop; the calls still waiting get 503."""
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        self._fail_waiting("the gateway replica is shutting down")

    # Calls -----------------------------------------------------------------------------------

    def submit(self, ctx: CallContext, model: str, prompt_tokens: int) -> Pending:
        """Queue a call; its future holds the grant (or RefusedError)."""
        sub = Submit(next(self._ids), ctx, model, prompt_tokens)
        pending = Pending(sub, asyncio.get_running_loop().create_future())
        self._waiting[sub.call_id] = pending
        self._open.add(sub.call_id)
        self._send(sub)
        return pending

    def retry(self, submit: Submit, upstream: str) -> Pending:
        """The call (`submit`, granted `upstream`) could not reach it: queued once more, for
        another upstream; its future holds the new grant (or RefusedError)."""
        pending = Pending(submit, asyncio.get_running_loop().create_future())
        self._waiting[submit.call_id] = pending
        self._send(Retry(submit.call_id, upstream))
        return pending

    def release(self, call_id: int, finish: str, usage: dict[str, Any] | None = None) -> None:
        """The call ended (waiting or granted); once per call, later ones are ignored."""
        if call_id not in self._open:
            return
        self._open.discard(call_id)
        self._waiting.pop(call_id, None)
        self._send(Release(call_id, finish, usage or {}))

    # Internals -------------------------------------------------------------------------------

    def _send(self, op: Op) -> None:
        self._ops.append(op)
        self._wake.set()

    async def _pump(self) -> None:
        """Batches go as they form, up to `IN_FLIGHT` at once: a call's submit does not wait
        for the round trip of the release before it. The actor runs them in the order sent."""
        slots = asyncio.Semaphore(IN_FLIGHT)
        sending: set[asyncio.Task[None]] = set()
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                ops, self._ops = self._ops, []
                if not ops:
                    continue
                await slots.acquire()
                task = asyncio.get_running_loop().create_task(self._send_batch(ops))
                sending.add(task)

                def sent(t: asyncio.Task[None]) -> None:
                    sending.discard(t)
                    slots.release()

                task.add_done_callback(sent)
        finally:
            for t in list(sending):
                t.cancel()

    async def _send_batch(self, ops: list[Op]) -> None:
        try:
            reply = await self.remote.step(self.replica, ops)
        except Exception as e:  # the actor died or restarts: the submits go again
            why = type(e).__name__
            log.warning("scheduler step failed (%s); %d ops retried", why, len(ops))
            await asyncio.sleep(RETRY_S)
            # The actor that knew these calls is gone: those still waiting queue anew.
            self._ops[:0] = [
                self._waiting[op.call_id].submit
                for op in ops
                if not isinstance(op, Release) and op.call_id in self._waiting
            ]
            self._wake.set()
            return
        for op in ops:
            if not isinstance(op, Release) and (p := self._waiting.get(op.call_id)) is not None:
                p.epoch = p.epoch or reply.epoch
        self._deliver(reply)

    async def _poller(self) -> None:
        while True:
            try:
                reply = await self.remote.poll(self.replica, self.poll_s)
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(RETRY_S)
                continue
            self._deliver(reply)

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.scheduler_timeout_s / 4))
            silent = self.clock() - self._last_ok
            if silent > self.scheduler_timeout_s and self._waiting:
                self._fail_waiting(f"the scheduler has not answered for {silent:.0f} s")

    def _deliver(self, reply: Reply) -> None:
        self._last_ok = self.clock()
        if reply.epoch != self.epoch:
            if self.epoch is not None:
                self._requeue(reply.epoch)
            self.epoch = reply.epoch
        for g in reply.granted:
            p = self._waiting.pop(g.call_id, None)
            if p is not None and not p.future.done():
                p.future.set_result(g)
        for r in reply.refused:
            p = self._waiting.pop(r.call_id, None)
            self._open.discard(r.call_id)  # the scheduler has ended it: no release to send
            if p is not None and not p.future.done():
                p.future.set_exception(RefusedError(r))

    def _requeue(self, epoch: str) -> None:
        """The scheduler restarted (`epoch` is its new life): the calls it had queued go
        again, oldest first; those it has already (sent in its new life) stay."""
        self.restarts_seen += 1
        again = [p.submit for p in self._waiting.values() if p.epoch not in (None, epoch)]
        log.warning("the scheduler restarted: %d waiting calls queued again", len(again))
        for p in self._waiting.values():
            if p.epoch not in (None, epoch):
                p.epoch = None
        self._ops[:0] = again
        self._wake.set()

    def _fail_waiting(self, why: str) -> None:
        waiting, self._waiting = self._waiting, {}
        for call_id, p in waiting.items():
            self.release(call_id, "error")  # in case the scheduler still has it queued
            if not p.future.done():
                refused = Refused(call_id, 503, "unavailable", why, None, {"Retry-After": "1"})
                p.future.set_exception(RefusedError(refused))
