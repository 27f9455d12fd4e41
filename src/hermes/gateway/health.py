"""Upstream health: active checks, and the health the dispatcher routes by.

Every `interval_s` each upstream is probed (GET its health path, `timeout_s` to answer). After
`failures` failed probes in a row it is taken out of rotation and its connections are closed,
so that the calls in flight on it end now rather than at their timeouts (those that had no
byte of answer yet are retried on another replica, `forwarding`); one good probe brings it
back. A call that finds an upstream refusing connections takes it out at once (`mark_down`).

Which models have no healthy upstream, and since when, is what `/healthz` reports and what
the queue's timeout answers with 503 rather than 429 (`calls`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge

from hermes.gateway.config import HealthCheck
from hermes.gateway.dispatch import Dispatcher, Grant
from hermes.gateway.upstream import UpstreamClient
from hermes.types import Clock

log = logging.getLogger("hermes.gateway")


class UpstreamHealth:
    """Probes each upstream of `clients` and keeps `dispatcher`'s health up to date; `grant`
    carries out the grants an upstream back in health makes."""

    def __init__(
        self,
        options: HealthCheck,
        clients: Mapping[str, UpstreamClient],
        dispatcher: Dispatcher,
        grant: Callable[[list[Grant]], None],
        registry: CollectorRegistry,
        clock: Clock,
    ) -> None:
        self.options = options
        self.clients = clients
        self.dispatcher = dispatcher
        self.grant = grant
        self.clock = clock
        self._failures = dict.fromkeys(clients, 0)
        self._tasks: list[asyncio.Task[None]] = []
        # Per model with no healthy upstream: since when.
        self._unavailable: dict[str, float] = {}
        self.up = Gauge(
            "hermes_upstream_up",
            "1 while an upstream is in rotation, 0 while it is out (failed health checks or "
            "refused connections)",
            ["upstream"],
            registry=registry,
        )
        self.probes = Counter(
            "hermes_upstream_health_checks",
            "Health probes of the upstreams, by upstream and result (ok, failed)",
            ["upstream", "result"],
            registry=registry,
        )
        for name in clients:
            self.up.labels(name).set(1)

    # Life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._watch(name)) for name in self.clients]

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()

    async def _watch(self, name: str) -> None:
        client = self.clients[name]
        while True:
            try:
                await self.observe(name, await client.healthy(self.options.timeout_s))
            except Exception:  # a bug here must not end the checks for good
                log.exception("health check of upstream %s failed; it runs again", name)
            await asyncio.sleep(self.options.interval_s)

    # Inputs ----------------------------------------------------------------------------------

    async def observe(self, name: str, ok: bool) -> None:
        """A probe of `name` answered (`ok`) or failed."""
        self.probes.labels(name, "ok" if ok else "failed").inc()
        if ok:
            self._failures[name] = 0
            if not self.dispatcher.healthy(name):
                log.warning("upstream %s answers its health checks again: back in rotation", name)
                self._set(name, True)
            return
        self._failures[name] += 1
        if self._failures[name] == self.options.failures and self.dispatcher.healthy(name):
            log.warning(
                "upstream %s failed %d health checks in a row: out of rotation",
                name,
                self._failures[name],
            )
            self._set(name, False)
            # Calls in flight there would wait for their timeouts on a stalled engine.
            await self.clients[name].reset()

    def mark_down(self, name: str) -> None:
        """A call found `name` down (a refused or dropped connection): out of rotation until
        a probe answers."""
        if self.dispatcher.healthy(name):
            log.warning("upstream %s refused a call: out of rotation until it answers", name)
            self._set(name, False)

    def _set(self, name: str, healthy: bool) -> None:
        self.up.labels(name).set(1 if healthy else 0)
        self.grant(self.dispatcher.set_health(name, healthy))
        now = self.clock()
        for model in self.dispatcher.models():
            if self.dispatcher.available(model):
                self._unavailable.pop(model, None)
            else:
                self._unavailable.setdefault(model, now)

    # Queries ---------------------------------------------------------------------------------

    def unavailable(self) -> dict[str, float]:
        """The models no healthy upstream serves, each with the time since when."""
        return dict(self._unavailable)

    def unavailable_for(self, model: str) -> float:
        """How long `model` has had no healthy upstream (0 while it has one)."""
        since = self._unavailable.get(model)
        return 0.0 if since is None else self.clock() - since
