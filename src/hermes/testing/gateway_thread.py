"""The gateway (and its emulated engines) on an event loop of its own, in a thread, for tests
and benchmarks that drive it from synchronous code or from another event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from hermes.gateway.config import GatewayConfig
from hermes.gateway.serve import running
from hermes.gateway.server import Gateway

__all__ = ["gateway_in_thread"]

_STOP_S = 90.0


@contextmanager
def gateway_in_thread(
    config: GatewayConfig, startup_timeout_s: float = 30.0
) -> Iterator[tuple[Gateway, str]]:
    """Serve `config` until the block ends; yields the gateway and its base URL.

    The gateway's state belongs to its loop's thread: read it (e.g. `gateway.graphs`) only
    when no traffic is in flight.
    """
    ready = threading.Event()
    box: dict[str, object] = {}
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def main() -> None:
        try:
            async with running(config) as (gateway, url):
                box["gateway"], box["url"] = gateway, url
                ready.set()
                await stop.wait()
        except Exception as e:
            if ready.is_set():
                raise
            box["error"] = e  # the caller raises it
            ready.set()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    if not ready.wait(startup_timeout_s):
        raise RuntimeError(f"the gateway did not start within {startup_timeout_s:g} s")
    error = box.get("error")
    if isinstance(error, BaseException):
        thread.join(5)
        loop.close()
        raise RuntimeError("the gateway did not start") from error
    try:
        gateway = box["gateway"]
        assert isinstance(gateway, Gateway)
        yield gateway, str(box["url"])
    finally:
        loop.call_soon_threadsafe(stop.set)
        # The gateway drains for up to 30 s, then uvicorn gives busy connections 5 s: a loop
        # still running after that is a bug to report, not an event loop and sockets to leak
        # into whatever test runs next (as a busy machine once showed).
        thread.join(_STOP_S)
        if thread.is_alive():
            raise RuntimeError(f"the gateway did not stop within {_STOP_S:g} s")
        loop.close()
