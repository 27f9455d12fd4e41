"""Admission in the gateway (issue 15): what a controller decision costs, and how long the
`concurrency: auto` limit takes to settle after a step change in load.

    python benchmarks/gateway_admission.py [--decisions 200000] [--time-scale 0.5]
        [--rates 2,8,2,8] [--phase-s 30] [--prompt-tokens 1000,2000] [--output-tokens 64,256]
        [--max-concurrency 256] [--out DIR]

(a) Decision cost, in process: `AutoLimit.observe` called as the gateway calls it (every call's
    grant and end, and every 0.5 s; here a synthetic engine whose iteration takes a + b*c, time
    advancing 2 ms per call), and the gateway's whole path at a call's end
    (`AdmissionFeed.finished`: the call's timings, an observation, a changed limit to the
    dispatcher) and at its grant (`started`: an observation). Median and p99 in
    microseconds, timed one call at a time (perf_counter_ns).
(b) Settling, over real HTTP: `hermes emulate` (an emulated Llama-2-7B A100 as its own
    process, `--time-scale` wall seconds per engine second) behind the gateway (in this
    process, one `kind: vllm` backend with `concurrency: auto`, so the feed scrapes the
    emulator's vLLM-style /metrics). Open-loop Poisson arrivals of non-streamed calls (prompt
    and output tokens uniform in the given ranges, seeded; long prompts, so that each
    sequence's KV reads weigh on an iteration and the knee lies below max_concurrency) at each
    rate of `--rates` (calls per wall second) for `--phase-s` wall seconds each. The limit is
    sampled every 0.25 s. The controller sets about sqrt(N a / b) with N the calls present, so
    the limit follows the arrivals' noise; settling is judged on its rolling median over
    `WINDOW_S`: a phase's settled value is the median of its last 30 % of samples, and the
    limit has settled at the first time after which the rolling median stays within
    [settled / 1.5 - 2, settled * 1.5 + 2] to the phase's end. Reported per phase in wall
    seconds and in the emulator's seconds (wall / time scale).

Writes DIR/results.json (default benchmarks/results/gateway_admission). Wall-clock figures
vary with the host's load (the emulator falls behind wall time when the host is saturated):
run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import numpy as np
from prometheus_client import CollectorRegistry

from hermes.gateway.admission_feed import AdmissionFeed
from hermes.gateway.config import Backend, gateway_config_from_dict
from hermes.gateway.dispatch import Dispatcher, Upstream
from hermes.gateway.upstream import UpstreamClient
from hermes.policies.admission import AutoLimit
from hermes.testing.gateway_thread import gateway_in_thread

MODEL = "m"
SAMPLE_S = 0.25
WINDOW_S = 4.0  # the rolling median's window
# Settled: the rolling median within [v / BAND - SLACK, v * BAND + SLACK] of the phase's final
# value v. Wide: the limit follows sqrt(N) of the calls present N, a Poisson count.
BAND, SLACK = 1.5, 2


# (a) Decision cost -----------------------------------------------------------------------------


def _percentiles(ns: list[int]) -> dict[str, float]:
    us = np.asarray(ns, dtype=float) / 1000.0
    return {
        "median_us": round(float(np.median(us)), 3),
        "p99_us": round(float(np.percentile(us, 99)), 3),
        "max_us": round(float(us.max()), 3),
        "n": len(ns),
    }


def _engine_tokens(c: int, dt: float) -> float:
    """Output tokens a synthetic engine makes in `dt` s at `c` calls: t(c) = 10 ms + 0.2 ms c."""
    return dt * c / (0.010 + 0.0002 * c) if c else 0.0


def observe_cost(n: int, seed: int = 0) -> dict[str, Any]:
    """`AutoLimit.observe`, called `n` times as the gateway calls it."""
    rng = random.Random(seed)
    adm = AutoLimit(256)
    now, tokens, waiting = 0.0, 0.0, 0
    times: list[int] = []
    for _ in range(n):
        now += 0.002
        in_engine = min(adm.limit, 1 + waiting + rng.randint(0, 40))
        waiting = max(0, waiting + rng.choice((-1, 0, 1)))
        tokens += _engine_tokens(in_engine, 0.002)
        t0 = time.perf_counter_ns()
        adm.observe(now, in_engine=in_engine, waiting=waiting, output_tokens=int(tokens))
        times.append(time.perf_counter_ns() - t0)
    return _percentiles(times) | {"decisions": adm.decisions, "final_limit": adm.limit}


@dataclass(eq=False)
class _EndedCall:
    """What the feed reads of a call at its end."""

    chunks: int = 0
    rt: bool = False
    granted_s: float | None = None
    first_token_s: float | None = None


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def feed_cost(n: int, seed: int = 0) -> dict[str, Any]:
    """The gateway's path at a call's end, `AdmissionFeed.finished` (record_call, observe, a
    changed limit to the dispatcher and its grants), and at its grant, `started` (observe)."""
    rng = random.Random(seed)
    backend = Backend(name="u", url="http://127.0.0.1:1", models=[MODEL])
    clock = _Clock()
    clients = {"u": UpstreamClient(backend, 1.0)}
    feed = AdmissionFeed([backend], clients, CollectorRegistry(), clock)
    d = Dispatcher([Upstream("u", frozenset({MODEL}), feed.limit("u"))])
    feed.attach(d, lambda grants: None)
    for i in range(64):  # a standing queue, so that a raised limit grants
        d.submit(i, MODEL, float(i))
    times: list[int] = []
    starts: list[int] = []
    for i in range(n):
        clock.t += 0.002
        call = _EndedCall(granted_s=clock.t - 0.5, first_token_s=clock.t - 0.4)
        out = rng.randint(16, 256)
        t0 = time.perf_counter_ns()
        feed.started(call, "u")  # type: ignore[arg-type]
        starts.append(time.perf_counter_ns() - t0)
        feed.left(call, "u")  # type: ignore[arg-type]
        d.release("u")
        d.submit(64 + i, MODEL, float(64 + i))
        t0 = time.perf_counter_ns()
        feed.finished(call, "u", 200, out, ok=True)  # type: ignore[arg-type]
        times.append(time.perf_counter_ns() - t0)
    return {
        "end": _percentiles(times),
        "start": _percentiles(starts),
        "final_limit": d.limit_of("u"),
    }


# (b) Settling after a step change --------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start_emulator(port: int, time_scale: float) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-c", "from hermes.cli import main; main()", "emulate"]
    cmd += ["--model", MODEL, "--port", str(port), "--time-scale", str(time_scale)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("hermes emulate did not answer within 60 s")


async def _drive(base: str, gw: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Open-loop arrivals at each rate in turn; the limit sampled every SAMPLE_S."""
    rates = [float(r) for r in args.rates.split(",")]
    p_lo, p_hi = (int(x) for x in args.prompt_tokens.split(","))
    o_lo, o_hi = (int(x) for x in args.output_tokens.split(","))
    rng = random.Random(1)
    outcome = {"ok": 0, "failed": 0}
    samples: list[tuple[float, int, int, int, int]] = []  # t, phase, limit, busy, queued
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def call() -> None:
            prompt = "x" * (4 * rng.randint(p_lo, p_hi))  # the emulator: 4 characters a token
            body = {"model": MODEL, "prompt": prompt, "max_tokens": rng.randint(o_lo, o_hi)}
            try:
                async with session.post(base + "/v1/completions", json=body) as r:
                    await r.read()
                    outcome["ok" if r.status == 200 else "failed"] += 1
            except (aiohttp.ClientError, TimeoutError):
                outcome["failed"] += 1

        tasks: set[asyncio.Task[None]] = set()
        t0 = time.monotonic()
        nxt, last = t0, t0 - SAMPLE_S
        d = gw.dispatcher
        for phase, rate in enumerate(rates):
            end = t0 + (phase + 1) * args.phase_s
            while (now := time.monotonic()) < end:
                while nxt <= now:
                    task = asyncio.ensure_future(call())
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    nxt += rng.expovariate(rate)
                if now - last >= SAMPLE_S:
                    last = now
                    samples.append((now - t0, phase, d.limit_of("up"), d.busy("up"), d.queued))
                await asyncio.sleep(0.005)
            nxt = max(nxt, time.monotonic())
        await asyncio.gather(*tasks)
    return {"outcome": outcome, "samples": samples}


def _settling(samples: list[tuple[float, int, int, int, int]], phase_s: float) -> list[Any]:
    phases = sorted({s[1] for s in samples})
    out = []
    for p in phases:
        mine = [s for s in samples if s[1] == p]
        tail = mine[int(len(mine) * 0.7) :]
        settled = statistics.median(s[2] for s in tail)
        lo, hi = settled / BAND - SLACK, settled * BAND + SLACK
        k = max(1, round(WINDOW_S / SAMPLE_S))
        rolling = [
            statistics.median(s[2] for s in mine[max(0, i - k + 1) : i + 1])
            for i in range(len(mine))
        ]
        at = None
        for i in range(len(mine)):
            if all(lo <= r <= hi for r in rolling[i:]):
                at = mine[i][0] - p * phase_s
                break
        out.append(
            {
                "phase": p,
                "settled_limit": settled,
                "settle_wall_s": None if at is None else round(at, 2),
                "limit_range": [min(s[2] for s in mine), max(s[2] for s in mine)],
                "mean_in_flight": round(statistics.fmean(s[3] for s in mine), 1),
                "mean_queued": round(statistics.fmean(s[4] for s in mine), 1),
            }
        )
    return out


def settling(args: argparse.Namespace) -> dict[str, Any]:
    port = _free_port()
    proc = _start_emulator(port, args.time_scale)
    backend = {
        "name": "up",
        "kind": "vllm",
        "url": f"http://127.0.0.1:{port}",
        "models": [MODEL],
        "concurrency": "auto",
        "max_concurrency": args.max_concurrency,
    }
    cfg = gateway_config_from_dict({"port": 0, "policy": "vllm", "backends": [backend]})
    rates = [float(r) for r in args.rates.split(",")]
    try:
        with gateway_in_thread(cfg) as (gw, base):
            began = time.monotonic()
            run = asyncio.run(_drive(base, gw, args))
            wall = time.monotonic() - began
            state = gw.admission.admission("up").describe()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    phases = _settling(run["samples"], args.phase_s)
    for ph, rate in zip(phases, rates, strict=True):
        ph["rate_per_wall_s"] = rate
        if ph["settle_wall_s"] is not None:
            ph["settle_emulator_s"] = round(ph["settle_wall_s"] / args.time_scale, 1)
    return {
        "time_scale": args.time_scale,
        "phase_wall_s": args.phase_s,
        "phase_emulator_s": args.phase_s / args.time_scale,
        "max_concurrency": args.max_concurrency,
        "prompt_tokens": args.prompt_tokens,
        "output_tokens": args.output_tokens,
        "wall_s": round(wall, 1),
        "calls": run["outcome"],
        "phases": phases,
        "controller_at_end": state,
        "samples": [list(s) for s in run["samples"]],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--decisions", type=int, default=200_000)
    p.add_argument("--time-scale", type=float, default=0.5)
    p.add_argument("--rates", default="2,8,2,8", help="calls per wall second, one per phase")
    p.add_argument("--prompt-tokens", default="1000,2000", help="uniform range, LO,HI")
    p.add_argument("--output-tokens", default="64,256", help="uniform range, LO,HI")
    p.add_argument("--phase-s", type=float, default=30.0, help="wall seconds per phase")
    p.add_argument("--max-concurrency", type=int, default=256)
    p.add_argument("--skip-settling", action="store_true")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/gateway_admission"))
    args = p.parse_args()
    result: dict[str, Any] = {
        "command": "python benchmarks/gateway_admission.py " + " ".join(sys.argv[1:]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "observe": observe_cost(args.decisions),
        "feed": feed_cost(args.decisions // 4),
    }
    print("observe():", json.dumps(result["observe"]))
    print("feed, a call's start and end:", json.dumps(result["feed"]))
    if not args.skip_settling:
        result["settling"] = settling(args)
        for ph in result["settling"]["phases"]:
            print("phase:", json.dumps(ph))
        print("calls:", result["settling"]["calls"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", args.out / "results.json")


if __name__ == "__main__":
    main()
