"""Prewarm actuators: the gateway carries out the prewarm policy's orders on real systems.

The policy is the simulator's (`hermes.policies.prewarm`): when an application begins a stage
it may order a cold target warmed at a time of its choosing (`PrewarmOrder`), and when a tool
stage ends it may ask to keep the instance the application just used (`retain_s`). Targets
come from the configuration (`PrewarmTarget`), each with one action:

- `http`: POST (or PUT) to the tool backend's manager, once per order, with the hold; the
  manager starts an instance, or keeps one (`reason: retain`). The gateway does not run tools.
- `vllm-wake-up`: `POST /wake_up` on a replica that is asleep (vLLM's sleep mode). Optionally
  the gateway puts an idle replica to sleep (level 1) after `sleep_after_idle_s`.
- `vllm-load-lora`: `POST /v1/load_lora_adapter` on the replica, once.

A call never waits for a prediction: before a call goes to a replica that is asleep, or asks
for an adapter not loaded there, the gateway wakes or loads it on demand (and counts that as a
miss). Failures of an action are counted and logged; they never fail a call by themselves.

Each tool stage that starts on a target is scored: `warm` if an order fired at least one cold
start earlier and its hold has not run out, `warming` if one fired too late to be ready,
`cold` otherwise. `hermes_prewarm_tool_starts` counts them, the gateway's measure of how much
cold start its prewarming hides.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from hermes.gateway.apps import GatewayApp
from hermes.gateway.config import GatewayConfig, PrewarmTarget
from hermes.gateway.metrics import GatewayMetrics
from hermes.gateway.upstream import UpstreamClient
from hermes.policies.prewarm import PrewarmOrder, PrewarmPolicy
from hermes.types import Clock

log = logging.getLogger("hermes.gateway.prewarm")


@dataclass(slots=True)
class _Warmth:
    """What the gateway knows of one target: when orders fired and how long they hold."""

    fired: list[tuple[float, float]] = field(default_factory=list)  # (fired at, hold ends)

    def state(self, now: float, cold_start_s: float) -> str:
        self.fired = [(t, end) for t, end in self.fired if end > now]
        if any(now - t >= cold_start_s for t, _ in self.fired):
            return "warm"
        return "warming" if self.fired else "cold"


@dataclass(slots=True)
class _Replica:
    """A vLLM replica's sleep state and adapters, as the gateway has made them."""

    asleep: bool = False
    waking: asyncio.Task[bool] | None = None
    adapters: set[str] = field(default_factory=set)
    loading: dict[str, asyncio.Task[bool]] = field(default_factory=dict)
    idle_since: float = 0.0


class PrewarmActuator:
    def __init__(
        self,
        config: GatewayConfig,
        policy: PrewarmPolicy,
        clients: dict[str, UpstreamClient],
        clock: Clock,
        metrics: GatewayMetrics,
    ) -> None:
        self.policy = policy
        self.targets = {t.name: t for t in config.prewarm_targets}
        self.clients = clients
        self.clock = clock
        self.metrics = metrics
        self._warmth = {name: _Warmth() for name in self.targets}
        self._replicas = {
            t.upstream: _Replica() for t in config.prewarm_targets if t.upstream is not None
        }
        # Per upstream: the adapters it is configured to load, and its wake-up target.
        self._lora = {
            (t.upstream, t.name): t
            for t in config.prewarm_targets
            if t.action == "vllm-load-lora" and t.upstream is not None
        }
        self._wake = {
            t.upstream: t
            for t in config.prewarm_targets
            if t.action == "vllm-wake-up" and t.upstream is not None
        }
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: set[asyncio.TimerHandle] = set()

    @property
    def active(self) -> bool:
        return bool(self.targets)

    async def start(self) -> None:
        if not self.active:
            return
        self._session = aiohttp.ClientSession()
        now = self.clock()
        for name, replica in self._replicas.items():
            replica.asleep = await self._is_sleeping(name)
            replica.idle_since = now

    async def close(self) -> None:
        for h in self._timers:
            h.cancel()
        self._timers.clear()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._session is not None:
            await self._session.close()
            self._session = None

    # Events from the gateway -----------------------------------------------------------------

    def on_stage(self, app: GatewayApp, now: float) -> None:
        """`app` has begun a stage: schedule the orders the policy gives for what comes next."""
        if not self.active:
            return
        for order in self.policy.on_stage(app.view, now):
            if order.backend in self.targets:
                self._at(order.at_s, now, self._fire, order, app, "prewarm")

    def on_tool_started(self, backend: str, now: float) -> None:
        target = self.targets.get(backend)
        if target is not None:
            state = self._warmth[backend].state(now, target.cold_start_s)
            self.metrics.prewarm_tool_starts.labels(backend, state).inc()

    def on_tool_finished(self, app: GatewayApp, stage: str, backend: str, now: float) -> None:
        """Keep the instance `app` just used when the policy expects it back soon."""
        target = self.targets.get(backend)
        if target is None or target.action != "http":
            return
        hold = self.policy.retain_s(app.view, stage, backend, now)
        if hold > 0:
            self._fire(PrewarmOrder(backend, now, hold), app, "retain")

    def on_idle(self, now: float, busy: Callable[[str], bool]) -> None:
        """Put replicas to sleep that have been idle for their target's `sleep_after_idle_s`;
        `busy(upstream)` says whether calls are in flight there."""
        for name, target in self._wake.items():
            replica = self._replicas[name]
            if busy(name) or replica.waking is not None:
                replica.idle_since = now
                continue
            after = target.sleep_after_idle_s
            held = self._warmth[target.name].state(now, 0.0) != "cold"
            due = after is not None and now - replica.idle_since >= after
            if due and not replica.asleep and not held:
                replica.asleep = True  # no call is sent there until it is woken
                self._spawn(self._sleep(name))

    async def ready(self, upstream: str, model: str) -> bool:
        """Before a call to `upstream` for `model`: wake the replica and load the adapter if
        needed; False if that failed (the call should not be sent there)."""
        replica = self._replicas.get(upstream)
        if replica is None:
            return True
        ok = True
        if replica.asleep or replica.waking is not None:
            target = self._wake.get(upstream)
            self.metrics.prewarm_on_demand.labels(target.name if target else upstream).inc()
            ok = await self._wake_up(upstream)
        lora = self._lora.get((upstream, model))
        if ok and lora is not None and model not in replica.adapters:
            self.metrics.prewarm_on_demand.labels(model).inc()
            ok = await self._load_lora(upstream, lora)
        replica.idle_since = self.clock()
        return ok

    # Actions ---------------------------------------------------------------------------------

    def _fire(self, order: PrewarmOrder, app: GatewayApp, reason: str) -> None:
        target = self.targets[order.backend]
        now = self.clock()
        ready_by = now + (0.0 if reason == "retain" else target.cold_start_s)
        self._warmth[target.name].fired.append((now, ready_by + order.hold_s))
        self.metrics.prewarm_orders.labels(target.name, reason).inc()
        if target.action == "http":
            self._spawn(self._hook(target, order, app, reason))
        elif target.upstream is not None and target.action == "vllm-wake-up":
            self._spawn(self._wake_up(target.upstream))
        elif target.upstream is not None:
            self._spawn(self._load_lora(target.upstream, target))

    async def _hook(
        self, target: PrewarmTarget, order: PrewarmOrder, app: GatewayApp, reason: str
    ) -> None:
        hook = target.hook
        assert hook is not None
        assert self._session is not None
        body = {
            **hook.body,
            "backend": target.name,
            "hold_s": order.hold_s,
            "reason": reason,
            "app_id": app.app_id,
            "app_type": app.app_type,
        }
        try:
            async with self._session.request(
                hook.method,
                hook.url,
                json=body,
                headers=hook.headers,
                timeout=aiohttp.ClientTimeout(total=hook.timeout_s),
            ) as resp:
                ok = resp.status < 300
                if not ok:
                    log.warning("prewarm hook %s: HTTP %d", target.name, resp.status)
        except (aiohttp.ClientError, TimeoutError) as e:
            log.warning("prewarm hook %s failed: %r", target.name, e)
            ok = False
        self.metrics.prewarm_actions.labels(target.name, "ok" if ok else "error").inc()

    async def _wake_up(self, upstream: str) -> bool:
        """One wake-up in flight per replica; every caller waits for it."""
        replica = self._replicas[upstream]
        if not replica.asleep and replica.waking is None:
            return True
        if replica.waking is None:
            replica.waking = asyncio.ensure_future(self._post(upstream, "/wake_up", None))
        task = replica.waking
        ok = await asyncio.shield(task)
        if replica.waking is task:
            replica.waking = None
            replica.asleep = not ok
            replica.idle_since = self.clock()
            target = self._wake.get(upstream)
            name = target.name if target else upstream
            self.metrics.prewarm_actions.labels(name, "ok" if ok else "error").inc()
            if ok:
                log.info("upstream %s woken up", upstream)
        return ok

    async def _load_lora(self, upstream: str, target: PrewarmTarget) -> bool:
        replica = self._replicas[upstream]
        if target.name in replica.adapters:
            return True
        task = replica.loading.get(target.name)
        if task is None:
            body = {"lora_name": target.name, "lora_path": target.lora_path}
            task = asyncio.ensure_future(
                self._post(upstream, "/v1/load_lora_adapter", body, duplicate_ok=True)
            )
            replica.loading[target.name] = task
        ok = await asyncio.shield(task)
        if replica.loading.get(target.name) is task:
            del replica.loading[target.name]
            if ok:
                replica.adapters.add(target.name)
            self.metrics.prewarm_actions.labels(target.name, "ok" if ok else "error").inc()
        return ok

    async def _sleep(self, upstream: str) -> None:
        ok = await self._post(upstream, "/sleep?level=1", None)
        if ok:
            log.info("upstream %s put to sleep: idle", upstream)
        else:
            self._replicas[upstream].asleep = await self._is_sleeping(upstream)
        self.metrics.prewarm_sleeps.labels(upstream, "ok" if ok else "error").inc()

    async def _post(
        self, upstream: str, path: str, body: dict[str, Any] | None, duplicate_ok: bool = False
    ) -> bool:
        return await post_control(self.clients[upstream], path, body, duplicate_ok) is None

    async def _is_sleeping(self, upstream: str) -> bool:
        return await is_sleeping(self.clients[upstream])

    # Scheduling ------------------------------------------------------------------------------

    def _at(self, at_s: float, now: float, fn: Callable[..., None], *args: Any) -> None:
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle | None = None

        def run() -> None:
            if handle is not None:
                self._timers.discard(handle)
            fn(*args)

        handle = loop.call_later(max(0.0, at_s - now), run)
        self._timers.add(handle)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


# Engine controls, shared with the model swapper (`model_swaps`) ----------------------------


async def post_control(
    client: UpstreamClient,
    path: str,
    body: dict[str, Any] | None = None,
    duplicate_ok: bool = False,
) -> str | None:
    """POST one of an engine's controls (sleep, wake-up, adapter or model loads): None if it
    succeeded, else what went wrong (logged too). `duplicate_ok`: a 400 saying the thing is
    loaded "already" is a success."""
    name = client.backend.name
    try:
        async with client.session.post(client.url + path, json=body) as resp:
            if resp.status < 300:
                return None
            text = (await resp.text())[:200]
            if duplicate_ok and resp.status == 400 and "already" in text:
                return None
            log.warning("%s %s: HTTP %d %s", name, path, resp.status, text)
            return f"{path} answered HTTP {resp.status}: {text}"
    except (aiohttp.ClientError, TimeoutError) as e:
        log.warning("%s %s failed: %r", name, path, e)
        return f"{path} failed: {e!r}"


async def is_sleeping(client: UpstreamClient) -> bool:
    """vLLM's `GET /is_sleeping`; False (awake) when the engine has no sleep mode (vLLM
    outside its development mode) or does not answer."""
    try:
        async with client.session.get(client.url + "/is_sleeping") as resp:
            if resp.status == 200:
                return bool((await resp.json()).get("is_sleeping", False))
    except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError):
        pass
    return False
