"""The scheduler's `step` and `poll` over a plain TCP connection (`ray.scheduler_link: tcp`):
a step's round trip took 4.7 ms through Ray's actor calls on this busy 2-core machine and
1.1 ms on a kept-open socket (docs/benchmarks.md, "Ray"), and every call waits for one
step's answer before it can go upstream.

Frames are a 4-byte big-endian length and JSON (the protocol's tuples: ints, strings,
floats, small dicts; never pickles). A connection opens with the scheduler's token, which
replicas get from the actor through Ray (`address`), so only they can talk to it. Requests
carry an id and are answered in any order (a long poll waits while steps go by); steps run
in the order they arrive, as Ray runs an actor's calls from one caller.

Faults: a connection that breaks loses the replicas that used it, as a silent replica is lost
(their waiting calls leave the queue, running ones give their slots back); the replica's
link sends its waiting calls again, under the new epoch its next answer shows. A replica
that cannot connect (the actor restarted elsewhere: a new address) asks Ray for the address
again. No Ray here: the actor module serves it, the ingress deployment connects with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from hermes.ray_serve.protocol import (
    HttpAnswer,
    HttpCall,
    Op,
    Reply,
    ops_from_wire,
    ops_to_wire,
    reply_from_wire,
    reply_to_wire,
)
from hermes.ray_serve.scheduler import SchedulerCore

log = logging.getLogger("hermes.ray")

MAX_FRAME = 64 << 20  # bytes: a frame announcing more is not ours
Address = tuple[str, int, str]  # host, port, token


class FrameError(ConnectionError):
    """A frame that is not one of ours: the connection is dropped."""


async def read_frame(reader: asyncio.StreamReader) -> Any:
    size = int.from_bytes(await reader.readexactly(4), "big")
    if size > MAX_FRAME:
        raise FrameError(f"a frame of {size} bytes (at most {MAX_FRAME})")
    try:
        return json.loads(await reader.readexactly(size))
    except ValueError as e:
        raise FrameError(f"a frame that is not JSON: {e}") from None


def frame(message: Any) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    return len(body).to_bytes(4, "big") + body


class SchedulerServer:
    """Serves `core`'s `step` and `poll` to replicas that open with `token`."""

    def __init__(self, core: SchedulerCore, host: str = "127.0.0.1") -> None:
        self.core = core
        self.host = host
        self.token = secrets.token_hex(16)
        self._server: asyncio.Server | None = None
        self._conns: dict[asyncio.StreamWriter, asyncio.Task[None] | None] = {}
        self._owner: dict[str, asyncio.StreamWriter] = {}  # each replica's current connection

    async def start(self) -> Address:
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, self.host, 0)
        port = int(self._server.sockets[0].getsockname()[1])
        return self.host, port, self.token

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        # Each connection closed ends its handler (as a replica hanging up would).
        for writer in list(self._conns):
            writer.close()
        await asyncio.gather(*[t for t in self._conns.values() if t is not None])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns[writer] = asyncio.current_task()
        work: set[asyncio.Task[None]] = set()
        try:
            if await read_frame(reader) != self.token:
                raise FrameError("a connection without the scheduler's token")
            while True:
                req_id, method, replica, arg = await read_frame(reader)
                if method not in ("step", "poll"):
                    raise FrameError(f"no method {method!r}")
                self._take_over(str(replica), writer)
                # A task each, created in arrival order: a step's work runs before its first
                # await, so steps run in the order sent; a long poll waits in its own.
                task = asyncio.get_running_loop().create_task(
                    self._answer(writer, req_id, str(method), str(replica), arg)
                )
                work.add(task)
                task.add_done_callback(work.discard)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, TypeError) as e:
            if not isinstance(e, asyncio.IncompleteReadError):
                log.warning("scheduler link: %s; connection dropped", e)
        finally:
            for t in work:  # answers nobody can read: what they did is undone below
                t.cancel()
            for name in [n for n, w in self._owner.items() if w is writer]:
                self._lose(name)
            writer.close()
            self._conns.pop(writer, None)

    def _take_over(self, replica: str, writer: asyncio.StreamWriter) -> None:
        """`replica` speaks on `writer`. A replica opens a new connection only after its old
        one broke; if the old one's end has not been seen here yet, the replica is given up
        now, before the new connection's first step (its calls there would be sent again)."""
        old = self._owner.get(replica)
        if old is not writer:
            if old is not None:
                self._lose(replica)
                old.close()
            self._owner[replica] = writer

    def _lose(self, replica: str) -> None:
        del self._owner[replica]
        r = self.core.replicas.get(replica)
        if r is not None:
            self.core.lose(replica, r, "its connection to the scheduler broke")

    async def _answer(
        self, writer: asyncio.StreamWriter, req_id: Any, method: str, replica: str, arg: Any
    ) -> None:
        try:
            if method == "step":
                reply = await self.core.step(replica, ops_from_wire(arg))
            else:
                reply = await self.core.poll(replica, float(arg))
        except (ValueError, TypeError, IndexError) as e:  # a malformed request
            log.warning(
                "scheduler link: a bad %s from %s (%s); connection dropped", method, replica, e
            )
            writer.close()  # its replica's requests fail there and are sent again
            return
        if not writer.is_closing():
            writer.write(frame([req_id, reply_to_wire(reply)]))


class SocketRemote:
    """`SchedulerRemote` over the scheduler's socket; `address()` finds it (through Ray),
    `http` goes the way `address` came (the actor's calls: small and rare)."""

    def __init__(
        self,
        address: Callable[[], Awaitable[Address]],
        http: Callable[[HttpCall], Awaitable[HttpAnswer]],
    ) -> None:
        self._address = address
        self._http = http
        self._ids = itertools.count()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def step(self, replica: str, ops: Sequence[Op]) -> Reply:
        return reply_from_wire(await self._call("step", replica, ops_to_wire(ops)))

    async def poll(self, replica: str, wait_s: float) -> Reply:
        return reply_from_wire(await self._call("poll", replica, wait_s))

    async def http(self, request: HttpCall) -> HttpAnswer:
        return await self._http(request)

    async def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        self._drop(ConnectionError("the link is closed"))

    async def _call(self, method: str, replica: str, arg: Any) -> Any:
        writer = await self._connected()
        req_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = fut
        writer.write(frame([req_id, method, replica, arg]))
        try:
            return await fut
        finally:
            self._pending.pop(req_id, None)

    async def _connected(self) -> asyncio.StreamWriter:
        async with self._lock:  # one connection, opened by whoever needs it first
            if self._writer is None or self._writer.is_closing():
                host, port, token = await self._address()
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(frame(token))
                self._writer = writer
                self._reader_task = asyncio.get_running_loop().create_task(self._read(reader))
            return self._writer

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                req_id, result = await read_frame(reader)
                fut = self._pending.get(req_id)
                if fut is not None and not fut.done():
                    fut.set_result(result)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, TypeError) as e:
            self._drop(ConnectionError(f"the scheduler's connection broke: {e!r}"))

    def _drop(self, error: ConnectionError) -> None:
        """Fail every request waiting on the connection; the next opens a new one."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(error)
