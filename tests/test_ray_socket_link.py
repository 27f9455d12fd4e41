"""`ray.scheduler_link: tcp` without Ray: a scheduler core served on a socket
(`SchedulerServer`), replicas' links over `SocketRemote`. Grants as over the plain calls; a
stranger without the token is turned away; a broken connection loses only that replica's
calls, and its link queues them again under the new epoch and gets them granted."""

from __future__ import annotations

import asyncio

from hermes.gateway.config import Backend, GatewayConfig
from hermes.gateway.context import CallContext
from hermes.ray_serve.link import SchedulerLink
from hermes.ray_serve.local import LocalRemote
from hermes.ray_serve.protocol import Release, Submit
from hermes.ray_serve.scheduler import SchedulerCore
from hermes.ray_serve.socket_link import (
    Address,
    SchedulerServer,
    SocketRemote,
    frame,
    read_frame,
)


def config(policy: str = "vllm") -> GatewayConfig:
    backend = Backend(name="u0", kind="vllm", url="http://127.0.0.1:9", models=["m"], concurrency=1)
    return GatewayConfig(port=0, policy=policy, backends=[backend])


def ctx(app: str, deadline_ms: float | None = None) -> CallContext:
    return CallContext(app, "t", "s", deadline_ms, None)


async def _served(core: SchedulerCore) -> tuple[SchedulerServer, SocketRemote, Address]:
    server = SchedulerServer(core)
    address = await server.start()

    async def where() -> Address:
        return address

    return server, SocketRemote(where, LocalRemote(core).http), address


def test_steps_and_polls_over_the_socket_grant_as_the_plain_calls_do() -> None:
    async def order(over_socket: bool) -> list[int]:
        core = SchedulerCore.from_config(config("edf"))
        server, remote, _ = await _served(core)
        r = remote if over_socket else LocalRemote(core)
        # One slot; five calls under deadlines in another order than they came.
        subs = [Submit(i, ctx(f"a{i}", 1000.0 * (5 - i % 3)), "m", 10) for i in range(5)]
        got = [g.call_id for g in (await r.step("x", subs)).granted]
        for _ in range(4):
            done = Release(got[-1], "stop", {"prompt_tokens": 1, "completion_tokens": 1})
            reply = await r.step("x", [done])
            got += [g.call_id for g in reply.granted]
        assert (await r.poll("x", 0.01)).granted == []  # nothing waiting: the poll times out
        await remote.close()
        await server.close()
        return got

    async def main() -> None:
        plain, socket = await order(False), await order(True)
        assert socket == plain
        assert sorted(plain) == [0, 1, 2, 3, 4]
        assert plain != [0, 1, 2, 3, 4]

    asyncio.run(main())


def test_a_connection_without_the_token_is_turned_away() -> None:
    async def main() -> None:
        core = SchedulerCore.from_config(config())
        server, _, (host, port, _token) = await _served(core)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(frame("not the token"))
        writer.write(frame([0, "step", "intruder", [[0, 0, "m", 1, "a", "t", "s", None, None]]]))
        assert await reader.read() == b""  # closed, unanswered
        assert core.replicas == {}
        assert core.stats()["queued"] == 0
        writer.close()
        await server.close()

    asyncio.run(main())


def test_a_bad_frame_drops_only_its_connection() -> None:
    async def main() -> None:
        core = SchedulerCore.from_config(config())
        server, remote, (host, port, token) = await _served(core)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(frame(token))
        writer.write(b"\x00\x00\x00\x05nope!")  # not JSON
        assert await reader.read() == b""
        # Another replica's connection is untouched.
        assert [
            g.call_id for g in (await remote.step("r", [Submit(0, ctx("a"), "m", 1)])).granted
        ] == [0]
        writer.close()
        await remote.close()
        await server.close()

    asyncio.run(main())


def test_a_broken_connection_loses_its_replicas_calls_and_the_link_queues_them_again() -> None:
    async def main() -> None:
        core = SchedulerCore.from_config(config())
        server, remote, _ = await _served(core)
        link = SchedulerLink(remote, "r0", poll_s=0.05, scheduler_timeout_s=30)
        await link.start()
        calls = [link.submit(ctx(f"a{i}"), "m", 10) for i in range(3)]
        assert (await asyncio.wait_for(calls[0].future, 5)).upstream == "u0"
        await asyncio.sleep(0.1)
        first_epoch = link.epoch
        assert (core.stats()["queued"], core.stats()["running"]) == (2, 1)
        # The connection breaks: the scheduler gives the replica up (its calls end there) ...
        assert remote._writer is not None
        remote._writer.transport.abort()
        for _ in range(100):
            await asyncio.sleep(0.05)
            if link.epoch != first_epoch and core.stats()["queued"] == 1:
                break
        # ... and the link, back under a new epoch, has queued its two waiting calls again;
        # the running one's slot went back with the replica, so one of them runs now.
        assert core.lost_replicas == 1
        assert link.epoch != first_epoch
        assert link.restarts_seen == 1
        assert (core.stats()["queued"], core.stats()["running"]) == (1, 1)
        second = await asyncio.wait_for(calls[1].future, 5)
        link.release(calls[1].submit.call_id, "stop")
        assert second.upstream == "u0"
        assert (await asyncio.wait_for(calls[2].future, 5)).upstream == "u0"
        await link.close()
        await remote.close()
        await server.close()

    asyncio.run(main())


def test_a_replica_on_a_new_connection_is_given_up_on_its_old_one_first() -> None:
    """The old connection's end may be seen after the new one's first step: the replica's
    calls of the old one end before that step runs, never twice in the queue."""

    async def main() -> None:
        core = SchedulerCore.from_config(config())
        server, _, (host, port, token) = await _served(core)

        async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(frame(token))
            return reader, writer

        def submit(i: int) -> list[object]:
            return [0, i, "m", 1, f"a{i}", "t", "s", None, None, None]

        old_r, old_w = await connect()
        old_w.write(frame([0, "step", "r", [submit(0), submit(1)]]))
        _, (old_epoch, granted, _) = await read_frame(old_r)
        assert [g[0] for g in granted] == [0]
        assert (core.stats()["queued"], core.stats()["running"]) == (1, 1)
        # The replica comes back on a new connection, its waiting call sent again.
        new_r, new_w = await connect()
        new_w.write(frame([1, "step", "r", [submit(1)]]))
        _, (new_epoch, granted, _) = await read_frame(new_r)
        assert new_epoch != old_epoch
        assert [g[0] for g in granted] == [1]  # call 0's slot went back with the old one
        assert (core.stats()["queued"], core.stats()["running"]) == (0, 1)
        assert core.lost_replicas == 1
        assert await old_r.read() == b""  # the old connection is closed
        for w in (old_w, new_w):
            w.close()
        await server.close()

    asyncio.run(main())
