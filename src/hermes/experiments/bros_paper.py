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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from hermes.engine.catalog import make_engine
from hermes.engine.cost_model import StepCostModel
from hermes.engine.engine_config import EngineConfig
from hermes.engine.rt_pace import BrosOptions
from hermes.engine.scheduler import Engine
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
    # lever between RT latency (higher) and BE throughput (lower).
    slo_margin: float = BrosOptions().slo_margin
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


def run_deployment(
    s: BrosSettings,
    d: Deployment,
    pool: LengthPool,
    policies: Sequence[str],
    progress: Progress = _quiet,
) -> dict[str, Any]:
    """Every policy at every load on one deployment, with the SLOs and the load range."""
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
    w = s.window
    progress(f"{d.key}: RT capacity")
    capacity = rt_capacity(cost, cfg, clipped, s.seed, Window(*s.capacity_window_s, 0.0))
    backlog = s.be_backlog if s.be_backlog is not None else default_be_backlog(cfg)
    rates = [f * capacity * d.instances for f in s.load_fractions]
    split_be: RunOutput | None = None
    if "split" in policies:
        progress(f"{d.key}: split, BE instance")
        split_be = simulate(Engine(cost, cfg), None, BeStream(s.seed), w, be_backlog=backlog)
    by_load: list[dict[str, Any]] = []
    for f, rate in zip(s.load_fractions, rates, strict=True):
        rows: dict[str, Any] = {}
        for policy in policies:
            progress(f"{d.key}: RT load {f:g} × capacity ({rate:.2f} req/s), {policy}")
            start = time.perf_counter()
            if policy == "split":
                trace = rt_trace(clipped, rate, w.end_s, s.seed)
                run = simulate(
                    Engine(cost, cfg),
                    trace,
                    None,
                    w,
                    ttft_slo_s=slos.ttft_s,
                    tpot_slo_s=slos.tpot_s,
                )
                wall = time.perf_counter() - start
                rows[policy] = _row(run, slos, w, instances=1, be_run=split_be, wall_s=wall)
                continue
            run = simulate(
                make_engine(policy, cost, cfg, BrosOptions(slo_margin=s.slo_margin)),
                rt_trace(clipped, rate / d.instances, w.end_s, s.seed),
                BeStream(s.seed),
                w,
                ttft_slo_s=slos.ttft_s,
                tpot_slo_s=slos.tpot_s,
                rt_priority=class_priority(policy, "rt"),
                be_priority=class_priority(policy, "be"),
                be_backlog=backlog,
            )
            wall = time.perf_counter() - start
            rows[policy] = _row(run, slos, w, instances=d.instances, wall_s=wall)
        by_load.append({"fraction": f, "rt_rate_per_s": rate, "policies": rows})
    return {
        "title": d.title,
        "profile": cost.name,
        "model": d.model,
        "gpu": d.gpu,
        "tp": d.tp,
        "instances": d.instances,
        "gpus": d.gpus,
        "slos": asdict(slos),
        "rt_capacity_per_instance": capacity,
        "rt_capacity": capacity * d.instances,
        "be_backlog": backlog,
        "by_load": by_load,
    }


def run_all(s: BrosSettings, progress: Progress = _quiet) -> dict[str, Any]:
    start = time.perf_counter()
    policies = list(s.policies)
    pool = conversation_lengths()
    results: dict[str, Any] = {"settings": settings_dict(s)}
    results["deployments"] = {
        d.key: run_deployment(s, d, pool, policies, progress) for d in s.deployments
    }
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
    return out
