"""`hermes replay`: recorded runs driven through a gateway as their applications would drive
it, and their completion times measured from outside.

The plan (which runs, when, which requests) comes from `planning`; this module only sends
it. One aiohttp session carries all traffic, with no limit on connections: a fan-out must
reach the gateway at once and queue there, in policy order, not in the client's pool.

An application's completion time (ACT) runs from its first request to the end of its last
stage; `finish` follows. Every request ends in a response or an error counted by its status
("timeout" and "connection" when there is none); an application with any failed request
stops at that stage, is reported as failed and is left out of the ACT statistics.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from hermes.core.runs import AppRun
from hermes.replay.planning import AppPlan, LLMStep, plan
from hermes.workloads.outcomes import Outcome, summary

KEEPALIVE_S = 2.0


class ReplayError(Exception):
    """The replay cannot start: a bad setting, or a target that cannot be reached or refuses
    the client."""


@dataclass(frozen=True, slots=True)
class ReplaySettings:
    target: str  # the gateway's base URL, e.g. http://127.0.0.1:8080
    rate_per_s: float  # applications arriving per second (Poisson)
    apps: int | None = None  # None: every run once, in order
    seed: int = 0
    model: str | None = None  # None: each stage's recorded model, else the gateway's first
    api_key: str | None = None
    admin_key: str | None = None  # for events and finish; the API key when not set
    time_scale: float = 1.0  # wall seconds per recorded second (tool stages, deadlines)
    timeout_s: float = 600.0  # per request

    def __post_init__(self) -> None:
        if not self.target.startswith(("http://", "https://")):
            raise ReplayError(f"the target must be an http:// or https:// URL, got {self.target!r}")
        for name in ("rate_per_s", "time_scale", "timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ReplayError(f"{name} must be a positive number, got {value!r}")
        if self.apps is not None and self.apps < 1:
            raise ReplayError(f"apps must be at least 1, got {self.apps}")


def api_base(target: str) -> str:
    """The gateway's base URL from `target`, with or without the OpenAI-style `/v1` (the
    replay adds `/v1/...` to it): http://host:8080/v1/ -> http://host:8080."""
    base = target.rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


@dataclass(slots=True)
class _Tally:
    requests: int = 0
    errors: Counter[str] = field(default_factory=Counter)


class _Client:
    def __init__(self, session: aiohttp.ClientSession, settings: ReplaySettings) -> None:
        self.session = session
        self.base = api_base(settings.target)
        self.api = _bearer(settings.api_key)
        self.admin = _bearer(settings.admin_key or settings.api_key)
        self.tally = _Tally()

    async def post(self, path: str, body: object, headers: dict[str, str]) -> bool:
        """True for a 200; anything else is counted as an error."""
        self.tally.requests += 1
        try:
            async with self.session.post(self.base + path, json=body, headers=headers) as resp:
                await resp.read()
                if resp.status == 200:
                    return True
                self.tally.errors[str(resp.status)] += 1
        except TimeoutError:
            self.tally.errors["timeout"] += 1
        except aiohttp.ClientError:
            self.tally.errors["connection"] += 1
        return False

    async def run(self, app: AppPlan) -> Outcome:
        loop = asyncio.get_running_loop()
        start = loop.time()
        events = f"/v1/apps/{app.app_id}/events"
        ok = True
        for step in app.steps:
            if isinstance(step, LLMStep):
                headers = {**step.headers, **self.api}
                sent = [self.post("/v1/chat/completions", body, headers) for body in step.bodies]
                ok = all(await asyncio.gather(*sent))
            else:
                event = {"stage": step.stage, "stage_index": step.stage_index}
                started = {**event, **_first_sight(app), "backend": step.backend}
                ok = await self.post(events, {**started, "event": "stage_started"}, self.admin)
                if ok:
                    await asyncio.sleep(step.duration_s)
                    ok = await self.post(events, {**event, "event": "stage_finished"}, self.admin)
            if not ok:
                break
        act = loop.time() - start
        # Also after a failure: the gateway forgets the application now, not after its idle
        # timeout.
        finished = await self.post(f"/v1/apps/{app.app_id}/finish", {}, self.admin)
        return Outcome(app.app_type, act if ok and finished else None, app.deadline_s)


def _first_sight(app: AppPlan) -> dict[str, Any]:
    """What a tool event tells the gateway about an application it may not have seen yet (a
    run that starts with a tool stage)."""
    seen: dict[str, Any] = {"app_type": app.app_type}
    if app.deadline_s is not None:
        seen["deadline_ms"] = app.deadline_s * 1e3
    return seen


def _bearer(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


async def _first_model(session: aiohttp.ClientSession, settings: ReplaySettings) -> str:
    """The first model the gateway serves; also checks that it answers and takes our key."""
    url = api_base(settings.target) + "/v1/models"
    try:
        async with session.get(url, headers=_bearer(settings.api_key)) as resp:
            status, raw = resp.status, await resp.read()
    except (aiohttp.ClientError, TimeoutError) as e:
        why = str(e) or type(e).__name__
        raise ReplayError(f"cannot reach the gateway at {settings.target}: {why}") from None
    if status == 401:
        raise ReplayError(f"{url}: the gateway refused the API key (401)")
    if status != 200:
        raise ReplayError(f"{url}: HTTP {status}; is this a hermes gateway?")
    try:
        listed = json.loads(raw)["data"]
        names = [m["id"] for m in listed if isinstance(m.get("id"), str) and m["id"]]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ReplayError(f"{url}: not a list of models; is this a hermes gateway?") from None
    if not names:
        raise ReplayError(f"{url}: the gateway serves no model")
    return str(names[0])


async def replay(runs: Sequence[AppRun], settings: ReplaySettings) -> dict[str, Any]:
    """Replay `runs` through the gateway at `settings.target`; the bench-shaped summary."""
    timeout = aiohttp.ClientTimeout(
        total=settings.timeout_s, sock_connect=min(10.0, settings.timeout_s)
    )
    # Idle connections are dropped before the server's keep-alive timeout (uvicorn's is 5 s):
    # one reused just as the server closes it fails the request ("connection reset").
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_S)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        default_model = await _first_model(session, settings)
        try:
            apps = plan(
                runs,
                settings.rate_per_s,
                apps=settings.apps,
                seed=settings.seed,
                model=settings.model,
                default_model=default_model,
                time_scale=settings.time_scale,
            )
        except ValueError as e:
            raise ReplayError(str(e)) from None
        client = _Client(session, settings)
        loop = asyncio.get_running_loop()
        began = time.monotonic()
        t0 = loop.time()
        tasks = []
        for app in apps:
            delay = t0 + app.start_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(loop.create_task(client.run(app)))
        outcomes = list(await asyncio.gather(*tasks))
        wall = time.monotonic() - began
    out: dict[str, Any] = dict(summary(outcomes))
    out["errors"] = dict(sorted(client.tally.errors.items()))
    out["requests"] = client.tally.requests
    out["wall_s"] = wall
    out["by_type"] = {
        t: summary([o for o in outcomes if o.app == t]) for t in sorted({o.app for o in outcomes})
    }
    out["config"] = {
        **asdict(settings),
        "api_key": None if settings.api_key is None else "***",
        "admin_key": None if settings.admin_key is None else "***",
        "default_model": default_model,
        "runs": len(runs),
        "stream": False,
    }
    return out
