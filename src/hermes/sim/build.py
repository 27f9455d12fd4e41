"""From a validated `SimConfig` to a ready `Simulation`, and from there to the result JSON.

One seed spawns every random generator (arrivals, application mix, template sampling), so the
same config gives the same numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from hermes.cluster.multi_model import MultiModelConfig
from hermes.cluster.tool_pool import ToolBackendSpec
from hermes.core.demand_cost import DemandCost
from hermes.core.demand_sampler import DemandModel
from hermes.core.pdgraph import PDGraph, learn
from hermes.core.runs import AppRun
from hermes.engine.cost_model import StepCostModel
from hermes.engine.demand_cost_adapter import EngineDemandCost
from hermes.policies.admission import split_admission
from hermes.policies.base import PolicyContext
from hermes.policies.kv_retention import make_retention
from hermes.policies.prewarm import make_prewarm
from hermes.policies.registry import make_policy, make_queue_policy
from hermes.profiles import load_profile, load_profile_file
from hermes.sim.config import AppWorkload, Arrivals, InstanceGroup, RequestWorkload, SimConfig
from hermes.sim.kv_retention import KvRetention
from hermes.sim.metrics import SLO
from hermes.sim.simulation import Simulation
from hermes.sim.stream_figures import StreamSpec
from hermes.workloads.arrivals import compress_to_window, gamma_arrivals, poisson_arrivals, rescale
from hermes.workloads.call_content import with_learned_fields
from hermes.workloads.mix import sample_mix
from hermes.workloads.pdgraph_files import load_pdgraphs
from hermes.workloads.qlm_workloads import profile_name
from hermes.workloads.request_traces import TraceRequest, read_azure_csv, read_trace
from hermes.workloads.run_files import read_runs
from hermes.workloads.templates import TEMPLATE_NAMES, generate_runs

DEFAULT_TRACE = "AzureLLMInferenceTrace_conv.csv"
# Policies that rank by a PDGraph's demand distribution.
PDGRAPH_POLICIES = frozenset({"gittins", "srjf-mean", "lstf"})
# Prewarm policies that read a PDGraph.
PDGRAPH_PREWARMS = frozenset({"on-queue", "pdgraph"})


def _profile(group: InstanceGroup) -> StepCostModel:
    if group.profile is not None:
        return load_profile_file(group.profile)
    return load_profile(group.model, group.gpu, group.tp)


def _times(arrivals: Arrivals, n: int, own: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Arrival times for n items; `own` are the items' recorded times (for process=trace)."""
    if arrivals.process == "trace":
        return rescale(own, arrivals.time_scale) if n else own
    rate = arrivals.rate_per_s if arrivals.rate_per_s is not None else 1.0
    if arrivals.process == "poisson":
        t = poisson_arrivals(rate, n, rng)
    else:
        t = gamma_arrivals(rate, arrivals.cv, n, rng)
    if arrivals.window_s is not None:
        t = compress_to_window(t - t[0], arrivals.window_s) if n else t
    return t


def request_trace(work: RequestWorkload, rng: np.random.Generator) -> list[TraceRequest]:
    if work.trace is None:
        with resources.as_file(resources.files("hermes.data") / DEFAULT_TRACE) as path:
            trace = read_azure_csv(path)
    else:
        trace = read_trace(work.trace)
    if work.limit is not None:
        trace = trace[: work.limit]
    if work.repeat > 1 and trace:
        # Back to back: each copy starts one mean gap after the previous one ends.
        span = trace[-1].arrival_s - trace[0].arrival_s
        gap = span / max(1, len(trace) - 1)
        trace = [
            TraceRequest(
                t.arrival_s + k * (span + gap), t.prompt_tokens, t.output_tokens, t.prefix_blocks
            )
            for k in range(work.repeat)
            for t in trace
        ]
    own = np.array([t.arrival_s for t in trace], dtype=np.float64)
    times = _times(work.arrivals, len(trace), own, rng)
    return [
        TraceRequest(float(s), t.prompt_tokens, t.output_tokens, t.prefix_blocks)
        for t, s in zip(trace, times.tolist(), strict=True)
    ]


def template_runs(
    mix: Mapping[str, float], count: int, rng: np.random.Generator, seed: int, where: str = ""
) -> list[AppRun]:
    """`count` template runs, their applications drawn from `mix` by weight."""
    unknown = sorted(set(mix) - set(TEMPLATE_NAMES))
    if unknown:
        raise ValueError(
            f"{where}unknown application {unknown[0]!r}; known: {', '.join(TEMPLATE_NAMES)}"
        )
    names = sample_mix(mix, count, rng)
    pools = {
        app: iter(generate_runs(app, names.count(app), seed=seed * 1000 + k))
        for k, app in enumerate(sorted(set(names)))
    }
    return [next(pools[app]) for app in names]


def app_runs(work: AppWorkload, rng: np.random.Generator, seed: int) -> list[tuple[float, AppRun]]:
    if work.templates is not None:
        runs = template_runs(work.templates, work.count, rng, seed, "apps.templates: ")
        own = np.zeros(len(runs))
    else:
        assert work.runs is not None
        recorded = [run for path in work.runs for run in read_runs(Path(path))]
        if not recorded:
            raise ValueError("apps.runs: the files hold no runs")
        if work.arrivals.process == "trace":
            missing = [r.run_id for r in recorded if r.arrival_s is None]
            if missing:
                raise ValueError(
                    f"apps.arrivals.process is 'trace' but run {missing[0]!r} has no arrival_s"
                )
            runs = sorted(recorded, key=lambda r: r.arrival_s or 0.0)[: work.count]
            own = np.array([r.arrival_s for r in runs], dtype=np.float64)
        else:
            picks = rng.choice(len(recorded), size=work.count, replace=True)
            runs = [recorded[int(i)] for i in picks]
            own = np.zeros(len(runs))
    times = _times(work.arrivals, len(runs), own, rng)
    return list(zip(times.tolist(), runs, strict=True))


def template_graphs(apps: Sequence[str], training_runs: int, seed: int) -> dict[str, PDGraph]:
    """PDGraphs of the template applications among `apps`, learned from fresh runs a seed
    apart from any workload's."""
    types = sorted(set(apps) & set(TEMPLATE_NAMES))
    return learn(
        r
        for k, app in enumerate(types)
        for r in generate_runs(app, training_runs, seed=10_000 + seed * 100 + k)
    )


def policy_context(
    config: SimConfig,
    cost: DemandCost,
    runs: Sequence[tuple[float, AppRun]],
    graphs: Mapping[str, PDGraph] | None = None,
) -> PolicyContext:
    """Demand models for the policy: `graphs` if given, else from a PDGraph file, else learned
    from fresh template runs (a seed apart from the workload's) of every application type in
    the workload."""
    opts = config.policy_options
    if graphs is None and opts.pdgraphs is not None:
        graphs = load_pdgraphs(opts.pdgraphs)
    elif graphs is None:
        graphs = template_graphs([run.app for _, run in runs], opts.training_runs, config.seed)
    models = {name: DemandModel(g, cost) for name, g in graphs.items()}
    return PolicyContext(models, cost, opts.refine, opts.samples, config.seed)


def build(
    config: SimConfig,
    decode_runs: bool = True,
    *,
    runs: Sequence[tuple[float, AppRun]] | None = None,
    graphs: Mapping[str, PDGraph] | None = None,
) -> Simulation:
    """`decode_runs=False` steps engines one iteration at a time (for checks and benchmarks).

    `runs` ((arrival s, run) pairs) replaces the config's application workload and `graphs`
    the PDGraphs the policies would otherwise learn or load: experiments that share one
    workload and one set of graphs across many policies pass them in."""
    slo = (
        None if config.slo is None else SLO(config.slo.ttft_s, config.slo.tpot_s, config.slo.e2e_s)
    )
    profiles = [_profile(group) for group in config.instances]
    shared = [
        {m: load_profile(profile_name(m), g.gpu, g.tp) for m in g.models}
        for g in config.shared_gpus
    ]
    # Demand is costed on the first model's engine (applications' stages are costed alike).
    cost = EngineDemandCost(profiles[0] if profiles else next(iter(shared[0].values())))
    # The third child seeds the streams: added after the first two, it leaves their draws
    # (and every run without streams) as they were.
    requests_rng, apps_rng, streams_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(3)
    )
    if runs is None:
        runs = [] if config.apps is None else app_runs(config.apps, apps_rng, config.seed)
    if config.apps is not None and config.apps.learned_prefixes:
        runs = with_learned_prefixes(runs, graphs)
    opts = config.policy_options
    policy, admission = split_admission(config.policy)
    ctx = (
        policy_context(config, cost, runs, graphs)
        if policy in PDGRAPH_POLICIES
        or opts.prewarm in PDGRAPH_PREWARMS
        or config.kv_retention != "lru"
        else PolicyContext(cost=cost, seed=config.seed)
    )
    cold_starts = {tool.name: tool.cold_start_s for tool in config.tools}
    sim = Simulation(
        make_policy(policy, ctx),
        slo,
        cost=cost,
        rank_interval_s=opts.rank_interval_s,
        prewarm=make_prewarm(opts.prewarm, ctx, k=opts.prewarm_k, cold_starts=cold_starts),
        admission=admission,
    )
    if config.kv_retention != "lru":
        sim.kv_retention = KvRetention(sim.loop, make_retention(config.kv_retention, ctx))
    _add_backends(sim, config, profiles, shared, decode_runs)
    if config.requests is not None:
        sim.add_requests(request_trace(config.requests, requests_rng), config.requests.model)
    for stream, rng in zip(config.streams, streams_rng.spawn(len(config.streams)), strict=True):
        spec = StreamSpec(
            stream.name, stream.slo_class, stream.model, stream.ttft_s, stream.tpot_s, stream.e2e_s
        )
        work = RequestWorkload(trace=stream.trace, limit=stream.limit, arrivals=stream.arrivals)
        sim.add_stream(spec, request_trace(work, rng))
    if runs:
        sim.add_apps(runs)
    return sim


def with_learned_prefixes(
    runs: Sequence[tuple[float, AppRun]], graphs: Mapping[str, PDGraph] | None
) -> list[tuple[float, AppRun]]:
    """Runs that record no sharing get what the PDGraphs (`graphs`, else learned from the
    runs themselves) detected: each stage's shared prefix and history resend."""
    learned = graphs if graphs is not None else learn(run for _, run in runs)
    return [
        (t, with_learned_fields(r, learned[r.app].learned_prefixes()) if r.app in learned else r)
        for t, r in runs
    ]


def _add_backends(
    sim: Simulation,
    config: SimConfig,
    profiles: Sequence[StepCostModel],
    shared: Sequence[Mapping[str, StepCostModel]],
    decode_runs: bool,
) -> None:
    """Engine groups, GPUs shared by several models, and tool backends."""
    for group, profile in zip(config.instances, profiles, strict=True):
        name = group.model if group.profile is None else profile.model
        sim.add_model(
            name,
            profile,
            group.engine_config(),
            group.count,
            config.router,
            decode_runs,
            engine=group.engine,
        )
    for k, (gpus, costs) in enumerate(zip(config.shared_gpus, shared, strict=True)):
        sim.add_shared_gpus(
            costs,
            MultiModelConfig(
                cpu_memory_bytes=gpus.cpu_memory_gb * 1e9, cpu_kv_bytes=gpus.cpu_kv_gb * 1e9
            ),
            gpus.count,
            make_queue_policy(gpus.queue_policy),
            name=f"shared{k}",
            decide_interval_s=gpus.decide_interval_s,
            default_slo_s=gpus.default_slo_s,
        )
    for tool in config.tools:
        sim.add_tool_backend(
            ToolBackendSpec(
                tool.name,
                tool.cold_start_s,
                tool.keepalive_s,
                tool.concurrency,
                tool.max_instances,
                tool.order,
            )
        )


def simulate(
    config: SimConfig,
    progress: Callable[[float], None] | None = None,
    decode_runs: bool = True,
    *,
    runs: Sequence[tuple[float, AppRun]] | None = None,
    graphs: Mapping[str, PDGraph] | None = None,
) -> dict[str, object]:
    """Build, run and summarise; `wall_s` covers building and running."""
    start = time.perf_counter()
    sim = build(config, decode_runs, runs=runs, graphs=graphs)
    sim.run(config.until, progress)
    out = sim.results()
    out["wall_s"] = time.perf_counter() - start
    out["config"] = config.model_dump(mode="json")
    return out
