"""Prewarm orders in the simulator: the prewarm policy's orders fired on the event loop.

An order that fires once its application has left the ordering stage is dropped; one that
fires in time reserves a spare instance of its backend for that application until the
application's next stage starts (when it is used or given up), so that two applications
ordering at once get two instances, and renews the instance's hold for as long as the
application is still in the ordering stage (the hold comes from service seconds, which a
loaded engine stretches).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from hermes.policies.prewarm import PrewarmOrder
from hermes.sim.kernel import EventLoop
from hermes.sim.tool_runner import ToolRunner


class OrderingApp(Protocol):
    stage: int
    finish_s: float | None
    reserved: list[str]  # backends prewarmed for its next stage


@dataclass(slots=True)
class PrewarmOrders:
    loop: EventLoop
    tools: dict[str, ToolRunner]
    reservations: dict[str, int] = field(default_factory=dict)  # per backend: fired, unspent
    orders: int = 0
    late: int = 0  # fired after their application left the ordering stage
    renewals: int = 0  # holds renewed while the ordering application was still in its stage

    def schedule(self, app: OrderingApp, order: PrewarmOrder, now: float) -> None:
        runner = self.tools.get(order.backend)
        if runner is None or runner.pool.spec.cold_start_s == 0:
            return  # nothing to warm
        self.orders += 1
        stage = app.stage

        def fire(t: float) -> None:
            if app.finish_s is not None or app.stage != stage:
                self.late += 1
                return
            n = self.reservations.get(order.backend, 0) + 1
            self.reservations[order.backend] = n
            app.reserved.append(order.backend)
            runner.prewarm(t, n, order.hold_s)
            self.loop.at(t + order.hold_s, renew)

        def renew(t: float) -> None:
            # One cold start before the hold ends (it ends cold_start_s + hold_s after the
            # order fired), an app still in the ordering stage renews it.
            if app.finish_s is not None or app.stage != stage:
                return
            self.renewals += 1
            runner.prewarm(t, self.reservations[order.backend], order.hold_s)
            self.loop.at(t + order.hold_s, renew)

        self.loop.at(max(order.at_s, now), fire)

    def release(self, app: OrderingApp) -> None:
        """The app's next stage has begun (or it has finished): its reservations are spent."""
        for backend in app.reserved:
            self.reservations[backend] -= 1
        app.reserved.clear()
