"""The gateway's listening socket: connections it accepts must have Nagle's algorithm off.

With it on, a response written in two parts (headers, then body, as uvicorn writes them)
waited ~40 ms for the client's delayed ACK: every non-streaming call took 44 ms at least
(benchmarks/gateway_overhead.py).
"""

from __future__ import annotations

import asyncio
import socket

from hermes.gateway.serve import _bound


def test_accepted_connections_have_nagle_off() -> None:
    async def nodelay_of_accepted() -> int:
        loop = asyncio.get_running_loop()
        accepted: asyncio.Future[int] = loop.create_future()

        class Probe(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sock = transport.get_extra_info("socket")
                accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        sock = _bound("127.0.0.1", 0)
        server = await loop.create_server(Probe, sock=sock)  # as uvicorn serves it
        async with server:
            _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
            value = await asyncio.wait_for(accepted, 5)
            writer.close()
        return value

    assert asyncio.run(nodelay_of_accepted()) != 0
