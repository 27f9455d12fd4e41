"""What the gateway costs: latency added over calling an instant upstream directly, the most
calls per second it sustains, and its CPU time per call.

Three processes, so that none shares a GIL with another:

- the upstream: a raw asyncio HTTP/1.1 server that answers every POST with one canned chat
  completion (no framework, no JSON parsing: as close to zero time as Python serves);
- the gateway: `hermes.gateway.serve`, as `hermes serve` runs it (uvicorn at the production
  log level), one vLLM-kind backend of concurrency 4,096 so that no call queues;
- the load generator: a raw asyncio HTTP/1.1 client on keep-alive connections. Open loop: a
  call sent every 1/rate s whatever the answers (latency from the write to the last byte,
  stamped in `data_received`, so the generator's own scheduling does not count). Closed loop:
  N connections, each sending its next call when its last is answered.

The machine has 2 cores. By default the gateway gets core 0 to itself and the upstream and the
load generator share core 1 (`--pin none` lets the OS place them). Direct calls are measured
with the same generator on the same core, so "added" is gateway minus direct at each
percentile.

Variants, each a gateway process of its own: the policy (`vllm`, `gittins`); the upstream
client (aiohttp, the gateway's own; httpx, a branch defined here); `--baseline-src DIR`, the
gateway from another source tree (a copy of `src/` before a change); `--access-log`, uvicorn's
access log back on; `--fast-path DIR`, uvicorn on httptools (and uvloop) found in DIR. All are
started at once and measured in turn, round after round, so that a busy spell of the shared
machine hits every variant alike; the summary gives medians over rounds. Each phase also
records the share of the machine's CPU that other processes took, and the server's CPU time
per call (from /proc), which unlike latency does not grow when others take its core.

Usage:
    python benchmarks/gateway_overhead.py [--json OUT] [--rate 500] [--seconds 10]
        [--rounds 3] [--concurrency 4,16,64] [--policies vllm,gittins]
        [--clients aiohttp,httpx] [--baseline-src DIR] [--access-log] [--fast-path DIR]
        [--profile OUT.txt] [--pin split|none]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import json
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Coroutine, Generator
from importlib import metadata
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import numpy as np

from hermes.gateway.config import Backend, GatewayConfig
from hermes.gateway.upstream import UpstreamClient

MODEL = "m"
BODY = json.dumps(
    {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8}
).encode()
CANNED = json.dumps(
    {
        "id": "cmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi."},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
    }
).encode()


def _http_response(body: bytes) -> bytes:
    head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def _content_length(head: bytes) -> int:
    i = head.find(b"content-length:")
    if i < 0:
        return 0
    j = head.find(b"\r\n", i)
    return int(head[i + 15 : j if j >= 0 else len(head)])


# The upstream ---------------------------------------------------------------------------------


class _Instant(asyncio.Protocol):
    """Answers each request on the connection as soon as its body has arrived."""

    ANSWER = _http_response(CANNED)
    HEALTH = _http_response(b"{}")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        while (end := buf.find(b"\r\n\r\n")) >= 0:
            head = buf[:end].lower()
            total = end + 4 + _content_length(head)
            if len(buf) < total:
                break
            self.transport.write(self.HEALTH if head.startswith(b"get") else self.ANSWER)
            buf = buf[total:]
        self.buf = buf


async def _upstream(spec: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Instant, "127.0.0.1", spec["port"], backlog=1024)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()


# The gateway ----------------------------------------------------------------------------------


class _HttpxAnswer:
    """An httpx response read whole, seen as the aiohttp response the gateway reads."""

    def __init__(self, resp: httpx.Response) -> None:
        self._resp = resp
        self.status = resp.status_code

    async def read(self) -> bytes:
        return self._resp.content

    def release(self) -> None:
        pass


class _HttpxPost:
    """Awaited or entered, as aiohttp's `session.post(...)` is."""

    def __init__(self, answer: Coroutine[Any, Any, _HttpxAnswer]) -> None:
        self._answer = answer

    def __await__(self) -> Generator[Any, None, _HttpxAnswer]:
        return self._answer.__await__()

    async def __aenter__(self) -> _HttpxAnswer:
        return await self._answer

    async def __aexit__(self, *exc: object) -> None:
        pass


class _HttpxSession:
    """The experiment's branch: httpx in place of the aiohttp session, one pooled
    `httpx.AsyncClient` per upstream, for non-streaming calls (what the benchmark sends)."""

    def __init__(self) -> None:
        limits = httpx.Limits(
            max_connections=None, max_keepalive_connections=4096, keepalive_expiry=60
        )
        self._client = httpx.AsyncClient(limits=limits, timeout=600.0)

    def post(
        self,
        url: str,
        data: bytes | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
    ) -> _HttpxPost:
        return _HttpxPost(self._post(url, data, json, headers))

    async def _post(
        self, url: str, data: bytes | None, body: Any, headers: dict[str, str] | None
    ) -> _HttpxAnswer:
        resp = await self._client.post(url, content=data, json=body, headers=headers)
        return _HttpxAnswer(resp)

    async def close(self) -> None:
        await self._client.aclose()


async def _start_httpx(self: UpstreamClient) -> None:
    self._session = _HttpxSession()  # type: ignore[assignment]


async def _gateway(spec: dict[str, Any]) -> None:
    import cProfile

    from hermes.gateway import serve

    config = GatewayConfig(
        port=spec["port"],
        policy=spec["policy"],
        backends=[
            Backend(name="up", kind="vllm", url=spec["upstream"], models=[MODEL], concurrency=4096)
        ],
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    parser = "httptools" if importlib.util.find_spec("httptools") else "h11"
    print(f"gateway: {type(loop).__module__} loop, {parser} parser", file=sys.stderr, flush=True)
    profiler = cProfile.Profile() if spec.get("profile") else None
    with contextlib.ExitStack() as patches:
        if spec["client"] == "httpx":
            patches.enter_context(mock.patch.object(UpstreamClient, "start", _start_httpx))
        if profiler is not None:
            profiler.enable()
        try:
            if spec.get("access_log"):  # the access log back on, to price it alone
                async with serve.running(config, log_level="info", access_log=True):
                    await stop.wait()
            else:
                await serve.serve_until_stopped(config, stop)
        finally:
            if profiler is not None:
                profiler.disable()
                profiler.dump_stats(spec["profile"])


# The load generator ---------------------------------------------------------------------------


class _Conn(asyncio.Protocol):
    """One keep-alive connection, one call at a time; stamps the answer's arrival."""

    def __init__(self) -> None:
        self.buf = b""
        self.need = -1
        self.status = 0
        self.closed = False
        self.waiter: asyncio.Future[tuple[int, float]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.need < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            self.status = int(head[9:12])
            self.need = end + 4 + _content_length(head)
        if len(self.buf) >= self.need and self.waiter is not None:
            done = time.perf_counter()
            self.buf = self.buf[self.need :]
            self.need = -1
            self.waiter.set_result((self.status, done))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True  # e.g. the server's keep-alive timeout on an idle connection
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))

    def call(self, request: bytes) -> asyncio.Future[tuple[int, float]]:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.waiter


async def _connect(port: int) -> _Conn:
    _, conn = await asyncio.get_running_loop().create_connection(_Conn, "127.0.0.1", port)
    return conn


def _request(port: int) -> bytes:
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(BODY)}\r\n\r\n"
    )
    return head.encode() + BODY


async def _open_loop(spec: dict[str, Any]) -> dict[str, Any]:
    port, rate = spec["port"], spec["rate"]
    request = _request(port)
    idle = [await _connect(port) for _ in range(16)]
    warm = int(spec["warmup"] * rate)
    total = warm + int(spec["seconds"] * rate)
    latency: list[float] = []
    late: list[float] = []
    errors = 0
    answered = 0  # warm-up included, to share out the servers' CPU time

    async def one(i: int, due: float) -> None:
        nonlocal errors, answered
        while idle and idle[-1].closed:
            idle.pop()
        conn = idle.pop() if idle else await _connect(port)
        sent = time.perf_counter()
        try:
            status, done = await conn.call(request)
        except ConnectionError:
            errors += 1
            return
        idle.append(conn)
        answered += 1
        if i >= warm:
            latency.append(done - sent)
            late.append(sent - due)
            errors += status != 200

    tasks = []
    t0 = time.perf_counter() + 0.05
    i = 0
    while i < total:
        now = time.perf_counter()
        while i < total and t0 + i / rate <= now:
            tasks.append(asyncio.ensure_future(one(i, t0 + i / rate)))
            i += 1
        await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
    elapsed = time.perf_counter() - t0 - spec["warmup"]
    # Calls still unanswered 10 s after the last was sent count apart (a gateway overrun).
    _, pending = await asyncio.wait(tasks, timeout=10.0)
    for t in pending:
        t.cancel()
    return {
        "rate": rate,
        "answered": len(latency),
        "calls": answered,
        "errors": errors,
        "unfinished": len(pending),
        "achieved_per_s": len(latency) / elapsed,
        "latency_ms": _percentiles(latency),
        "send_lag_ms": _percentiles(late),
    }


async def _closed_loop(spec: dict[str, Any]) -> dict[str, Any]:
    port, n = spec["port"], spec["concurrency"]
    request = _request(port)
    conns = [await _connect(port) for _ in range(n)]
    start = time.perf_counter() + spec["warmup"]
    end = start + spec["seconds"]
    latency: list[float] = []
    errors = 0
    calls = 0  # warm-up included, to share out the servers' CPU time

    async def worker(conn: _Conn) -> None:
        nonlocal errors, calls
        while (sent := time.perf_counter()) < end:
            try:
                status, done = await conn.call(request)
            except ConnectionError:  # e.g. closed after a 500: count it, and reconnect
                errors += 1
                conn = await _connect(port)
                continue
            calls += 1
            if sent >= start and done <= end:
                latency.append(done - sent)
                errors += status != 200

    workers = [asyncio.ensure_future(worker(c)) for c in conns]
    _, pending = await asyncio.wait(workers, timeout=spec["warmup"] + spec["seconds"] + 10.0)
    for t in pending:
        t.cancel()
    return {
        "concurrency": n,
        "per_s": len(latency) / spec["seconds"],
        "calls": calls,
        "errors": errors,
        "unfinished": len(pending),
        "latency_ms": _percentiles(latency),
    }


def _percentiles(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return dict.fromkeys(("mean", "p50", "p90", "p99", "p99.9", "max"), float("nan"))
    ms = np.asarray(seconds) * 1e3
    q = np.percentile(ms, [50, 90, 99, 99.9])
    return {
        "mean": round(float(ms.mean()), 4),
        "p50": round(float(q[0]), 4),
        "p90": round(float(q[1]), 4),
        "p99": round(float(q[2]), 4),
        "p99.9": round(float(q[3]), 4),
        "max": round(float(ms.max()), 4),
    }


async def _load(spec: dict[str, Any]) -> None:
    run = _open_loop if spec["mode"] == "open" else _closed_loop
    print(json.dumps(await run(spec)))


# The orchestrator -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Procs:
    def __init__(self, pin: bool, log_dir: Path) -> None:
        self.pin = pin
        self.log_dir = log_dir
        self.alive: list[subprocess.Popen[bytes]] = []

    def start(self, role: str, spec: dict[str, Any], cpu: int, src: str | None = None) -> Any:
        env = dict(os.environ)
        if src is not None:  # a baseline source tree comes first on the path
            env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
        cmd = [sys.executable, __file__, role, json.dumps(spec)]
        # The gateway logs as in production, to a file (a pipe nobody reads would block it).
        log = open(self.log_dir / f"{role}.log", "ab")  # noqa: SIM115
        out = subprocess.PIPE if role == "load" else subprocess.DEVNULL
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=log)
        log.close()
        if self.pin:
            os.sched_setaffinity(proc.pid, {cpu})
        self.alive.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self.alive.remove(proc)

    def stop_all(self) -> None:
        for p in list(self.alive):
            self.stop(p)

    def load(self, spec: dict[str, Any]) -> dict[str, Any]:
        proc = self.start("load", spec, cpu=1)
        out, _ = proc.communicate()
        self.alive.remove(proc)
        if proc.returncode != 0:
            raise RuntimeError(f"load generator failed ({proc.returncode}); see {self.log_dir}")
        result: dict[str, Any] = json.loads(out)
        return result


def _wait_ready(port: int, path: str | None, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if path is None:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing ready on port {port} after {timeout_s} s")


def _proc_cpu(pid: int) -> float:
    """CPU seconds process `pid` has used so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_ticks(pids: list[int]) -> tuple[float, float, float]:
    """(busy, all, ours) CPU seconds so far: every CPU's, and our long-lived processes' plus
    our reaped children's (the load generators)."""
    tick = os.sysconf("SC_CLK_TCK")
    cpu = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = cpu[3] + cpu[4]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    ours = sum(_proc_cpu(pid) for pid in pids) + children.ru_utime + children.ru_stime
    return (sum(cpu) - idle) / tick, sum(cpu) / tick, ours


def _measure(procs: _Procs, spec: dict[str, Any], server: int) -> dict[str, Any]:
    """One load run; with the share of the machine's CPU that others used meanwhile, and the
    CPU time the server under test (`server`, a pid) spent per call: unlike latency, the
    latter does not grow when other processes take the core."""
    pids = [p.pid for p in procs.alive]
    busy0, all0, ours0 = _cpu_ticks(pids)
    server0 = _proc_cpu(server)
    out = procs.load(spec)
    server1 = _proc_cpu(server)
    busy1, all1, ours1 = _cpu_ticks(pids)
    foreign = max(0.0, (busy1 - busy0) - (ours1 - ours0)) / max(all1 - all0, 1e-9)
    out["foreign_cpu"] = round(foreign, 3)
    out["server_cpu_us_per_call"] = round((server1 - server0) * 1e6 / max(out["calls"], 1), 1)
    return out


def _median(values: list[float]) -> float:
    return round(float(np.median(values)), 4)


def _summary(rounds: list[dict[str, Any]], direct: list[dict[str, Any]] | None) -> dict[str, Any]:
    """Medians over rounds: each latency percentile, the latency added over the same round's
    direct calls, and throughput at each concurrency."""
    keys = ("mean", "p50", "p90", "p99", "p99.9")
    opened = [r["open_loop"] for r in rounds]
    out: dict[str, Any] = {
        "latency_ms": {k: _median([o["latency_ms"][k] for o in opened]) for k in keys},
        "errors": sum(
            o["errors"] + o["unfinished"]
            for r in rounds
            for o in [r["open_loop"], *r["closed_loop"]]
        ),
        "achieved_per_s": _median([o["achieved_per_s"] for o in opened]),
    }
    if direct is not None:
        out["added_ms"] = {
            k: _median([o["latency_ms"][k] - d["open_loop"]["latency_ms"][k]
                        for o, d in zip(opened, direct, strict=True)])
            for k in keys
        }  # fmt: skip
    levels = sorted({c["concurrency"] for r in rounds for c in r["closed_loop"]})
    closed = {
        n: _median([c["per_s"] for r in rounds for c in r["closed_loop"] if c["concurrency"] == n])
        for n in levels
    }
    out["closed_loop_per_s"] = closed
    out["max_per_s"] = max(closed.values())
    phases = [o for r in rounds for o in [r["open_loop"], *r["closed_loop"]]]
    out["foreign_cpu"] = _median([o["foreign_cpu"] for o in phases])
    # The server's CPU per call, open loop and saturated; what one core it had to itself
    # would serve (1 / CPU per call when saturated), whatever others took from it here.
    out["cpu_us_per_call_open"] = _median([o["server_cpu_us_per_call"] for o in opened])
    saturated = _median([r["closed_loop"][-1]["server_cpu_us_per_call"] for r in rounds])
    out["cpu_us_per_call_saturated"] = saturated
    out["one_core_per_s"] = round(1e6 / saturated) if saturated > 0 else None
    # The round whose open loop others disturbed least.
    q = min(range(len(rounds)), key=lambda i: opened[i]["foreign_cpu"])
    quiet: dict[str, Any] = {
        "round": q + 1,
        "foreign_cpu": opened[q]["foreign_cpu"],
        "latency_ms": opened[q]["latency_ms"],
    }
    if direct is not None:  # over the direct calls' own least disturbed round
        d = min((r["open_loop"] for r in direct), key=lambda o: o["foreign_cpu"])["latency_ms"]
        quiet["added_ms"] = {k: round(opened[q]["latency_ms"][k] - d[k], 4) for k in keys}
    out["quietest_round"] = quiet
    return out


def _machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions: dict[str, str | None] = {}
    for pkg in ("aiohttp", "httpx", "uvicorn", "starlette", "h11", "uvloop", "httptools"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "packages": versions,
    }


def _profile_top(path: str, n: int = 25) -> str:
    import io
    import pstats

    out = io.StringIO()
    pstats.Stats(path, stream=out).sort_stats("tottime").print_stats(n)
    return out.getvalue()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default="benchmarks/results/gateway_overhead.json")
    p.add_argument("--rate", type=float, default=500.0)
    p.add_argument("--seconds", type=float, default=10.0, help="open-loop seconds measured")
    p.add_argument("--closed-seconds", type=float, default=3.0)
    p.add_argument("--concurrency", default="4,16,64", help="closed-loop connections")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--policies", default="vllm,gittins")
    p.add_argument("--clients", default="aiohttp,httpx", help="httpx runs with the first policy")
    p.add_argument("--baseline-src", default=None, help="also run the gateway from this src/")
    p.add_argument(
        "--profile", default=None, help="cProfile a gateway (32 connections, 10 s); top to this"
    )
    p.add_argument("--pin", choices=["split", "none"], default="split")
    p.add_argument(
        "--access-log", action="store_true", help="also the first policy with uvicorn's access log"
    )
    p.add_argument(
        "--fast-path",
        default=None,
        help="a folder holding httptools and uvloop (pip install --target): also the first "
        "policy with uvicorn on httptools, and on httptools and uvloop",
    )
    p.add_argument(
        "--pure-python",
        action="store_true",
        help="also the first policy with httptools and uvloop hidden: uvicorn's h11 parser on "
        "asyncio's loop, the path hermes takes where they do not install",
    )
    p.add_argument(
        "--uvloop",
        action="store_true",
        help="also the first policy on uvloop (with httptools), as `hermes serve` runs it",
    )
    args = p.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    policies = args.policies.split(",")
    first = policies[0]
    # label -> what the gateway process runs: policy, upstream client, source tree or extra
    # folder first on its path (None: this tree alone), access log, uvloop
    variants: dict[str, dict[str, Any]] = {}

    def variant(label: str, policy: str, client: str = "aiohttp", **kw: Any) -> None:
        base = {"policy": policy, "client": client, "path": None, "access_log": False}
        variants[label] = base | {"uvloop": False} | kw

    if args.baseline_src:
        for pol in policies:
            variant(f"before/{pol}", pol, path=args.baseline_src)
    for pol in policies:
        variant(f"{pol}/aiohttp", pol)
    if args.access_log:
        variant(f"{first}/aiohttp+access-log", first, access_log=True)
    if args.fast_path:
        variant(f"{first}/aiohttp+httptools", first, path=args.fast_path)
        variant(f"{first}/aiohttp+httptools+uvloop", first, path=args.fast_path, uvloop=True)
    if args.pure_python:
        variant(f"{first}/aiohttp+h11+asyncio", first, pure=True)
    if args.uvloop:
        variant(f"{first}/aiohttp+httptools+uvloop", first, uvloop=True)
    for c in args.clients.split(","):
        if c != "aiohttp":
            variant(f"{first}/{c}", first, c)

    logs = Path(tempfile.mkdtemp(prefix="gateway_overhead_"))
    procs = _Procs(args.pin == "split", logs)
    up_port = _free_port()
    ports: dict[str, int] = {"direct": up_port}
    rounds: dict[str, list[dict[str, Any]]] = {"direct": []}
    started = time.time()
    try:
        pids = {"direct": procs.start("upstream", {"port": up_port}, cpu=1).pid}
        _wait_ready(up_port, None)
        # Every gateway up at once (idle ones cost nothing), measured in turn, round after
        # round: a slow spell of the shared machine then hits every variant alike.
        for label, v in variants.items():
            ports[label] = _free_port()
            spec = v | {"port": ports[label], "upstream": f"http://127.0.0.1:{up_port}"}
            pids[label] = procs.start("gateway", spec, cpu=0, src=v["path"]).pid
            rounds[label] = []
        for label in rounds:
            _wait_ready(ports[label], None if label == "direct" else "/healthz")
        for r in range(args.rounds):
            for label, port in ports.items():
                spec = {"mode": "open", "port": port, "rate": args.rate, "warmup": 1.0}
                opened = _measure(procs, spec | {"seconds": args.seconds}, pids[label])
                closed = [
                    _measure(
                        procs,
                        {"mode": "closed", "port": port, "concurrency": n, "warmup": 1.0}
                        | {"seconds": args.closed_seconds},
                        pids[label],
                    )
                    for n in levels
                ]
                rounds[label].append({"open_loop": opened, "closed_loop": closed})
                print(
                    f"round {r + 1} {label:26} p50 {opened['latency_ms']['p50']:8.3f} ms"
                    f"  p99 {opened['latency_ms']['p99']:9.3f} ms  closed "
                    + " ".join(f"{c['per_s']:6.0f}" for c in closed)
                    + f" /s  {closed[-1]['server_cpu_us_per_call']:5.0f} µs CPU per call"
                    + f"  others' CPU {100 * opened['foreign_cpu']:.0f} %",
                    flush=True,
                )
        profile_top = None
        if args.profile:  # apart from the measurements, which cProfile would slow
            procs.stop_all()
            procs.start("upstream", {"port": up_port}, cpu=1)
            _wait_ready(up_port, None)
            port = _free_port()
            spec = {
                "port": port,
                "upstream": f"http://127.0.0.1:{up_port}",
                "policy": policies[0],
                "client": "aiohttp",
                "profile": str(logs / "gateway.prof"),
            }
            gw = procs.start("gateway", spec, cpu=0)
            _wait_ready(port, "/healthz")
            procs.load(
                {"mode": "closed", "port": port, "concurrency": 32, "warmup": 1.0}
                | {"seconds": 10.0}
            )
            procs.stop(gw)
            profile_top = _profile_top(str(logs / "gateway.prof"))
            Path(args.profile).write_text(profile_top)
    finally:
        procs.stop_all()

    result: dict[str, Any] = {
        "machine": _machine(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started)),
        "setup": {
            "pin": args.pin,
            "rate": args.rate,
            "open_seconds": args.seconds,
            "closed_seconds": args.closed_seconds,
            "closed_concurrency": levels,
            "rounds": args.rounds,
            "request_bytes": len(BODY),
            "response_bytes": len(CANNED),
        },
        "direct": {"summary": _summary(rounds["direct"], None), "rounds": rounds["direct"]},
        "variants": {},
    }
    for label, v in variants.items():
        result["variants"][label] = v | {
            "summary": _summary(rounds[label], rounds["direct"]),
            "rounds": rounds[label],
        }
    print(
        f"\nmedians of {args.rounds} rounds; open loop at {args.rate:.0f}/s, closed loop at "
        f"{args.concurrency} connections; quiet: the round others disturbed least\n"
        f"{'':30}{'p50 ms':>8}{'p99 ms':>8}{'+p50':>8}{'+p99':>8}{'quiet +p50':>11}"
        f"{'quiet +p99':>11}{'errors':>7}{'max/s':>7}{'µs CPU/call':>12}{'1 core/s':>9}"
        f"{'others':>7}"
    )
    rows = [("direct", result["direct"]["summary"])]
    rows += [(k, v["summary"]) for k, v in result["variants"].items()]
    for label, s in rows:
        lat, added, quiet = s["latency_ms"], s.get("added_ms"), s["quietest_round"]
        cols = [
            f"{added['p50']:.3f}" if added else "-",
            f"{added['p99']:.3f}" if added else "-",
            f"{quiet['added_ms']['p50']:.3f}" if added else "-",
            f"{quiet['added_ms']['p99']:.3f}" if added else "-",
        ]
        print(
            f"{label:30}{lat['p50']:8.3f}{lat['p99']:8.2f}{cols[0]:>8}{cols[1]:>8}{cols[2]:>11}"
            f"{cols[3]:>11}{s['errors']:7d}{s['max_per_s']:7.0f}"
            f"{s['cpu_us_per_call_saturated']:12.0f}{s['one_core_per_s'] or 0:9.0f}"
            f"{100 * s['foreign_cpu']:6.0f}%"
        )
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}; process logs in {logs}")


if __name__ == "__main__":
    roles = {"upstream": _upstream, "gateway": _gateway, "load": _load}
    if len(sys.argv) == 3 and sys.argv[1] in roles:
        role_spec = json.loads(sys.argv[2])
        if role_spec.get("pure"):  # as if neither were installed: their imports fail
            sys.modules["httptools"] = None  # type: ignore[assignment]
            sys.modules["uvloop"] = None  # type: ignore[assignment]
        if role_spec.get("uvloop"):  # a dependency now (or found on the --fast-path folder)
            importlib.import_module("uvloop").run(roles[sys.argv[1]](role_spec))
        else:
            asyncio.run(roles[sys.argv[1]](role_spec))
    else:
        main()
