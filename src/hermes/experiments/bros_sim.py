"""A request-level simulation of one engine co-serving real-time (RT) and best-effort (BE)
requests, the SLOs the RT class is held to, and what the runs measure.

The loop is the whole simulator: plan an iteration at `now`, let time pass to its end,
complete it, submit what arrived meanwhile, top up the BE queue, repeat. RT requests that
arrive during an iteration are submitted (with their own arrival time) before the next plan,
so they wait for the next iteration boundary, as in a real engine. An idle engine jumps to the
next arrival. A decode run of the vLLM-style engine (many iterations planned at once) is cut
at the first iteration boundary after an arrival (`shorten`), so it equals stepping one
iteration at a time.

Measurement. RT requests that arrive in the window [start_s, end_s) are measured; arrivals
stop at end_s, and the run goes on (BE backlog included) for up to drain_s more so that they
can finish. One still unfinished then misses its SLO and enters the latency percentiles at
its age at the end of the run (a lower bound). BE throughput counts the BE tokens generated
between the first iteration boundaries at or after start_s and end_s.

Engines are duck-typed (`EngineLike`): the vLLM-style `Engine` and BROS's engine alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from hermes.engine.cost_model import StepCostModel
from hermes.engine.engine_config import EngineConfig
from hermes.engine.request import EngineRequest, RequestState
from hermes.engine.scheduler import Engine
from hermes.experiments.bros_workload import LengthPool, PoolStream, RtTrace

# The co-served policies (`engine.bros_engine.POLICY_NAMES`: RT and BE requests share each
# engine), and `split`: dedicated RT and BE instances.
POLICIES = ("vllm", "vllm-priority", "split", "bros", "bros-nobidir")
# Defaults of `derive_slos`; see its docstring.
DEFAULT_TTFT_MULTIPLE = 5.0
DEFAULT_TPOT_MULTIPLE = 5.0
DEFAULT_TTFT_CEILING_S = 2.0
DEFAULT_TPOT_CEILING_S = 0.15


class EngineLike(Protocol):
    """What the loop needs of an engine (`Engine`, `BrosEngine`)."""

    def add(self, req: EngineRequest, now: float) -> bool: ...

    def plan(self, now: float) -> Any: ...

    def complete(self, step: Any) -> Any: ...

    @property
    def idle(self) -> bool: ...


class LengthSource(Protocol):
    """An endless supply of (prompt, output) lengths (`BeStream`, `PoolStream`)."""

    taken: int

    def take(self, n: int) -> list[tuple[int, int]]: ...


# SLOs ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Slos:
    """The RT class's SLOs and where they come from."""

    ttft_s: float
    tpot_s: float
    unloaded_ttft_s: float
    unloaded_tpot_s: float
    ttft_multiple: float
    tpot_multiple: float
    ttft_ceiling_s: float
    tpot_ceiling_s: float
    prompt_tokens: int
    context_tokens: int


def _alone(cost: StepCostModel, config: EngineConfig, prompt: int, output: int) -> EngineRequest:
    engine = Engine(cost, config)
    req = EngineRequest("alone", prompt, output, 0.0)
    if not engine.add(req, 0.0):
        raise ValueError(f"a request of {prompt} + {output} tokens cannot run: {req.reason}")
    now = 0.0
    while not engine.idle:
        step = engine.plan(now)
        assert step is not None
        now = step.end_s
        engine.complete(step)
    return req


def unloaded_latencies(
    cost: StepCostModel, config: EngineConfig, prompt_tokens: int, context_tokens: int
) -> tuple[float, float]:
    """(TTFT, TPOT) of a request alone on the engine model: the TTFT of a `prompt_tokens`
    prompt, and the time per output token of one sequence decoding at `context_tokens`."""
    first = _alone(cost, config, prompt_tokens, 1)
    assert first.first_token_s is not None
    decode = _alone(cost, config, context_tokens, 2)
    assert decode.finish_s is not None
    assert decode.first_token_s is not None
    return first.first_token_s, decode.finish_s - decode.first_token_s


def derive_slos(
    cost: StepCostModel,
    config: EngineConfig,
    prompt_tokens: int,
    context_tokens: int,
    ttft_multiple: float = DEFAULT_TTFT_MULTIPLE,
    tpot_multiple: float = DEFAULT_TPOT_MULTIPLE,
    ttft_ceiling_s: float = DEFAULT_TTFT_CEILING_S,
    tpot_ceiling_s: float = DEFAULT_TPOT_CEILING_S,
) -> Slos:
    """RT SLOs as multiples of the unloaded latencies, capped at what a chat service promises.

    The unloaded latencies are the engine model's own (`unloaded_latencies`): the TTFT of
    the trace's P90 prompt (`prompt_tokens`), so that nine prompts in ten could meet the
    TTFT SLO alone with room to spare, and the TPOT of one sequence at the median context
    (`context_tokens`). Nothing can beat them; an SLO is the headroom a service grants over
    them for queueing and for sharing iterations with other requests.

    Defaults, each SLO being min(multiple × unloaded, ceiling):
    - 5× both, the "strict" SLO of Sarathi-Serve (OSDI 2024) and as tight as SLOs set
      relative to unloaded latency get in the serving literature (DistServe, Sarathi-Serve use
      2-25×): an RT request may wait for, or share its GPU with, a few requests' worth of work
      but not more;
    - a 2 s TTFT ceiling: a chat user sees the answer start within a second or two at most;
    - a 150 ms TPOT ceiling: text must stream at least as fast as people read (5-7 tokens
      per second), and slower streaming is a visible stall, so about 150 ms per token is the
      loosest TPOT a chat service would promise.
    For Llama-2-7B on an A100 the multiples bind (about 1.0 s and 49 ms); the Llama-2-70B TP4
    profile models a 2023-era engine (45 ms per token alone), whose 5× would exceed both
    ceilings, so they bind (2 s and 150 ms, 3.6× and 3.3× its unloaded latencies).
    """
    for name, v in (
        ("ttft_multiple", ttft_multiple),
        ("tpot_multiple", tpot_multiple),
        ("ttft_ceiling_s", ttft_ceiling_s),
        ("tpot_ceiling_s", tpot_ceiling_s),
    ):
        if not (isinstance(v, int | float) and v > 0):
            raise ValueError(f"derive_slos: {name} must be > 0, got {v!r}")
    if ttft_multiple < 1 or tpot_multiple < 1:
        raise ValueError("derive_slos: an SLO below the unloaded latency cannot be met")
    ttft, tpot = unloaded_latencies(cost, config, prompt_tokens, context_tokens)
    return Slos(
        ttft_s=min(ttft_multiple * ttft, ttft_ceiling_s),
        tpot_s=min(tpot_multiple * tpot, tpot_ceiling_s),
        unloaded_ttft_s=ttft,
        unloaded_tpot_s=tpot,
        ttft_multiple=float(ttft_multiple),
        tpot_multiple=float(tpot_multiple),
        ttft_ceiling_s=float(ttft_ceiling_s),
        tpot_ceiling_s=float(tpot_ceiling_s),
        prompt_tokens=prompt_tokens,
        context_tokens=context_tokens,
    )


# The loop -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Window:
    """Measure RT arrivals in [start_s, end_s) and BE output over it; give the RT requests
    up to `drain_s` after end_s to finish."""

    start_s: float
    end_s: float
    drain_s: float

    def __post_init__(self) -> None:
        if not 0 <= self.start_s < self.end_s or self.drain_s < 0:
            raise ValueError(f"Window: need 0 <= start_s < end_s and drain_s >= 0, got {self}")


@dataclass(frozen=True, slots=True)
class RunOutput:
    """What one engine did: every RT request (with its timestamps), and the BE output and
    preemptions over the measured span."""

    rt: list[EngineRequest]
    be_tokens: int
    be_finished: int
    span_s: float
    preemptions: int
    iterations: int
    end_s: float


@dataclass(slots=True)
class _Snapshot:
    at_s: float
    be_tokens: int
    be_finished: int
    preemptions: int


def _counter(engine: EngineLike, name: str) -> int:
    stats = getattr(engine, "stats", None)
    return int(getattr(stats, name, 0))


def simulate(
    engine: EngineLike,
    rt: RtTrace | None,
    be: LengthSource | None,
    window: Window,
    *,
    ttft_slo_s: float | None = None,
    tpot_slo_s: float | None = None,
    rt_priority: float = 0.0,
    be_priority: float = 0.0,
    be_backlog: int = 0,
) -> RunOutput:
    """Run `engine` on the RT trace (None: no RT) with `be_backlog` BE requests from `be`
    (None: no BE) kept queued after every iteration; see the module docstring."""
    if be is not None and be_backlog < 1:
        raise ValueError(f"simulate: be_backlog must be >= 1 with a BE stream, got {be_backlog}")
    arrivals = rt.arrival_s.tolist() if rt is not None else []
    prompts = rt.prompt_tokens.tolist() if rt is not None else []
    outputs = rt.output_tokens.tolist() if rt is not None else []
    n = len(arrivals)
    shorten = getattr(engine, "shorten", None)
    rt_reqs: list[EngineRequest] = []
    be_live: dict[int, EngineRequest] = {}  # outstanding BE requests, by submission number
    be_done_tokens = 0
    be_done = 0
    pending = 0  # window RT requests not done yet
    stop_s = window.end_s + window.drain_s
    first: _Snapshot | None = None
    last: _Snapshot | None = None
    iterations = 0
    now = 0.0
    i = 0

    def snapshot(at: float) -> _Snapshot:
        tokens = be_done_tokens + sum(r.generated for r in be_live.values())
        return _Snapshot(at, tokens, be_done, _counter(engine, "preemptions"))

    while True:
        while i < n and arrivals[i] <= now:
            req = EngineRequest(
                ("rt", i),
                prompts[i],
                outputs[i],
                arrivals[i],
                priority=rt_priority,
                slo_class="rt",
                ttft_slo_s=ttft_slo_s,
                tpot_slo_s=tpot_slo_s,
            )
            in_window = window.start_s <= arrivals[i] < window.end_s
            if engine.add(req, arrivals[i]) and in_window:
                pending += 1
            rt_reqs.append(req)
            i += 1
        if first is None and now >= window.start_s:
            first = snapshot(now)
        if last is None and now >= window.end_s:
            last = snapshot(now)
        if now >= stop_s or (last is not None and pending == 0 and i == n):
            break
        if be is not None:
            queued = sum(1 for r in be_live.values() if r.state is not RequestState.RUNNING)
            base = be.taken
            for k, (p, o) in enumerate(be.take(max(0, be_backlog - queued)), start=base):
                req = EngineRequest(("be", k), p, o, now, priority=be_priority, slo_class="be")
                if not engine.add(req, now):
                    raise ValueError(f"a BE request was rejected: {req.reason}")
                be_live[k] = req
        step = engine.plan(now)
        if step is None:  # idle: jump to the next arrival, or to the end of the window
            nxt = arrivals[i] if i < n else window.end_s
            if nxt <= now:
                break
            now = nxt
            continue
        if shorten is not None and i < n and arrivals[i] < step.end_s:
            shorten(step, arrivals[i])
        now = float(step.end_s)
        result = engine.complete(step)
        iterations += 1
        for r in result.finished:
            if r.slo_class == "be":
                k = r.id[1]
                del be_live[k]
                be_done_tokens += r.generated
                be_done += 1
            elif window.start_s <= r.arrival_s < window.end_s:
                pending -= 1
    if first is None:
        first = snapshot(window.start_s)
    if last is None:
        last = snapshot(window.end_s)
    return RunOutput(
        rt=rt_reqs,
        be_tokens=last.be_tokens - first.be_tokens,
        be_finished=last.be_finished - first.be_finished,
        span_s=last.at_s - first.at_s,
        preemptions=last.preemptions - first.preemptions,
        iterations=iterations,
        end_s=now,
    )


# Metrics ------------------------------------------------------------------------------


def _stats(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(np.percentile(a, 99, method="inverted_cdf"))


def rt_metrics(
    requests: Sequence[EngineRequest],
    ttft_slo_s: float,
    tpot_slo_s: float,
    start_s: float,
    end_s: float,
    horizon_s: float,
) -> dict[str, float | int | None]:
    """RT latency and SLO attainment of the requests that arrived in [start_s, end_s).

    Per request: TTFT = first token - arrival; TPOT = (finish - first token) / (output - 1),
    undefined for a one-token answer (left out of the TPOT statistics and judged on TTFT
    alone); end-to-end = finish - arrival. A request meets its SLO if it finished with
    TTFT <= ttft_slo_s and TPOT <= tpot_slo_s. One unfinished at `horizon_s` (the end of the
    run) misses it, and enters the TTFT and end-to-end statistics at its age then (a lower
    bound; TTFT at its real value if it had a first token). Percentiles: inverted CDF.
    `ttft_attainment`: the share with a first token within the TTFT SLO; `tpot_attainment`:
    the share finished within the TPOT SLO (both over every request of the window).
    """
    ttft: list[float] = []
    tpot: list[float] = []
    e2e: list[float] = []
    counted = finished = met = ttft_met = tpot_met = 0
    for r in requests:
        if not start_s <= r.arrival_s < end_s:
            continue
        counted += 1
        first = r.first_token_s
        ttft.append((horizon_s if first is None else first) - r.arrival_s)
        ok_ttft = first is not None and first - r.arrival_s <= ttft_slo_s
        ttft_met += ok_ttft
        if r.state is not RequestState.FINISHED or r.finish_s is None or first is None:
            e2e.append(horizon_s - r.arrival_s)
            continue
        finished += 1
        e2e.append(r.finish_s - r.arrival_s)
        ok_tpot = True
        if r.output_tokens > 1:
            t = (r.finish_s - first) / (r.output_tokens - 1)
            tpot.append(t)
            ok_tpot = t <= tpot_slo_s
        tpot_met += ok_tpot
        met += ok_ttft and ok_tpot
    out: dict[str, float | int | None] = {"rt_requests": counted, "rt_finished": finished}
    out["rt_unfinished"] = counted - finished
    for name, values in (("ttft", ttft), ("tpot", tpot), ("e2e", e2e)):
        mean, p99 = _stats(values)
        out[f"{name}_mean_s"] = mean
        out[f"{name}_p99_s"] = p99
    share = (lambda k: k / counted) if counted else (lambda k: None)
    out["slo_attainment"] = share(met)
    out["ttft_attainment"] = share(ttft_met)
    out["tpot_attainment"] = share(tpot_met)
    return out


def be_metrics(run: RunOutput, replicas: int) -> dict[str, float]:
    """BE tokens and requests per second over the run's measured span, times `replicas`
    identical engines."""
    span = run.span_s
    if not span > 0 or not math.isfinite(span):
        return {"be_tokens_per_s": 0.0, "be_requests_per_s": 0.0}
    return {
        "be_tokens_per_s": replicas * run.be_tokens / span,
        "be_requests_per_s": replicas * run.be_finished / span,
    }


def rt_capacity(
    cost: StepCostModel,
    config: EngineConfig,
    pool: LengthPool,
    seed: int,
    window: Window = Window(300.0, 1200.0, 0.0),
) -> float:
    """Requests per second one engine completes over `window`, FCFS, with RT-shaped requests
    (rows of `pool`) always queued and nothing else to do: the most RT load it can carry
    alone. Start the window late enough to leave the start-up transient behind."""
    run = simulate(
        Engine(cost, config),
        None,
        PoolStream(pool, seed),
        window,
        be_backlog=_backlog(config, pool),
    )
    return run.be_finished / run.span_s


def _backlog(config: EngineConfig, pool: LengthPool) -> int:
    """Enough queued requests that an iteration never runs out of prompts to admit."""
    shortest = max(1, int(pool.prompts.min()))
    return min(config.max_num_seqs, -(-config.max_num_batched_tokens // shortest) + 1)
