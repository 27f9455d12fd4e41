"""How a GPU group's engines change model: vLLM's sleep mode (one server per model, one
awake) or llama.cpp's router (one server, one model loaded). `model_swaps` decides when."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from hermes.gateway.prewarm import is_sleeping, post_control
from hermes.gateway.upstream import UpstreamClient

SLEEP_TRIES = 5  # an engine answers 409 to a sleep while it still finishes a request
LOAD_POLL_S = 0.1


@dataclass(frozen=True, slots=True)
class Member:
    """One model of a GPU group, and the upstream that serves it."""

    upstream: str
    model: str


class Actuator(Protocol):
    """How a GPU group's engines change model. Each action: None if done, else why not."""

    async def probe(self, members: Sequence[Member]) -> list[bool]:
        """Which members are active (awake, loaded) now."""
        ...

    async def deactivate(self, member: Member) -> str | None: ...

    async def activate(self, member: Member) -> str | None: ...


class VllmSleep:
    """vLLM's sleep mode (servers started with `--enable-sleep-mode` and
    `VLLM_SERVER_DEV_MODE=1`), one server per model."""

    def __init__(self, clients: Mapping[str, UpstreamClient], level: int) -> None:
        self.clients = clients
        self.level = level

    async def probe(self, members: Sequence[Member]) -> list[bool]:
        return [not await is_sleeping(self.clients[m.upstream]) for m in members]

    async def deactivate(self, member: Member) -> str | None:
        client = self.clients[member.upstream]
        error: str | None = None
        for _ in range(SLEEP_TRIES):
            error = await post_control(client, f"/sleep?level={self.level}")
            if error is None or "HTTP 409" not in error:
                return error
            await asyncio.sleep(0.2)  # a request the gateway saw end still ends there
        return error

    async def activate(self, member: Member) -> str | None:
        client = self.clients[member.upstream]
        if self.level == 1 or client.backend.kind == "emulated":  # the emulator reloads itself
            return await post_control(client, "/wake_up")
        # Level 2 discarded the weights: reallocate them, load them again, then the KV cache.
        return (
            await post_control(client, "/wake_up?tags=weights")
            or await post_control(client, "/collective_rpc", {"method": "reload_weights"})
            or await post_control(client, "/wake_up?tags=kv_cache")
        )


class LlamaCppRouter:
    """llama.cpp's server in router mode (`llama-server --models-dir ...`, no model named):
    `POST /models/load` and `POST /models/unload` with `{"model": name}`, and `GET /models`
    listing each model with its status (`loaded`, `loading`, `unloaded`). A load returns at
    once and the model loads in the background, so `activate` polls the status until it is
    `loaded`, for at most `timeout_s`."""

    def __init__(self, clients: Mapping[str, UpstreamClient], timeout_s: float) -> None:
        self.clients = clients
        self.timeout_s = timeout_s

    async def probe(self, members: Sequence[Member]) -> list[bool]:
        statuses: dict[str, tuple[str, bool]] = {}
        for upstream in dict.fromkeys(m.upstream for m in members):
            statuses.update(await self._statuses(self.clients[upstream]) or {})
        return [statuses.get(m.model, ("", False))[0] == "loaded" for m in members]

    async def deactivate(self, member: Member) -> str | None:
        client = self.clients[member.upstream]
        return await post_control(client, "/models/unload", {"model": member.model})

    async def activate(self, member: Member) -> str | None:
        client = self.clients[member.upstream]
        error = await post_control(client, "/models/load", {"model": member.model}, True)
        if error is not None:
            return error
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        while True:
            statuses = await self._statuses(client)
            if statuses is None:  # no status list: the load's answer is all there is
                return None
            value, failed = statuses.get(member.model, ("missing", False))
            if value == "loaded":
                return None
            if failed or value == "missing":
                why = "failed to load" if failed else "is not listed in GET /models"
                return f"model {member.model!r} {why}"
            if loop.time() >= deadline:
                return f"model {member.model!r} still {value} after {self.timeout_s:g} s"
            await asyncio.sleep(LOAD_POLL_S)

    async def _statuses(self, client: UpstreamClient) -> dict[str, tuple[str, bool]] | None:
        """Each listed model's status and whether its last load failed; None if the server
        gives no list."""
        try:
            async with client.session.get(client.url + "/models") as resp:
                if resp.status != 200:
                    return None
                data = (await resp.json()).get("data")
        except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError):
            return None
        if not isinstance(data, list):
            return None
        out: dict[str, tuple[str, bool]] = {}
        for entry in data:
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                continue
            status = entry.get("status")
            if isinstance(status, dict):  # {"value": "loaded", "failed": true, ...}
                out[entry["id"]] = (str(status.get("value", "")), bool(status.get("failed")))
            else:
                out[entry["id"]] = (str(status or ""), False)
        return out
