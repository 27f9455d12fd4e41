"""Slow clients (issue 16, defect 10): a client that sends its request headers or body too
slowly loses its connection (headers) or gets 408 (body), rather than holding it for as long
as it likes. The slowloris here is bounded: loopback only, a fixed number of connections,
and it stops by itself after `_LIMIT_S` whatever happens."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

import httpx

from hermes.gateway.server import Gateway
from hermes.testing.gateway_thread import gateway_in_thread
from test_gateway_faults import CHAT, body, config, metric, replica, wait_for

TIMEOUT_S = 0.5
_LIMIT_S = 15.0  # the slow clients give up after this, closed or not
_HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\n"


@contextmanager
def slow_gateway() -> Iterator[tuple[Gateway, str, int]]:
    with replica("ok", delay_s=0.001) as (_, url):
        cfg = config({"r": url}, client_header_timeout_s=TIMEOUT_S, client_body_timeout_s=TIMEOUT_S)
        with gateway_in_thread(cfg.model_copy(update={"port": 0})) as (gw, base):
            port = urlsplit(base).port
            assert port is not None
            yield gw, base, port


async def _trickle(port: int, first: bytes, drip: bytes) -> float | None:
    """Send `first`, then `drip` a byte at a time, 0.1 s apart, until the gateway closes the
    connection or `_LIMIT_S` passes; seconds until it closed, or None if it never did."""
    began = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(first)
        await writer.drain()
        while time.monotonic() - began < _LIMIT_S:
            writer.write(drip[:1] or b"x")
            drip = drip[1:]
            try:
                await writer.drain()
                if await asyncio.wait_for(reader.read(65536), 0.1) == b"":
                    return time.monotonic() - began
            except TimeoutError:
                continue
            except ConnectionError:
                return time.monotonic() - began
        return None
    finally:
        writer.close()


def test_slowloris_headers_are_cut_off_and_the_gateway_keeps_serving() -> None:
    n = 40
    with slow_gateway() as (gw, base, port):

        async def main() -> list[float | None]:
            slow = [_trickle(port, _HEAD, b"X-Slow: " + b"a" * 1000) for _ in range(n)]
            return await asyncio.gather(*slow)

        async def silent() -> float | None:  # connects and sends nothing at all
            return await _trickle(port, b"", b"")

        closed = asyncio.run(main())
        assert all(c is not None for c in closed), closed  # before: held until _LIMIT_S
        assert asyncio.run(silent()) is not None
        assert metric(gw, "hermes_slow_clients_total", phase="headers") >= n
        r = httpx.post(base + CHAT, json=body(), timeout=10)
        assert r.status_code == 200


def test_a_slow_request_on_a_kept_alive_connection_is_cut_off_too() -> None:
    """After an answer, uvicorn's keep-alive timer stops at the next request's first byte: a
    client that then sends the rest slowly would be held without the header timeout."""
    with slow_gateway() as (_, _base, port):

        async def main() -> float | None:
            payload = json.dumps(body()).encode()
            whole = _HEAD + b"Content-Length: %d\r\n\r\n" % len(payload) + payload
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(whole)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200")
            length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            writer.close()
            return await _trickle(port, whole + _HEAD, b"X-Slow: " + b"a" * 1000)

        assert asyncio.run(main()) is not None


def test_a_body_that_trickles_in_gets_408() -> None:
    with slow_gateway() as (gw, _base, port):

        async def main() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(_HEAD + b"Content-Length: 1000\r\n\r\n{")
                await writer.drain()
                began = time.monotonic()
                answer = b""
                while time.monotonic() - began < _LIMIT_S:
                    try:
                        writer.write(b" ")
                        await writer.drain()
                        chunk = await asyncio.wait_for(reader.read(65536), 0.1)
                    except TimeoutError:
                        continue
                    except ConnectionError:
                        break
                    if not chunk:
                        break
                    answer += chunk
                return answer
            finally:
                writer.close()

        answer = asyncio.run(main())
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        error = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
        assert "did not arrive within 0.5 s" in error["message"]
        assert error["code"] == 408
        assert wait_for(lambda: metric(gw, "hermes_slow_clients_total", phase="body") == 1)


def test_an_idle_kept_alive_connection_is_not_cut_off_by_the_header_timeout() -> None:
    """Idle between requests is uvicorn's keep-alive timer's business: a client that sends
    its next request (whole) after more than the header timeout is served, not raced by a
    close (the fault suite once saw such a race as a broken answer under load)."""
    with slow_gateway() as (_, _base, port):

        async def main() -> list[bytes]:
            payload = json.dumps(body()).encode()
            whole = _HEAD + b"Content-Length: %d\r\n\r\n" % len(payload) + payload
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            heads = []
            try:
                for _ in range(2):
                    writer.write(whole)
                    await writer.drain()
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                    heads.append(head.split(b"\r\n")[0])
                    length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
                    await reader.readexactly(length)
                    await asyncio.sleep(3 * TIMEOUT_S)  # idle, past the header timeout
            finally:
                writer.close()
            return heads

        assert asyncio.run(main()) == [b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK"]
