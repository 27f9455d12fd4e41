"""Model swaps: several models taking turns on the same GPUs, in the order QLM plans.

Only the active model's upstream of a GPU group takes calls (`Dispatcher.set_loaded`); calls
for the others wait in the gateway's queue. Every `PERIOD_S`, and soon after a call queues for
a model no group has active, the waiting calls become one request group per (model, SLO class)
and each GPU group an instance, and the planner (`QLMPlanner`, built from `QLMOptions` as the
simulator's `qlm` policy builds it) orders each instance's virtual queue; when the head of a
group's queue wants another model, the group drains its active model and swaps
(`swap_actuators`). How swaps, failures and their metrics work: docs/gateway.md, section 12.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from hermes.gateway.config import GatewayConfig, GpuGroup
from hermes.gateway.dispatch import Dispatcher, Grant, Waiting
from hermes.gateway.swap_actuators import Actuator, LlamaCppRouter, Member, VllmSleep
from hermes.gateway.upstream import UpstreamClient
from hermes.policies.qlm import (
    GroupKey,
    GroupView,
    InstanceView,
    LengthStats,
    Plan,
    QLMOptions,
    QLMPlanner,
)
from hermes.types import Clock

log = logging.getLogger("hermes.gateway.model_swaps")

PERIOD_S = 0.5  # between planning rounds, besides those calls for an inactive model start
MIN_GAP_S = 0.05  # the least time between two planning rounds
RETRY_S = 1.0  # the first back-off after a failed swap; it doubles up to MAX_RETRY_S
MAX_RETRY_S = 60.0
THROUGHPUT_WINDOW_S = 1.0  # busy seconds per throughput sample
THROUGHPUT_SMOOTHING = 0.3  # weight of a new sample
_SWAP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


@dataclass(slots=True, eq=False)
class _Group:
    config: GpuGroup
    members: list[Member]
    actuator: Actuator
    theta: float  # decode throughput, tokens/s
    active: Member | None = None
    target: Member | None = None  # a swap decided: `active` drains, then the swap runs
    swapping: bool = False
    swap_started_s: float = 0.0
    measured: bool = False
    tokens: float = 0.0  # output tokens completed in the current throughput window
    busy_s: float = 0.0  # seconds with calls running, in the current window
    last_tick_s: float = 0.0
    upstreams: list[str] = field(default_factory=list)

    def member_for(self, model: str) -> Member | None:
        return next((m for m in self.members if m.model == model), None)

    def serving(self) -> Member | None:
        """The member that takes calls now: the active one, unless it drains or swaps."""
        return None if self.target is not None or self.swapping else self.active


def _groups(config: GatewayConfig, clients: Mapping[str, UpstreamClient]) -> list[_Group]:
    """The configured GPU groups, each with its members and how it swaps between them."""
    models = {b.name: b.models for b in config.backends}
    out = []
    for g in config.gpu_groups:
        actuator: Actuator
        if g.kind == "vllm-sleep":
            members = [Member(b, models[b][0]) for b in g.backends]
            actuator = VllmSleep(clients, g.sleep_level)
        else:
            (b,) = g.backends
            members = [Member(b, m) for m in dict.fromkeys(models[b])]
            actuator = LlamaCppRouter(clients, config.upstream_first_byte_timeout_s)
        upstreams = list(dict.fromkeys(m.upstream for m in members))
        out.append(_Group(g, members, actuator, g.throughput_tok_s, upstreams=upstreams))
    return out


def _metrics(registry: CollectorRegistry) -> tuple[Counter, Histogram, Gauge]:
    return (
        Counter(
            "hermes_model_swaps",
            "Model swaps on GPU groups, by group, model swapped in and result",
            ["group", "to", "result"],
            registry=registry,
        ),
        Histogram(
            "hermes_model_swap_seconds",
            "Time a successful model swap took, from the sleep or unload to the model ready",
            buckets=_SWAP_BUCKETS,
            registry=registry,
        ),
        Gauge(
            "hermes_gpu_group_active",
            "1 for the model a GPU group has active, 0 for its others",
            ["group", "model"],
            registry=registry,
        ),
    )


class ModelSwapper:
    """Plans and carries out model swaps on the GPU groups of `config`. `grant` carries out
    the dispatcher's grants, `deadline` gives a waiting call's deadline, and `fail(model,
    message)` ends the calls waiting for `model` with 503."""

    def __init__(
        self,
        config: GatewayConfig,
        dispatcher: Dispatcher,
        clients: Mapping[str, UpstreamClient],
        registry: CollectorRegistry,
        clock: Clock,
        grant: Callable[[list[Grant]], None],
        deadline: Callable[[Waiting], float],
        fail: Callable[[str, str], int],
        options: QLMOptions | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.clock = clock
        self.grant = grant
        self.deadline = deadline
        self.fail = fail
        self.bound_s = config.queue_timeout_s
        self.groups = _groups(config, clients)
        self._by_upstream = {u: g for g in self.groups for u in g.upstreams}
        self.models = {m.model for g in self.groups for m in g.members}
        self.planner = QLMPlanner(options)
        self.last_plan: Plan | None = None
        self._failing: dict[str, tuple[float, str]] = {}  # model -> (failing since, why)
        self._failures: dict[str, int] = {}  # failed swaps in a row, per target model
        self._retry_at: dict[str, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._kick: asyncio.TimerHandle | None = None
        self._last_round_s = -math.inf
        self._closed = False
        self.swaps, self.swap_seconds, self.active_gauge = _metrics(registry)

    @property
    def stats(self) -> LengthStats:
        """Output lengths learned from the calls that ended (the planner's)."""
        return self.planner.stats

    # Life cycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Find each group's active model; wake the first if none is, put all but the first
        to sleep if several are."""
        now = self.clock()
        for g in self.groups:
            g.last_tick_s = now
            probed = await g.actuator.probe(g.members)
            awake = [m for m, a in zip(g.members, probed, strict=True) if a]
            if not awake:
                error = await g.actuator.activate(g.members[0])
                if error is None:
                    g.active = g.members[0]
                else:
                    first = g.members[0].model
                    log.error(
                        "gpu group %s: could not activate %s: %s", g.config.name, first, error
                    )
                    self._count(g, g.members[0], "error")
            else:
                g.active = awake[0]
                for m in awake[1:]:
                    error = await g.actuator.deactivate(m)
                    if error is not None:
                        why = f"could not deactivate {m.model}: {error}"
                        log.error("gpu group %s: %s", g.config.name, why)
            self._show(g)
            self.grant(self._apply(g))

    async def close(self) -> None:
        self._closed = True
        if self._kick is not None:
            self._kick.cancel()
            self._kick = None
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    # Events from the gateway -----------------------------------------------------------------

    def on_queued(self, model: str) -> None:
        """A call for `model` waits: plan soon if no group serves that model now."""
        if model in self.models and not any(
            (s := g.serving()) is not None and s.model == model for g in self.groups
        ):
            self._soon()

    def on_ended(
        self, upstream: str | None, model: str, slo_class: str, tokens: int, ok: bool
    ) -> None:
        """A call that held a slot on `upstream` ended (`ok`: answered, with `tokens` output
        tokens): learn from it, and start a swap that waited for it."""
        g = self._by_upstream.get(upstream) if upstream is not None else None
        if g is None:
            return
        if ok:
            self.planner.stats.observe(GroupKey(model, slo_class, 0), max(0, tokens))
            g.tokens += max(0, tokens)
        self._maybe_start(g)

    def tick(self) -> None:
        """The periodic round: measure, end calls waiting too long for a failing model, plan."""
        now = self.clock()
        for g in self.groups:
            self._measure(g, now)
        self._expire(now)
        self._round()

    # Planning --------------------------------------------------------------------------------

    def _soon(self) -> None:
        if self._kick is not None or self._closed:
            return
        delay = max(0.0, self._last_round_s + MIN_GAP_S - self.clock())
        self._kick = asyncio.get_running_loop().call_later(delay, self._round)

    def _round(self) -> None:
        if self._kick is not None:
            self._kick.cancel()
            self._kick = None
        now = self.clock()
        self._last_round_s = now
        views = self._group_views(now)
        if not views:
            for g in self.groups:
                self._decide(g, None)
            return
        instances = [self._instance_view(g, now) for g in self.groups]
        try:
            self.last_plan = self.planner.plan(views, instances, now)
        except ValueError:  # a bug: keep the groups as they are, and the gateway running
            log.exception("model swaps: no plan this round")
            return
        for g in self.groups:
            queue = self.last_plan.queues.get(g.config.name, ())
            self._decide(g, views[queue[0]].model if queue else None)

    def _group_views(self, now: float) -> list[GroupView]:
        """One group per (model, SLO class) of the calls waiting for the groups' models, but
        not for models whose last swap failed, until their back-off ends."""
        size: dict[tuple[str, str], int] = {}
        due: dict[tuple[str, str], float] = {}
        for w in self.dispatcher.waiting():
            if w.model not in self.models or now < self._retry_at.get(w.model, -math.inf):
                continue
            key = (w.model, "rt" if w.rt else "be")
            size[key] = size.get(key, 0) + 1
            due[key] = min(due.get(key, math.inf), self.deadline(w))
        return [
            GroupView(i, GroupKey(model, cls, 0), n, due[model, cls])
            for i, ((model, cls), n) in enumerate(sorted(size.items()))
        ]

    def _instance_view(self, g: _Group, now: float) -> InstanceView:
        models = [m.model for m in g.members]
        estimate = g.config.swap_estimate_s
        if g.swapping and g.target is not None:
            active: str | None = g.target.model
            busy = max(0.0, estimate - (now - g.swap_started_s))
        else:
            active = g.active.model if g.active is not None else None
            running = sum(self.dispatcher.busy(u) for u in g.upstreams)
            mean = self.planner.stats.mean(GroupKey(active, "be", 0)) if active else 0.0
            busy = running * mean / g.theta  # rough: as if every running call had just begun
        warm = g.config.kind == "vllm-sleep" and g.config.sleep_level == 1
        return InstanceView(
            g.config.name,
            active,
            frozenset(models) if warm else frozenset(),
            dict.fromkeys(models, estimate),
            g.theta,
            busy,
        )

    def _decide(self, g: _Group, model: str | None) -> None:
        """Carry out the plan's head of `g`'s queue: keep the active model, or swap to
        `model` once the active one has drained."""
        if g.swapping:
            return
        keep = model is None or (g.active is not None and model == g.active.model)
        if keep:
            if g.target is not None:  # the plan changed its mind before the drain ended
                g.target = None
                self.grant(self._apply(g))
            return
        assert model is not None
        target = g.member_for(model)
        if target is None:
            return
        if g.target is not target:
            g.target = target
            self.grant(self._apply(g))  # the active model takes no new calls: it drains
        self._maybe_start(g)

    # Swapping --------------------------------------------------------------------------------

    def _maybe_start(self, g: _Group) -> None:
        if g.target is None or g.swapping or self._closed:
            return
        if any(self.dispatcher.busy(u) for u in g.upstreams):
            return  # still draining
        g.swapping = True
        g.swap_started_s = self.clock()
        self._spawn(self._swap(g, g.active, g.target))

    async def _swap(self, g: _Group, old: Member | None, new: Member) -> None:
        name = g.config.name
        started = self.clock()
        error: str | None = None
        try:
            if old is not None:
                error = await g.actuator.deactivate(old)
                if error is not None:
                    error = f"could not put {old.model!r} aside: {error}"
            if error is None:
                error = await g.actuator.activate(new)
                if error is not None and old is not None:
                    back = await g.actuator.activate(old)  # restore what was there
                    if back is not None:
                        log.error("gpu group %s: %s failed to return: %s", name, old.model, back)
                        old = None
        except Exception as e:  # a bug; the group must not stay stuck in a swap
            log.exception("gpu group %s: swap to %s", name, new.model)
            error = f"swap failed: {e!r}"
        now = self.clock()
        g.swapping = False
        g.target = None
        if error is None:
            g.active = new
            self._failing.pop(new.model, None)
            self._failures.pop(new.model, None)
            self._retry_at.pop(new.model, None)
            self.swap_seconds.observe(now - started)
            self._count(g, new, "ok")
            log.info("gpu group %s: %s active after %.2f s", name, new.model, now - started)
        else:
            g.active = old
            self._failed(g, new, error, now)
        self._show(g)
        self.grant(self._apply(g))
        self._soon()

    def _failed(self, g: _Group, new: Member, error: str, now: float) -> None:
        log.warning("gpu group %s: swap to %s failed: %s", g.config.name, new.model, error)
        self._count(g, new, "error")
        n = self._failures[new.model] = self._failures.get(new.model, 0) + 1
        self._retry_at[new.model] = now + min(MAX_RETRY_S, RETRY_S * 2 ** (n - 1))
        since = self._failing.get(new.model, (now, ""))[0]
        self._failing[new.model] = (since, f"group {g.config.name!r}: {error}")

    def failing(self, model: str) -> str | None:
        """Why no swap could bring `model` in, while that is so; else None."""
        failing = self._failing.get(model)
        return None if failing is None else failing[1]

    def _expire(self, now: float) -> None:
        """End the calls waiting for a model that no swap could bring in for `bound_s`."""
        for model, (since, why) in list(self._failing.items()):
            if any(g.swapping and g.target and g.target.model == model for g in self.groups):
                continue
            if any((s := g.serving()) is not None and s.model == model for g in self.groups):
                del self._failing[model]
                continue
            if now - since >= self.bound_s:
                message = (
                    f"model {model!r} is unavailable: it could not be swapped in on its GPUs "
                    f"for {self.bound_s:g} s ({why})"
                )
                if self.fail(model, message):
                    self._failing[model] = (now, why)  # later calls get their own wait

    def _apply(self, g: _Group) -> list[Grant]:
        """The dispatcher's view of `g`: calls only for the member that serves now."""
        serving = g.serving()
        grants: list[Grant] = []
        for u in g.upstreams:
            loaded = [serving.model] if serving is not None and serving.upstream == u else []
            grants += self.dispatcher.set_loaded(u, loaded)
        return grants

    # Measures --------------------------------------------------------------------------------

    def _measure(self, g: _Group, now: float) -> None:
        """Decode throughput: output tokens over the time calls were running, in windows of
        `THROUGHPUT_WINDOW_S` busy seconds, exponentially smoothed."""
        if any(self.dispatcher.busy(u) for u in g.upstreams):
            g.busy_s += now - g.last_tick_s
        g.last_tick_s = now
        if g.busy_s >= THROUGHPUT_WINDOW_S and g.tokens > 0:
            sample = g.tokens / g.busy_s
            a = THROUGHPUT_SMOOTHING if g.measured else 1.0
            g.theta = (1 - a) * g.theta + a * sample
            g.measured = True
            g.tokens = g.busy_s = 0.0

    def _count(self, g: _Group, to: Member, result: str) -> None:
        self.swaps.labels(g.config.name, to.model, result).inc()

    def _show(self, g: _Group) -> None:
        for m in g.members:
            self.active_gauge.labels(g.config.name, m.model).set(1 if m is g.active else 0)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
