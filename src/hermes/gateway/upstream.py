"""One long-lived aiohttp session per upstream engine, and how each kind takes a priority.

aiohttp rather than httpx for the upstream side: one pooled session per upstream, streaming
bodies read as they arrive, and the lower per-request overhead of the two in our gateway
benchmark (docs/benchmarks.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aiohttp

from hermes.gateway.config import Backend

# Engine priorities are integers; ranks are seconds (or deadlines), kept to the millisecond.
_PRIORITY_SCALE = 1000.0
_PRIORITY_LIMIT = 2**62


def with_fields(raw: bytes, body: Mapping[str, Any], fields: Mapping[str, Any]) -> bytes:
    """The client's JSON object `raw` (parsed: `body`) with `fields` set. New fields are
    appended to the bytes as they came: re-encoding the whole body would cost 28 µs at 16 KB
    and 100 µs at 64 KB (docs/benchmarks.md, gateway overhead). Re-encoded only when a field
    is there already, or the bytes are not a plain UTF-8 object."""
    head = raw.rstrip()
    if head.endswith(b"}") and raw.lstrip().startswith(b"{") and fields.keys().isdisjoint(body):
        if not fields:
            return raw
        head = head[:-1].rstrip()
        sep = b"" if head.endswith(b"{") else b","
        return head + sep + json.dumps(fields)[1:-1].encode() + b"}"
    return json.dumps({**body, **fields}).encode()


def engine_priority(kind: str, rank: float) -> int | None:
    """The request priority `kind` understands for a policy rank (lower rank first), or None
    for engines without one. vLLM runs lower values first (with `--scheduling-policy
    priority`); SGLang runs higher values first."""
    if kind not in ("vllm", "sglang", "emulated"):
        return None
    # Clipped before rounding: an infinite rank (a retried call goes first) has no integer.
    value = round(max(-_PRIORITY_LIMIT, min(_PRIORITY_LIMIT, rank * _PRIORITY_SCALE)))
    return -value if kind == "sglang" else value


class UpstreamClient:
    def __init__(self, backend: Backend, connect_timeout_s: float, total_timeout_s: float) -> None:
        self.backend = backend
        self.url = backend.url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=total_timeout_s, sock_connect=connect_timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        headers = {}
        if self.backend.api_key:
            headers["Authorization"] = f"Bearer {self.backend.api_key}"
        self._session = aiohttp.ClientSession(
            timeout=self._timeout,
            headers=headers,
            # Below the 5 s after which uvicorn-based engines (vLLM, SGLang, llama.cpp's
            # server) close idle connections: a pooled connection is never one they just shut.
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=4),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError(f"upstream {self.backend.name!r} is not started")
        return self._session

    def prepare(
        self, raw: bytes, body: dict[str, Any], rank: float, extra: Mapping[str, Any] = {}
    ) -> bytes:
        """The body to send (`raw`, parsed: `body`): the policy's rank as the engine's
        priority where it has one, and the `extra` fields."""
        fields = dict(extra)
        priority = engine_priority(self.backend.kind, rank)
        if priority is not None:
            fields["priority"] = priority
        return with_fields(raw, body, fields)

    async def healthy(self) -> bool:
        try:
            async with self.session.get(
                self.url + self.backend.health_path, timeout=aiohttp.ClientTimeout(total=5)
            ) as resp:
                return resp.status < 500
        except (aiohttp.ClientError, TimeoutError):
            return False
