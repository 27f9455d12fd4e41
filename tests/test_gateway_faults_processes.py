"""The fault suite (issue 16): the gateway and its upstreams as the processes they are in
production (`hermes serve`, `hermes emulate`), with faults injected under load: an upstream
stopped (SIGSTOP) and resumed, killed (SIGKILL) and restarted on its port, slow clients
holding connections, and the gateway stopped (SIGTERM) while calls wait for a model that is
down. Invariants: every accepted call ends in a full answer or an explicit error (none hangs,
none is cut off silently); the gateway's memory and state stay bounded; a stalled or dead
upstream leaves rotation and comes back. Bounded in time: about a minute in all.

(The run store's faults and two tenants are in test_gateway_store.py and
test_gateway_tenants.py.)
"""

from __future__ import annotations

import asyncio
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from hermes.testing.ports import free_port
from hermes.testing.prometheus_text import metric_sum
from test_gateway_faults import CHAT, outcome

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

_CLI = [sys.executable, "-c", "from hermes.cli import main; main()"]
_TIME_SCALE = "0.02"  # an emulated call of 16 tokens takes a few ms of wall time


def _wait_http(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        time.sleep(0.05)
    raise AssertionError(f"{url} did not answer within {timeout_s:g} s")


@contextmanager
def _process(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen([*_CLI, *args], stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGKILL late
                proc.kill()
        proc.wait(timeout=30)


class Upstream:
    """`hermes emulate` on a fixed port, which can be stopped, resumed, killed and restarted."""

    def __init__(self, port: int, log: Path) -> None:
        self.port = port
        self.log = log
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = ["emulate", "--model", "m", "--port", str(self.port), "--time-scale", _TIME_SCALE]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen([*_CLI, *args], stdout=out, stderr=subprocess.STDOUT)
        _wait_http(self.url + "/health")

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            self.proc.wait(timeout=30)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=30)


@contextmanager
def _cluster(
    tmp_path: Path, **extra: Any
) -> Iterator[tuple[str, list[Upstream], subprocess.Popen[bytes], Path]]:
    """Two emulated upstreams and a gateway in front of them, each a process; yields the
    gateway's URL, the upstreams, the gateway's process and its log."""
    ups = [Upstream(free_port(), tmp_path / f"up{i}.log") for i in range(2)]
    port = free_port()
    cfg: dict[str, Any] = {
        "port": port,
        "policy": "gittins",
        "backends": [
            {"name": f"up{i}", "kind": "vllm", "url": u.url, "models": ["m"], "concurrency": 8}
            for i, u in enumerate(ups)
        ],
        "health_check": {"interval_s": 0.25, "timeout_s": 0.5, "failures": 2},
        "upstream_first_byte_timeout_s": 30,
        "upstream_chunk_timeout_s": 10,
        "client_header_timeout_s": 1.0,
        "client_body_timeout_s": 1.0,
        "app_idle_timeout_s": 2.0,
    } | extra
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg))
    try:
        for u in ups:
            u.start()
        log = tmp_path / "gateway.log"
        with _process(["serve", "--config", str(path)], log) as gw:
            base = f"http://127.0.0.1:{port}"
            _wait_http(base + "/healthz")
            yield base, ups, gw, log
    finally:
        for u in ups:
            u.close()


def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    assert m is not None
    return int(m[1])


def _metric(text: str, name: str, **labels: str) -> float:
    return metric_sum(text, name, **labels)


class Load:
    """`workers` clients calling in a loop (unary and streaming, tagged and not) until
    stopped; every outcome kept, classified by `outcome`."""

    def __init__(self, base: str, workers: int = 12) -> None:
        self.base = base
        self.workers = workers
        self.outcomes: list[str] = []
        self.stopping = False
        self.rng = random.Random(0)

    async def _one(self, client: httpx.AsyncClient, i: int, n: int) -> None:
        stream = self.rng.random() < 0.5
        headers = {}
        if i % 2:
            headers = {"x-hermes-app-id": f"w{i}-{n // 4}", "x-hermes-app-type": "agent"}
        payload: dict[str, Any] = {"model": "m"}
        payload["messages"] = [{"role": "user", "content": "hi " * 20}]
        payload |= {"max_tokens": self.rng.randint(4, 32), "stream": stream}
        try:
            async with client.stream("POST", CHAT, json=payload, headers=headers) as r:
                raw = await r.aread()
            self.outcomes.append(outcome(r.status_code, raw, stream))
        except httpx.TimeoutException:
            self.outcomes.append("a hang (client timeout)")
        except httpx.HTTPError as e:
            self.outcomes.append(f"a broken answer: {e!r}")

    async def _worker(self, client: httpx.AsyncClient, i: int) -> None:
        n = 0
        while not self.stopping:
            await self._one(client, i, n)
            n += 1

    async def run(self, body: Callable[[httpx.AsyncClient], Any]) -> None:
        """Load while `body(client)` injects its faults."""
        async with httpx.AsyncClient(base_url=self.base, timeout=60.0) as client:
            workers = [asyncio.create_task(self._worker(client, i)) for i in range(self.workers)]
            try:
                await body(client)
            finally:
                self.stopping = True
                await asyncio.gather(*workers)


async def _until(cond: Callable[[], Any], timeout_s: float, what: str) -> float:
    """Seconds until `await cond()` is true; fails after `timeout_s`."""
    began = time.monotonic()
    while not await cond():
        if time.monotonic() - began > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s:g} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - began


async def _slowloris(port: int, n: int, limit_s: float) -> int:
    """`n` connections sending headers a byte per 0.1 s, for `limit_s` at most; how many the
    gateway closed."""

    async def one() -> bool:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: g\r\n")
            began = time.monotonic()
            while time.monotonic() - began < limit_s:
                try:
                    writer.write(b"x")
                    await writer.drain()
                    if await asyncio.wait_for(reader.read(1024), 0.1) == b"":
                        return True
                except TimeoutError:
                    continue
                except ConnectionError:
                    return True
            return False
        finally:
            writer.close()

    return sum(await asyncio.gather(*(one() for _ in range(n))))


def test_upstreams_stopped_killed_and_restarted_under_load(tmp_path: Path) -> None:
    with _cluster(tmp_path) as (base, (a, _b), gw, log):
        port = int(base.rsplit(":", 1)[1])
        memory: list[int] = []
        took: dict[str, float] = {}  # seconds from each fault to the gateway's reaction

        async def faults(client: httpx.AsyncClient) -> None:
            async def up(name: str, value: float) -> bool:
                text = (await client.get("/metrics")).text
                return _metric(text, "hermes_upstream_up", upstream=name) == value

            await asyncio.sleep(3)  # warm: both replicas serve
            memory.append(_rss_kib(gw.pid))
            a.signal(signal.SIGSTOP)  # stalled: connections accepted, nothing answered
            took["stopped: out"] = await _until(lambda: up("up0", 0), 30, "stopped: out")
            health = (await client.get("/healthz")).json()
            assert health["upstreams"] == {"up0": "down", "up1": "up"}
            closed = await _slowloris(port, 20, limit_s=15)  # meanwhile, slow clients
            assert closed == 20
            a.signal(signal.SIGCONT)
            took["resumed: in"] = await _until(lambda: up("up0", 1), 30, "resumed: in")
            await asyncio.sleep(1)
            a.signal(signal.SIGKILL)
            took["killed: out"] = await _until(lambda: up("up0", 0), 30, "killed: out")
            await asyncio.sleep(1)
            await asyncio.to_thread(a.start)  # on the same port
            took["restarted: in"] = await _until(lambda: up("up0", 1), 30, "restarted: in")
            await asyncio.sleep(3)
            memory.append(_rss_kib(gw.pid))

        load = Load(base)
        asyncio.run(load.run(faults))
        ok = load.outcomes.count("ok")
        print(f"{len(load.outcomes)} calls, {ok} ok; reactions (s): {took}; RSS KiB: {memory}")
        bad = [o for o in load.outcomes if o not in ("ok", "error")]
        assert not bad, bad[:10]
        assert ok > 0.8 * len(load.outcomes), (ok, len(load.outcomes))
        # Nothing left behind: no call queued or running, no plain call's application kept.
        health = httpx.get(base + "/healthz", timeout=10).json()
        assert (health["queued"], health["running"]) == (0, 0), health

        # The tagged applications end when idle (app_idle_timeout_s 2 s): none is held.
        def apps() -> int:
            n: int = httpx.get(base + "/healthz", timeout=10).json()["apps"]
            return n

        deadline = time.monotonic() + 30
        while apps() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert apps() == 0
        text = httpx.get(base + "/metrics", timeout=10).text
        assert _metric(text, "hermes_request_success_total") >= ok
        # Memory: what the gateway holds does not grow with the calls it served.
        assert memory[1] - memory[0] < 40_000, memory  # KiB
        assert gw.poll() is None, log.read_text()[-3000:]


def test_a_gateway_stopped_while_calls_wait_for_a_dead_model_exits_and_answers_503(
    tmp_path: Path,
) -> None:
    """Both replicas killed, calls waiting (queue_timeout_s 600): SIGTERM stops the gateway
    promptly, and each waiting call gets 503 rather than a dropped connection."""
    with _cluster(tmp_path, queue_timeout_s=600) as (base, ups, gw, log):
        for u in ups:
            u.signal(signal.SIGKILL)

        async def main() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=base, timeout=120) as client:

                async def down() -> bool:
                    return bool((await client.get("/healthz")).json()["unavailable_models"])

                await _until(down, 30, "the model reported unavailable")
                payload = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
                calls = [asyncio.create_task(client.post(CHAT, json=payload)) for _ in range(5)]

                async def queued() -> bool:
                    return bool((await client.get("/healthz")).json()["queued"] == 5)

                await _until(queued, 30, "five calls queued")
                gw.send_signal(signal.SIGTERM)
                return await asyncio.gather(*calls)

        answers = asyncio.run(main())
        assert [r.status_code for r in answers] == [503] * 5
        assert all("shutting down" in r.json()["error"]["message"] for r in answers)
        # Before: never (the waiting calls held uvicorn's shutdown, and Ctrl-C with it).
        assert gw.wait(timeout=60) == 0, log.read_text()[-3000:]
