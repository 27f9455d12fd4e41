"""A call's life in the gateway: queued in policy order, granted an upstream slot, released,
retried once elsewhere after a failure before the upstream's first byte, and accounted for
once however it ends. The HTTP side (`forwarding`, `relay`) and the handlers (`server`) call in
here; the `Dispatcher` decides, this carries its grants out.

No call waits without bound: after `queue_timeout_s` in the queue it gets 503 if no healthy
upstream serves its model, else 429, both with Retry-After; a call for a model that has had no
healthy upstream for that long gets 503 at once; and a gateway that stops fails the calls still
waiting with 503 (`fail_all`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter
from starlette.requests import Request

from hermes.gateway.admission_feed import AdmissionFeed
from hermes.gateway.apps import AppTracker, CallTicket, GatewayApp
from hermes.gateway.dispatch import Dispatcher, Grant, QueueFullError, Waiting
from hermes.gateway.errors import ApiError, RateLimitError, ServiceUnavailableError
from hermes.gateway.health import UpstreamHealth
from hermes.gateway.metrics import GatewayMetrics
from hermes.gateway.model_swaps import ModelSwapper
from hermes.gateway.relay import until_disconnect
from hermes.gateway.upstream import UpstreamClient
from hermes.types import Clock

log = logging.getLogger("hermes.gateway")


@dataclass(slots=True, eq=False)
class Call:
    ticket: CallTicket
    model: str
    body: dict[str, Any]
    arrived_s: float
    waiting: Waiting | None = None
    future: asyncio.Future[str] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    retried: bool = False
    raw: bytes = b""  # the body as it came, sent on with fields appended (not re-encoded)
    upstream: str | None = None  # whose slot the call holds, from its grant to its release
    # A relayed stream's progress, for its accounting when it closes.
    usage: dict[str, Any] | None = None
    chunks: int = 0
    finish: str = "abort"  # until the stream ends otherwise: the client hung up
    ended: bool = False  # counted, and what it held freed: see `CallLifecycle.account`
    rt: bool = False  # real-time: x-hermes-slo-class rt, or its model's default class
    tenant: str | None = None  # the caller's key's name, for the upstream's fairness id
    deadline_s: float = math.inf  # arrival + its class's slo_s, or its app's deadline
    # For admission (`admission_feed`): when it got its slot, when its first event came.
    granted_s: float | None = None
    first_token_s: float | None = None


class CallLifecycle:
    """The calls queued or running, and what happens to them. `finish_app` ends an
    application (a plain call's, once its one call is over); `swapper`, when GPU groups are
    configured, hears of calls queued and ended."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        clients: dict[str, UpstreamClient],
        tracker: AppTracker,
        metrics: GatewayMetrics,
        clock: Clock,
        finish_app: Callable[[GatewayApp, float], None],
        be_slo_s: float,
        queue_timeout_s: float = math.inf,
    ) -> None:
        self.dispatcher = dispatcher
        self.clients = clients
        self.tracker = tracker
        self.metrics = metrics
        self.clock = clock
        self.finish_app = finish_app
        self.be_slo_s = be_slo_s
        self.queue_timeout_s = queue_timeout_s
        self.swapper: ModelSwapper | None = None
        self.health: UpstreamHealth | None = None
        self.admission: AdmissionFeed | None = None
        self.stopping = False
        self._calls: dict[int, Call] = {}  # by id(Waiting)
        self.queue_timeouts = Counter(
            "hermes_queue_timeouts",
            "Calls that waited queue_timeout_s in the queue, by the status they got (503: no "
            "healthy upstream for their model, 429: overloaded)",
            ["status"],
            registry=metrics.registry,
        )
        self.aged = Counter(
            "hermes_aged_calls",
            "Calls that waited aging_max_wait_s and went ahead of every newer call",
            registry=metrics.registry,
        )

    def of(self, waiting: Waiting) -> Call:
        """The call behind a queued or granted `waiting`."""
        return self._calls[id(waiting)]

    # Queue and slots ---------------------------------------------------------------------------

    def enqueue(self, call: Call, priority: float) -> None:
        """Queue `call` (RateLimitError when the queue is full, ServiceUnavailableError when no
        healthy upstream has served its model for `queue_timeout_s`); granted at once if a
        slot is free."""
        if self.health is not None:
            down_s = self.health.unavailable_for(call.model)
            if down_s >= self.queue_timeout_s:
                raise ServiceUnavailableError(
                    f"no healthy upstream serves model {call.model!r} (none for {down_s:.0f} s); "
                    "retry later",
                    "model",
                )
        app = call.ticket.app
        try:
            waiting, grants = self.dispatcher.submit(
                call.ticket, call.model, priority, call.rt, self.clock(), group=app
            )
        except QueueFullError:
            raise RateLimitError("the gateway's queue is full; retry later") from None
        # The next round gives the call its application's rank (a retry's -inf stays: it
        # goes first, having been granted once already).
        self.tracker.touch(app)
        call.waiting = waiting
        self._calls[id(waiting)] = call
        self.grant(grants)
        if self.swapper is not None and not waiting.granted:
            self.swapper.on_queued(call.model)

    def grant(self, grants: list[Grant]) -> None:
        """Carry out the dispatcher's grants: each call learns its upstream."""
        for g in grants:
            call = self._calls.get(id(g.call))
            if call is not None:
                call.upstream = g.upstream
                call.granted_s = self.clock()
                if self.admission is not None:
                    self.admission.started(call, g.upstream)
                if not call.future.done():  # done: cancelled, its handler gone; see `free`
                    call.future.set_result(g.upstream)
        self.metrics.waiting.set(self.dispatcher.queued)
        self.metrics.running.set(self.dispatcher.running)

    async def wait_turn(self, request: Request, call: Call) -> str | None:
        """The upstream granted to `call`, or None if its client hung up first (the call
        leaves the queue). Raises what ended it while waiting: `queue_timeout_s` passed (see
        `timed_out`), a model that could not be swapped in, a gateway that stopped."""
        if call.future.done():
            return call.future.result()
        watch: asyncio.Future[None] = asyncio.ensure_future(until_disconnect(request))
        waiters: set[asyncio.Future[Any]] = {call.future, watch}
        try:
            await asyncio.wait(
                waiters, timeout=self._time_left(call), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            watch.cancel()
        if call.future.done():
            return call.future.result()
        self.free(call)
        if watch.done():
            return None
        raise self.timed_out(call)

    async def wait_retry(self, call: Call) -> str:
        """The upstream granted to a call queued again for a retry, within what is left of
        its `queue_timeout_s`."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._time_left(call)):
                return await asyncio.shield(call.future)
        if call.future.done():
            return call.future.result()
        self.free(call)
        raise self.timed_out(call)

    def _time_left(self, call: Call) -> float | None:
        left = self.queue_timeout_s - (self.clock() - call.arrived_s)
        return None if math.isinf(left) else max(0.0, left)

    def timed_out(self, call: Call) -> ApiError:
        """The error for a call that waited `queue_timeout_s`: 503 when no healthy upstream
        serves its model (nothing to wait for), else 429 (too many calls ahead of it)."""
        waited = self.clock() - call.arrived_s
        why = self.swapper.failing(call.model) if self.swapper is not None else None
        if why is not None:
            self.queue_timeouts.labels("503").inc()
            return ServiceUnavailableError(
                f"model {call.model!r} is unavailable: it could not be swapped in on its GPUs "
                f"({why}); the call waited {waited:.0f} s (queue_timeout_s)",
                "model",
            )
        if not self.dispatcher.available(call.model):
            self.queue_timeouts.labels("503").inc()
            return ServiceUnavailableError(
                f"no healthy upstream serves model {call.model!r}: the call waited "
                f"{waited:.0f} s (queue_timeout_s); retry later",
                "model",
            )
        self.queue_timeouts.labels("429").inc()
        return RateLimitError(
            f"the call waited {waited:.0f} s in the gateway's queue (queue_timeout_s): too "
            "many calls ahead of it; retry later"
        )

    def release(self, call: Call, upstream: str) -> None:
        call.upstream = None
        if self.admission is not None:
            self.admission.left(call, upstream)
        if call.waiting is not None:
            self._calls.pop(id(call.waiting), None)
        self.grant(self.dispatcher.release(upstream))

    def free(self, call: Call) -> None:
        """Give back what the call holds, wherever it ended: its slot, or its queue place."""
        if call.upstream is not None:
            self.release(call, call.upstream)
        elif call.waiting is not None and self.dispatcher.cancel(call.waiting):
            self._calls.pop(id(call.waiting), None)
            self.grant([])

    def deadline_of(self, waiting: Waiting) -> float:
        call = self._calls.get(id(waiting))
        return call.deadline_s if call is not None else self.clock() + self.be_slo_s

    def fail_waiting(self, model: str | None, message: str) -> int:
        """End every call waiting for `model` (None: for any) with 503 (`message`); how many
        there were."""
        failed = 0
        for w in list(self.dispatcher.waiting()):
            if (model is not None and w.model != model) or not self.dispatcher.cancel(w):
                continue
            call = self._calls.pop(id(w), None)
            if call is not None and not call.future.done():
                call.future.set_exception(ServiceUnavailableError(message))
                failed += 1
        self.grant([])
        return failed

    # Failures before the first byte ------------------------------------------------------------

    async def retry_elsewhere(self, call: Call, upstream: str, why: str) -> str | None:
        """After a failure before the first byte: mark the upstream down and queue the call
        once more, first in line; the new upstream, or None if there is none."""
        self.metrics.upstream_errors.labels(upstream, why).inc()
        if self.health is not None:
            self.health.mark_down(upstream)  # probed back in by the health checks
        else:
            self.grant(self.dispatcher.set_health(upstream, False))
        self.release(call, upstream)
        # Another healthy replica will do, busy or not: the call waits for it, first in line.
        app = call.ticket.app.app_id[:256]
        if call.retried or not any(
            self.dispatcher.healthy(u.name)
            for u in self.dispatcher.upstreams
            if u.name != upstream and call.model in u.models
        ):
            why_not = "retried once already" if call.retried else "no other healthy upstream"
            log.warning(
                "a call of %s failed on upstream %s (%s), not retried: %s",
                app,
                upstream,
                why,
                why_not,
            )
            return None
        log.warning(
            "a call of %s failed on upstream %s (%s): retried elsewhere", app, upstream, why
        )
        call.retried = True
        call.future = asyncio.get_running_loop().create_future()
        try:
            self.enqueue(call, float("-inf"))
        except ApiError:
            return None
        return await self.wait_retry(call)

    def age(self) -> None:
        """One aging round: calls that have waited `aging_max_wait_s` go ahead."""
        aged = self.dispatcher.age(self.clock())
        if aged:
            self.aged.inc(len(aged))

    # The end -----------------------------------------------------------------------------------

    def account(self, call: Call, usage: dict[str, Any], finish: str) -> None:
        """The call is over: free what it holds and count it, once, by how it finished."""
        if call.ended:
            return
        call.ended = True
        upstream = call.upstream
        self.free(call)
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        if self.admission is not None and upstream is not None:
            self.admission.finished(call, upstream, prompt, completion, finish == "stop")
        if self.swapper is not None:
            cls = "rt" if call.rt else "be"
            self.swapper.on_ended(upstream, call.model, cls, completion, finish == "stop")
        self.metrics.prompt_tokens.inc(prompt)
        self.metrics.generation_tokens.inc(completion)
        self.metrics.e2e.observe(self.clock() - call.arrived_s)
        self.metrics.requests.labels(finish).inc()
        self.end_call(call, prompt or call.ticket.info.prompt_tokens, completion)

    def end_call(self, call: Call, prompt: int, completion: int) -> None:
        """The application's side of the call's end (also for a call refused at the queue)."""
        now = self.clock()
        t = call.ticket
        self.tracker.end_call(t, prompt, completion, now)
        if t.app.ephemeral and t.app.in_flight == 0:
            self.finish_app(t.app, now)
