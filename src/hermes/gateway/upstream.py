"""One long-lived aiohttp session per upstream engine, and how each kind takes a priority.

aiohttp rather than httpx for the upstream side: one pooled session per upstream, streaming
bodies read as they arrive, and the lower per-request overhead of the two in our gateway
benchmark (docs/benchmarks.md).

Timeouts (docs/gateway.md, "Timeouts and health"): a connection must open within
`connect_timeout_s`; the answer's first byte must come within `first_byte_timeout_s` of the
call; after it, no silence may last `chunk_timeout_s`. Both are aiohttp's socket-read
timeout, one timer per connection restarted by each read: `answer_began` switches it from the
first to the second, so that a healthy stream runs as long as it keeps sending.
"""

from __future__ import annotations

import json
import logging
import weakref
from collections.abc import Mapping
from typing import Any

import aiohttp

from hermes.gateway.config import Backend, GatewayConfig
from hermes.gateway.config_parts import SERVE_SCHEME
from hermes.gateway.errors import UpstreamTimeoutError
from hermes.gateway.inference_headers import CallFacts, inference_headers

log = logging.getLogger("hermes.gateway")

# Engine priorities are integers; ranks are seconds (or deadlines), kept to the millisecond.
_PRIORITY_SCALE = 1000.0
_PRIORITY_LIMIT = 2**62
_JSON_BODY = {"Content-Type": "application/json"}


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


def upstream_clients(config: GatewayConfig) -> dict[str, UpstreamClient]:
    """A client per backend of `config`, by name, with its timeouts."""
    if config.upstream_timeout_s is not None:
        log.warning(
            "upstream_timeout_s is deprecated: it caps a whole call, so it cuts healthy long "
            "streams; set upstream_first_byte_timeout_s and upstream_chunk_timeout_s instead "
            "(honoured for now: calls are cut after %g s)",
            config.upstream_timeout_s,
        )
    return {
        b.name: UpstreamClient(
            b,
            config.connect_timeout_s,
            config.upstream_first_byte_timeout_s,
            config.upstream_chunk_timeout_s,
            config.upstream_timeout_s,
        )
        for b in config.backends
    }


class UpstreamClient:
    """`total_timeout_s`: the deprecated cap on a whole call (`upstream_timeout_s`), if set."""

    def __init__(
        self,
        backend: Backend,
        connect_timeout_s: float,
        first_byte_timeout_s: float = 600.0,
        chunk_timeout_s: float = 60.0,
        total_timeout_s: float | None = None,
    ) -> None:
        self.backend = backend
        self.url = backend.url.rstrip("/")
        self.first_byte_timeout_s = first_byte_timeout_s
        self.chunk_timeout_s = chunk_timeout_s
        self.total_timeout_s = total_timeout_s
        self._timeout = aiohttp.ClientTimeout(
            total=total_timeout_s, sock_connect=connect_timeout_s, sock_read=first_byte_timeout_s
        )
        self._session: aiohttp.ClientSession | None = None
        # Answers still coming in, for `reset` to cut off.
        self._answers: weakref.WeakSet[aiohttp.ClientResponse] = weakref.WeakSet()
        opts = backend.inference_headers
        self.inference = opts if opts.sent_to(backend.kind) else None

    async def start(self) -> None:
        self._session = self._new_session()

    def _new_session(self) -> aiohttp.ClientSession:
        headers = {}
        if self.backend.api_key:
            headers["Authorization"] = f"Bearer {self.backend.api_key}"
        return aiohttp.ClientSession(
            timeout=self._timeout,
            headers=headers,
            # Below the 5 s after which uvicorn-based engines (vLLM, SGLang, llama.cpp's
            # server) close idle connections: a pooled connection is never one they just shut.
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=4),
        )

    async def post(
        self, path: str, data: bytes, headers: Mapping[str, str]
    ) -> aiohttp.ClientResponse:
        """A call sent, its headers read; its body is for the caller to read and release."""
        resp = await self.session.post(self.url + path, data=data, headers=headers)
        self._answers.add(resp)
        return resp

    async def reset(self) -> None:
        """Close every connection to the upstream, in use or idle, and start afresh: the calls
        in flight on it fail now (a stalled upstream would hold them to their timeouts).

        An answer whose body is still coming is failed first: aiohttp's close detaches a
        connection from its body, so a read waiting on it would wait forever, its read timer
        stopped with the connection."""
        cut = aiohttp.ClientConnectionError(
            f"connection closed: upstream {self.backend.name!r} was taken out of rotation"
        )
        for resp in list(self._answers):
            if not resp.closed and not resp.content.is_eof():
                resp.content.set_exception(cut)
        self._answers.clear()
        if self._session is not None:
            old, self._session = self._session, self._new_session()
            await old.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def answer_began(self, resp: aiohttp.ClientResponse) -> None:
        """The answer's first byte came: from now on the read timeout is the silence allowed
        between two pieces of it. Restarted now, as it would be by the next read."""
        conn = resp.connection
        if conn is None or conn.protocol is None or resp.content.is_eof():
            return  # read to its end already: no timer runs any more
        conn.protocol.read_timeout = self.chunk_timeout_s
        conn.protocol.start_timeout()

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

    def headers(self, call: CallFacts) -> dict[str, str]:
        """The request headers of a call: its JSON content type, and the inference gateway's
        headers where this backend gets them (`inference_headers`)."""
        if self.inference is None:
            return _JSON_BODY
        return {**_JSON_BODY, **inference_headers(self.inference, call)}

    async def healthy(self, timeout_s: float = 5.0) -> bool:
        """Whether the upstream answers its health path within `timeout_s` (any status under
        500: an engine without the path still answers 404)."""
        if self.url.startswith(SERVE_SCHEME):
            return True  # a Ray Serve deployment: Serve checks its replicas, replaces failed ones
        try:
            async with self.session.get(
                self.url + self.backend.health_path, timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as resp:
                return resp.status < 500
        except (aiohttp.ClientError, TimeoutError):
            return False


def late(client: UpstreamClient, first: bool) -> UpstreamTimeoutError:
    """The error for an upstream that sent no first byte in time (`first`), or fell silent
    for too long mid-answer."""
    name = client.backend.name
    if client.total_timeout_s is not None:  # deprecated; it may be what cut the call
        return UpstreamTimeoutError(
            f"upstream {name!r} timed out (upstream_timeout_s {client.total_timeout_s:g} s, "
            f"upstream_first_byte_timeout_s {client.first_byte_timeout_s:g} s, "
            f"upstream_chunk_timeout_s {client.chunk_timeout_s:g} s)"
        )
    if first:
        return UpstreamTimeoutError(
            f"upstream {name!r} timed out: no first byte within {client.first_byte_timeout_s:g} s"
        )
    return UpstreamTimeoutError(
        f"upstream {name!r} timed out: silent for {client.chunk_timeout_s:g} s mid-answer"
    )
