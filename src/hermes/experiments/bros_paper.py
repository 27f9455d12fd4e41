"""The BROS paper's experiment on the engine model: real-time (RT) chat requests and a
best-effort (BE) backlog served together, by policy and RT load, on two deployments.

Deployments: Llama-2-7B on 2 A100s (two replicas) and Llama-2-70B at TP4 on 8 A100s (two
TP4 instances). Co-served policies (`vllm`, `vllm-priority`, `bros`, `bros-nobidir`) put RT
and BE requests on every instance; replicas are independent and identical, so one is
simulated with half the deployment's RT rate and its own BE backlog, and BE throughput is
reported for the whole deployment (× replicas). `split` divides the same GPUs: one instance
serves only RT at the full rate, the other only BE (both the vLLM-style engine, FCFS).

RT load is swept as fractions of the deployment's RT capacity: the requests per second one
engine completes with trace-shaped requests always queued and nothing else to do
(`bros_sim.rt_capacity`), times the replicas. SLOs come from the engine model's unloaded
latencies (`bros_slos.derive_slos`).

`run_all` returns plain data (JSON-ready) with the targets checked against what was measured.
Nothing here writes files.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

from hermes.engine.catalog import make_engine
from hermes.engine.cost_model import StepCostModel
from hermes.engine.engine_config import EngineConfig
from hermes.engine.rt_pace import BrosOptions
from hermes.engine.scheduler import Engine
from hermes.experiments.bros_gateway import RtPaceGate
from hermes.experiments.bros_sim import POLICIES, RunOutput, rt_capacity, simulate
from hermes.experiments.bros_slos import (
    DEFAULT_TPOT_CEILING_S,
    DEFAULT_TPOT_MULTIPLE,
    DEFAULT_TTFT_CEILING_S,
    DEFAULT_TTFT_MULTIPLE,
    Slos,
    derive_slos,
)
from hermes.experiments.bros_workload import (
    BeStream,
    LengthPool,
    conversation_lengths,
    default_be_backlog,
    rt_trace,
)
from hermes.experiments.common import reduction
from hermes.experiments.parallel import Sweep
from hermes.policies.slo_class import class_priority
from hermes.profiles import load_profile
from hermes.sim.metrics import class_throughput, slo_class_figures
from hermes.sim.window import Window

Progress = Callable[[str], None]

# The targets.
P99_REDUCTION_TARGET = -0.74
ATTAINMENT_TARGET = 0.95
VLLM_COLLAPSE_ATTAINMENT = 0.5
BE_RATIO_TARGET = 0.95
# bros-gateway's (issue 15, item 5): RT attainment where vllm collapses, BE throughput kept.
GATEWAY_ATTAINMENT_TARGET = 0.9
GATEWAY_BE_RATIO_TARGET = 0.9


@dataclass(frozen=True, slots=True)
class Deployment:
    """`instances` engines of `model` on `gpu` at tensor parallelism `tp`."""

    key: str
    title: str
    model: str
    gpu: str
    tp: int
    instances: int = 2

    @property
    def gpus(self) -> int:
        return self.tp * self.instances

    def cost(self) -> StepCostModel:
        return load_profile(self.model, self.gpu, self.tp)


DEPLOYMENTS = (
    Deployment("llama-2-7b_a100x2", "Llama-2-7B, 2 × A100 (2 replicas)", "llama-2-7b", "a100", 1),
    Deployment(
        "llama-2-70b_a100x8_tp4",
        "Llama-2-70B TP4, 8 × A100 (2 TP4 instances)",
        "llama-2-70b",
        "a100",
        4,
    ),
)


@dataclass(frozen=True, slots=True)
class BrosSettings:
    """RT arrivals run from 0 to `duration_s`; those after `warmup_s` are measured and get up
    to `drain_s` more to finish. `be_backlog=None`: `default_be_backlog`. The SLO fields are
    `derive_slos`'s arguments; `vllm` "misses its SLOs" where its RT SLO attainment is under
    `vllm_miss_attainment` (fewer than nine requests in ten meet them).

    `load_fractions` are RT loads as fractions of the deployment's RT capacity (measured, see
    the module docstring), from light (a tenth) to 0.6: there the `split` baseline's one RT
    instance, which takes the whole deployment's RT rate, is at 1.2 times its own capacity
    and cannot keep up, and co-served engines spend most of their time on RT work, leaving
    little for BE. With a standing BE backlog `vllm` misses its SLOs from the lightest RT
    load on (BE work sets the size and length of its iterations), so the upper end is set
    by the RT capacity, not by where `vllm` fails.
    """

    policies: tuple[str, ...] = POLICIES
    deployments: tuple[Deployment, ...] = DEPLOYMENTS
    load_fractions: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
    duration_s: float = 600.0
    warmup_s: float = 60.0
    drain_s: float = 600.0
    seed: int = 0
    be_backlog: int | None = None
    ttft_prompt_percentile: float = 90.0
    ttft_multiple: float = DEFAULT_TTFT_MULTIPLE
    tpot_multiple: float = DEFAULT_TPOT_MULTIPLE
    ttft_ceiling_s: float = DEFAULT_TTFT_CEILING_S
    tpot_ceiling_s: float = DEFAULT_TPOT_CEILING_S
    vllm_miss_attainment: float = 0.9
    # BROS aims each RT token this fraction of its SLO early (`BrosOptions.slo_margin`): the
    # lever between RT latency (higher) and BE throughput (lower). None: BROS adapts it
    # online to BE's share of the engine (`rt_pace.AdaptiveMargin`); a number fixes it.
    slo_margin: float | None = BrosOptions().slo_margin
    # RT capacity is measured over this span of a saturated run; the 70B engine, with room
    # for 256 long requests, needs minutes to leave its start-up transient.
    capacity_window_s: tuple[float, float] = (300.0, 1200.0)
    engine: EngineConfig = field(default_factory=EngineConfig)

    def __post_init__(self) -> None:
        unknown = [p for p in self.policies if p not in POLICIES]
        if unknown or not self.policies:
            raise ValueError(
                f"BrosSettings.policies: unknown or none {unknown!r}; known: {', '.join(POLICIES)}"
            )
        if not self.load_fractions or any(not f > 0 for f in self.load_fractions):
            raise ValueError(f"BrosSettings.load_fractions must be > 0, got {self.load_fractions}")
        if not 0 <= self.warmup_s < self.duration_s:
            raise ValueError("BrosSettings: need 0 <= warmup_s < duration_s")

    @property
    def window(self) -> Window:
        return Window(self.warmup_s, self.duration_s, self.drain_s)


def quick_settings(**overrides: Any) -> BrosSettings:
    """A short run at two loads, for tests and smoke checks."""
    base: dict[str, Any] = {
        "load_fractions": (0.2, 0.5),
        "duration_s": 60.0,
        "warmup_s": 10.0,
        "drain_s": 60.0,
        "capacity_window_s": (60.0, 240.0),
    }
    return BrosSettings(**{**base, **overrides})


def _quiet(_: str) -> None:
    return None


def _row(
    run: RunOutput,
    slos: Slos,
    w: Window,
    *,
    instances: int,
    be_run: RunOutput | None = None,
    wall_s: float,
) -> dict[str, Any]:
    """One policy at one load. Co-served (`be_run` None): `run` is one of `instances`
    identical engines, so BE output and preemptions scale by `instances`. Split: `run` is
    the RT instance and `be_run` the BE one."""
    row: dict[str, Any] = slo_class_figures(
        run.rt, slos.ttft_s, slos.tpot_s, w.start_s, w.end_s, run.end_s
    )
    if be_run is None:
        row.update(class_throughput(run.be_tokens, run.be_finished, run.span_s, instances))
        row["preemptions"] = run.preemptions * instances
    else:
        row.update(class_throughput(be_run.be_tokens, be_run.be_finished, be_run.span_s))
        row["preemptions"] = run.preemptions + be_run.preemptions
    row["iterations"] = run.iterations
    row["wall_s"] = wall_s
    return row


@dataclass(frozen=True, slots=True)
class _Plan:
    """What every run on one deployment shares: its cost model, the trace's lengths clipped to
    the engine's context, the SLOs, and the BE backlog."""

    deployment: Deployment
    cost: StepCostModel
    clipped: LengthPool
    slos: Slos
    backlog: int


def _plan(s: BrosSettings, d: Deployment, pool: LengthPool) -> _Plan:
    cfg = s.engine
    cost = d.cost()
    clipped = pool.clipped(cfg.max_model_len)
    slos = derive_slos(
        cost,
        cfg,
        clipped.percentile_prompt(s.ttft_prompt_percentile),
        clipped.median_context(),
        s.ttft_multiple,
        s.tpot_multiple,
        s.ttft_ceiling_s,
        s.tpot_ceiling_s,
    )
    backlog = s.be_backlog if s.be_backlog is not None else default_be_backlog(cfg)
    return _Plan(d, cost, clipped, slos, backlog)


def _capacity(s: BrosSettings, p: _Plan, _shared: object) -> float:
    return rt_capacity(p.cost, s.engine, p.clipped, s.seed, Window(*s.capacity_window_s, 0.0))


def _split_be(s: BrosSettings, p: _Plan, _shared: object) -> RunOutput:
    """`split`'s BE instance: the vLLM-style engine with only the BE backlog."""
    engine = Engine(p.cost, s.engine)
    return simulate(engine, None, BeStream(s.seed), s.window, be_backlog=p.backlog)


def _policy_run(
    s: BrosSettings, p: _Plan, policy: str, rate: float, _shared: object
) -> tuple[RunOutput, float]:
    """One policy at the deployment's RT rate `rate`: one co-served instance (its share of
    the rate), or `split`'s RT instance (all of it); the run and its wall seconds."""
    cfg, w, slos = s.engine, s.window, p.slos
    start = time.perf_counter()
    if policy == "split":
        trace = rt_trace(p.clipped, rate, w.end_s, s.seed)
        run = simulate(
            Engine(p.cost, cfg), trace, None, w, ttft_slo_s=slos.ttft_s, tpot_slo_s=slos.tpot_s
        )
        return run, time.perf_counter() - start
    # bros-gateway: vLLM's engine as it is, BE calls held back at the gateway for RT's pace.
    gated = policy == "bros-gateway"
    run = simulate(
        make_engine("vllm" if gated else policy, p.cost, cfg, BrosOptions(slo_margin=s.slo_margin)),
        rt_trace(p.clipped, rate / p.deployment.instances, w.end_s, s.seed),
        BeStream(s.seed),
        w,
        ttft_slo_s=slos.ttft_s,
        tpot_slo_s=slos.tpot_s,
        rt_priority=class_priority(policy, "rt"),
        be_priority=class_priority(policy, "be"),
        be_backlog=p.backlog,
        gate=RtPaceGate(slos.tpot_s) if gated else None,
    )
    return run, time.perf_counter() - start


def run_deployments(
    s: BrosSettings, pool: LengthPool, sweep: Sweep[None]
) -> dict[str, dict[str, Any]]:
    """Every policy at every load on each deployment, with the SLOs and the load range: the
    RT capacities (and split's BE runs) first, then every policy run, all on `sweep`."""
    plans = [_plan(s, d, pool) for d in s.deployments]
    split = "split" in s.policies
    first: list[tuple[str, Callable[[None], Any]]] = []
    for p in plans:
        first.append((f"{p.deployment.key}: RT capacity", partial(_capacity, s, p)))
        if split:
            first.append((f"{p.deployment.key}: split, BE instance", partial(_split_be, s, p)))
    done = iter(sweep.run(first))
    capacities, split_be = {}, {}
    for p in plans:
        capacities[p.deployment.key] = next(done)
        split_be[p.deployment.key] = next(done) if split else None
    jobs: list[tuple[str, Callable[[None], Any]]] = []
    for p in plans:
        d = p.deployment
        for f in s.load_fractions:
            rate = f * capacities[d.key] * d.instances
            jobs += [
                (
                    f"{d.key}: RT load {f:g} × capacity ({rate:.2f} req/s), {policy}",
                    partial(_policy_run, s, p, policy, rate),
                )
                for policy in s.policies
            ]
    runs = iter(sweep.run(jobs))
    return {
        p.deployment.key: _deployment_result(
            s, p, capacities[p.deployment.key], split_be[p.deployment.key], runs
        )
        for p in plans
    }


def _deployment_result(
    s: BrosSettings,
    p: _Plan,
    capacity: float,
    split_be: RunOutput | None,
    runs: Iterator[tuple[RunOutput, float]],
) -> dict[str, Any]:
    """One deployment's figures from its runs (taken from `runs` in load, then policy order)."""
    d, w = p.deployment, s.window
    by_load: list[dict[str, Any]] = []
    for f in s.load_fractions:
        rows: dict[str, Any] = {}
        for policy in s.policies:
            run, wall = next(runs)
            if policy == "split":
                rows[policy] = _row(run, p.slos, w, instances=1, be_run=split_be, wall_s=wall)
            else:
                rows[policy] = _row(run, p.slos, w, instances=d.instances, wall_s=wall)
        rate = f * capacity * d.instances
        by_load.append({"fraction": f, "rt_rate_per_s": rate, "policies": rows})
    return {
        "title": d.title,
        "profile": p.cost.name,
        "model": d.model,
        "gpu": d.gpu,
        "tp": d.tp,
        "instances": d.instances,
        "gpus": d.gpus,
        "slos": asdict(p.slos),
        "rt_capacity_per_instance": capacity,
        "rt_capacity": capacity * d.instances,
        "be_backlog": p.backlog,
        "by_load": by_load,
    }


def run_all(
    s: BrosSettings,
    progress: Progress = _quiet,
    workers: int = 1,
    ray_address: str | None = None,
) -> dict[str, Any]:
    """The BROS experiment, its runs on `workers` processes (`experiments.parallel`; the
    results do not depend on how many, apart from wall times)."""
    start = time.perf_counter()
    pool = conversation_lengths()
    results: dict[str, Any] = {"settings": settings_dict(s)}
    with Sweep[None](workers, ray_address, progress=progress) as sweep:
        results["deployments"] = run_deployments(s, pool, sweep)
    results["targets"] = check_targets(s, results)
    results["wall_s"] = time.perf_counter() - start
    return results


def settings_dict(s: BrosSettings) -> dict[str, Any]:
    d = asdict(s)
    d["deployments"] = [asdict(x) for x in s.deployments]
    d["engine"] = asdict(s.engine)
    return d


# Targets ---------------------------------------------------------------------------------


def _target(
    deployment: str, name: str, value: float | None, op: str, bound: float
) -> dict[str, Any]:
    """A target: `value op bound`, unknown (None) when nothing was measured."""
    met = None if value is None else value <= bound if op == "<=" else value >= bound
    return {
        "deployment": deployment,
        "target": name,
        "measured": value,
        "goal": f"{op} {bound:g}",
        "met": met,
    }


def _get(rows: Mapping[str, Any], policy: str, key: str) -> float | None:
    row = rows.get(policy)
    return None if row is None else row.get(key)


def check_targets(s: BrosSettings, r: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, per deployment, each with the measured value and whether it is met.

    1. At the lightest load where `vllm` misses its SLOs (attainment under
       `vllm_miss_attainment`): RT P99 end-to-end latency of `bros` vs `vllm` <= −74 %.
    2. At every load where `vllm` attains under 50 %: `bros` attains >= 95 %.
    3. At every load: `bros` BE throughput (tokens/s) >= 95 % of `vllm`'s.
    """
    out: list[dict[str, Any]] = []
    for key, dep in r["deployments"].items():
        loads = [x for x in dep["by_load"] if "vllm" in x["policies"]]
        if not loads:
            continue

        def where(x: Mapping[str, Any]) -> str:
            return f"RT load {x['fraction']:g} × capacity, {x['rt_rate_per_s']:.2f} req/s"

        missed = [
            x
            for x in loads
            if (a := _get(x["policies"], "vllm", "slo_attainment")) is not None
            and a < s.vllm_miss_attainment
        ]
        if missed:
            x = missed[0]
            value = reduction(
                _get(x["policies"], "bros", "e2e_p99_s"), _get(x["policies"], "vllm", "e2e_p99_s")
            )
            name = (
                f"bros vs vllm, RT P99 end-to-end latency, at the lightest load where vllm "
                f"attains < {s.vllm_miss_attainment:.0%} ({where(x)})"
            )
            out.append(_target(key, name, value, "<=", P99_REDUCTION_TARGET))
        for x in loads:
            a = _get(x["policies"], "vllm", "slo_attainment")
            if a is not None and a < VLLM_COLLAPSE_ATTAINMENT:
                name = f"bros RT SLO attainment where vllm attains {a:.0%} ({where(x)})"
                value = _get(x["policies"], "bros", "slo_attainment")
                out.append(_target(key, name, value, ">=", ATTAINMENT_TARGET))
        for x in loads:
            b = _get(x["policies"], "bros", "be_tokens_per_s")
            v = _get(x["policies"], "vllm", "be_tokens_per_s")
            ratio = None if b is None or not v else b / v
            name = f"bros / vllm BE throughput ({where(x)})"
            out.append(_target(key, name, ratio, ">=", BE_RATIO_TARGET))
        out += _gateway_targets(key, loads, where)
    return out


def _gateway_targets(
    key: str, loads: list[Mapping[str, Any]], where: Callable[[Mapping[str, Any]], str]
) -> list[dict[str, Any]]:
    """bros-gateway against vllm at its defaults (issue 15, item 5): RT SLO attainment >= 90 %
    where vllm attains < 50 %, and BE throughput >= 90 % of vllm's, at every load."""
    out: list[dict[str, Any]] = []
    for x in loads:
        if "bros-gateway" not in x["policies"]:
            continue
        a = _get(x["policies"], "vllm", "slo_attainment")
        if a is not None and a < VLLM_COLLAPSE_ATTAINMENT:
            name = f"bros-gateway RT SLO attainment where vllm attains {a:.0%} ({where(x)})"
            value = _get(x["policies"], "bros-gateway", "slo_attainment")
            out.append(_target(key, name, value, ">=", GATEWAY_ATTAINMENT_TARGET))
        g = _get(x["policies"], "bros-gateway", "be_tokens_per_s")
        v = _get(x["policies"], "vllm", "be_tokens_per_s")
        ratio = None if g is None or not v else g / v
        name = f"bros-gateway / vllm BE throughput ({where(x)})"
        out.append(_target(key, name, ratio, ">=", GATEWAY_BE_RATIO_TARGET))
    return out
