"""Tool stages in policy order, in the gateway: a client told when to run its tool.

For a backend configured under `tools` (`capacity` stages at once), a `stage_started` event
asks for a grant ranked by the same policy object as the LLM calls. By default the event's
answer waits until the grant is made (200, `granted: true`); with `"wait": false` it comes at
once (202 with the grant's id and its place in line; 200 if a slot was free) and the client
polls `GET /v1/apps/{app_id}/grants/{grant_id}`. The grant is given back by `stage_finished`,
by the application's next stage (a tool stage or an LLM call), by its end, or when held past
`hold_timeout_s`; a client that hangs up while waiting gives up its place. The tool's recorded
duration runs from the grant, not from the event, so that what the PDGraph learns is the tool's
time, not its queue's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from itertools import count
from typing import Any, Protocol, cast

from prometheus_client import CollectorRegistry, Gauge, Histogram
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from hermes.gateway.apps import GatewayApp
from hermes.gateway.config import ToolCapacity
from hermes.gateway.errors import BadRequestError, NotFoundError, ServiceUnavailableError
from hermes.gateway.relay import until_disconnect
from hermes.gateway.tenants import caller_of
from hermes.gateway.tool_grants import GrantState, ToolGrant, ToolGrants, ToolLimit
from hermes.policies.base import CallInfo, Policy
from hermes.types import Clock


class _Timed(Protocol):
    started_s: float  # a stage record's start (apps.py), which its duration runs from


def wait_flag(body: Mapping[str, Any]) -> bool:
    """The event's `wait` (default true): whether its answer waits for the grant."""
    wait = body.get("wait", True)
    if not isinstance(wait, bool):
        raise BadRequestError(f"'wait' must be true or false, got {wait!r}", "wait")
    return wait


def _granted(grant: ToolGrant) -> bool:
    """Read anew: a grant's state changes while a handler awaits it."""
    return grant.state == "granted"


class ToolAdmission:
    def __init__(
        self,
        tools: Sequence[ToolCapacity],
        policy: Policy,
        clock: Clock,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.grants = ToolGrants(
            ToolLimit(t.name, t.capacity, t.order, t.hold_timeout_s) for t in tools
        )
        self.policy = policy
        self.clock = clock
        self._apps: dict[str, GatewayApp] = {}  # grant id -> its application, while it lasts
        self._futures: dict[str, asyncio.Future[None]] = {}  # grants a handler waits for
        self._asks = count()
        self._waiting_g = Gauge(
            "hermes_tool_waiting",
            "Tool stages waiting for a slot of a capacity-managed tool backend",
            ["tool"],
            registry=registry,
        )
        self._running_g = Gauge(
            "hermes_tool_running",
            "Tool stages holding a slot of a capacity-managed tool backend",
            ["tool"],
            registry=registry,
        )
        self._wait_h = Histogram(
            "hermes_tool_wait_seconds",
            "Seconds from stage_started to the grant, by tool backend",
            ["tool"],
            registry=registry,
        )

    def manages(self, backend: str) -> bool:
        return self.grants.manages(backend)

    # Events ----------------------------------------------------------------------------------

    async def stage_started(
        self, request: Request, app: GatewayApp, backend: str, body: Mapping[str, Any]
    ) -> Response:
        """`app` has just opened a tool stage on managed `backend`: its grant, now or later."""
        wait = wait_flag(body)
        now = self.clock()
        self.moved_on(app, now)
        info = CallInfo((app.app_id, "tool", next(self._asks)), now, 0)
        priority = self.policy.priority(info, app.view, now)
        # Equal ranks go to the earlier application, as in the simulator's tool pools.
        grant, made = self.grants.ask(
            app.app_id, backend, app.current, priority, now, tiebreak=app.view.arrival_s
        )
        self._apps[grant.id] = app
        self._announce(made)
        if grant.state == "granted" or not wait:
            # Where to poll: this event's path, as the client named its application.
            poll = request.url.path.removesuffix("events") + f"grants/{grant.id}"
            return self._answer(grant, 200 if grant.state == "granted" else 202, poll)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._futures[grant.id] = future
        watch: asyncio.Future[None] = asyncio.ensure_future(until_disconnect(request))
        try:
            await asyncio.wait({future, watch}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the handler itself is going (shutdown)
            self._end(grant, "cancelled")
            raise
        finally:
            watch.cancel()
            self._futures.pop(grant.id, None)
        if not future.done():  # the client hung up while it waited: its place goes
            self._end(grant, "cancelled")
            return Response(status_code=499)
        future.result()  # raises what ended the wait (the gateway shutting down)
        # Granted; or given up while it waited (its stage ended, its application moved on).
        return self._answer(grant, 200 if _granted(grant) else 409)

    def stage_finished(self, app: GatewayApp) -> None:
        """`app`'s tool stage ended: its grant goes back."""
        self._announce(self.grants.release_app(app.app_id, self.clock()))

    def moved_on(self, app: GatewayApp, now: float) -> None:
        """`app` is in a new stage: grants for the ones before go back."""
        if self.grants.of_app(app.app_id):
            self._announce(self.grants.release_app(app.app_id, now, keep=app.current))

    async def poll(self, request: Request) -> Response:
        """`GET /v1/apps/{app_id}/grants/{grant_id}`."""
        app_id = caller_of(request).app_id(request.path_params["app_id"])
        grant = self.grants.get(request.path_params["grant_id"])
        if grant is None or grant.app_id != app_id:
            raise NotFoundError("no tool grant with this id for this application")
        return self._answer(grant, 200)

    # Rounds ----------------------------------------------------------------------------------

    def rerank(self, now: float) -> None:
        """A ranking round (dynamic policies): waiting grants ranked anew."""
        if not self.policy.dynamic:
            return
        waiting = [g for b in self.grants.backends() for g in self._waiting_of(b)]
        if not waiting:
            return
        apps = dict.fromkeys(self._apps[g.id] for g in waiting)
        ranks = self.policy.rank_apps([a.view for a in apps], now)
        by_app = {} if ranks is None else dict(zip(apps, ranks, strict=True))

        def rank(g: ToolGrant) -> float:
            app = self._apps[g.id]
            if app in by_app:
                return by_app[app]
            info = CallInfo((g.app_id, "tool", g.seq), g.asked_s, 0)
            return self.policy.priority(info, app.view, now)

        self.grants.rerank(rank)

    def sweep(self, apps: Mapping[str, GatewayApp], now: float) -> None:
        """Grants of applications that ended, or moved on, go back; overdue ones are revoked."""
        for grant_id, app in list(self._apps.items()):
            grant = self.grants.get(grant_id)
            if grant is None or grant.state not in ("waiting", "granted"):
                continue
            if apps.get(app.app_id) is not app or app.current is not grant.stage:
                self._end(grant, "released")
        for grant in self.grants.overdue(now):
            self._end(grant, "revoked")

    def close(self) -> None:
        """The gateway is going: handlers waiting for a grant get 503."""
        for future in self._futures.values():
            if not future.done():
                future.set_exception(
                    ServiceUnavailableError("the gateway is shutting down; no tool grant")
                )

    # Internals -------------------------------------------------------------------------------

    def _live(self, grant_id: str) -> bool:
        g = self.grants.get(grant_id)
        return g is not None and g.state in ("waiting", "granted")

    def _waiting_of(self, backend: str) -> list[ToolGrant]:
        return [
            g
            for gid, _ in self._apps.items()
            if (g := self.grants.get(gid)) is not None
            and g.backend == backend
            and g.state == "waiting"
        ]

    def _end(self, grant: ToolGrant, why: GrantState) -> None:
        self._announce(self.grants.release(grant, self.clock(), why))

    def _announce(self, made: list[ToolGrant]) -> None:
        """Grants made: their waiters answered, their stages timed from now on."""
        for g in made:
            app = self._apps.get(g.id)
            stage = g.stage
            if app is not None and app.current is stage and g.granted_s is not None:
                cast(_Timed, stage).started_s = g.granted_s  # the tool runs from its grant
            future = self._futures.get(g.id)
            if future is not None and not future.done():
                future.set_result(None)
            if g.waited_s is not None:
                self._wait_h.labels(g.backend).observe(g.waited_s)
        for gid in [gid for gid in self._apps if not self._live(gid)]:
            del self._apps[gid]
            future = self._futures.get(gid)
            if future is not None and not future.done():  # ended while a handler waited
                future.set_result(None)
        for name in self.grants.backends():
            self._waiting_g.labels(name).set(self.grants.waiting(name))
            self._running_g.labels(name).set(self.grants.running(name))

    def _answer(self, grant: ToolGrant, status: int, poll: str | None = None) -> JSONResponse:
        body: dict[str, Any] = {
            "ok": True,
            "grant": grant.id,
            "backend": grant.backend,
            "state": grant.state,
            "granted": grant.state == "granted",
            "waited_s": grant.waited_s,
        }
        if grant.state == "waiting":
            body["position"] = self.grants.position(grant)
            if poll is not None:
                body["poll"] = poll
        return JSONResponse(body, status_code=status)
