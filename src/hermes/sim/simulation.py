"""The simulator's composition root: engines, routers, tool pools and workloads on one loop.

An application issues its stages in order and each stage's calls in parallel: LLM calls go to
a replica of their model (chosen by the router), tool calls to the pool of their backend. A
stage ends when its last call does. An LLM call the engine rejects fails its application,
which is reported with the reason. Request streams carry an SLO class: real-time requests
lead the ranking at engines that order by priority (`policies.slo_class`), and BROS engines
serve them first each iteration. Models on shared GPUs are served through their queue policy
(`sim.queue_shell`) instead of a router.

A prewarm policy sets the TTL of idle tool instances and, at each stage start, may order
instances warmed for the next stage (`sim.prewarm_orders`). When a tool call ends, the policy
may keep its instance idle past the TTL for the application's next tool stage (`retain_s`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from hermes.cluster.multi_model import MultiModelConfig
from hermes.cluster.router import Router, RouteRequest, make_router
from hermes.cluster.tool_pool import ToolBackendSpec, ToolPool
from hermes.core.demand_cost import DemandCost, LinearCost
from hermes.core.runs import AppRun, LLMCall, ToolCall
from hermes.engine.cost_model import StepCostModel
from hermes.engine.engine_config import EngineConfig
from hermes.engine.interface import LLMEngine
from hermes.engine.request import EngineRequest, RequestState
from hermes.engine.rt_pace import BrosOptions
from hermes.engine.scheduler import Engine
from hermes.policies.admission import AdmissionOptions, make_admission
from hermes.policies.base import AppView, CallInfo, Policy
from hermes.policies.prewarm import PrewarmPolicy
from hermes.policies.qlm.policy import QueuePolicy
from hermes.policies.registry import make_named_engine
from hermes.policies.slo_class import SloClassOptions, engine_rank
from hermes.sim.admission_shell import EngineAdmission
from hermes.sim.app_state import AppState, ToolCallId
from hermes.sim.engine_runner import EngineRunner, ReplicaLoads
from hermes.sim.kernel import EventLoop
from hermes.sim.kv_retention import KvRetention
from hermes.sim.metrics import SLO
from hermes.sim.prefix_figures import cached_lookup, trace_content
from hermes.sim.prewarm_orders import PrewarmOrders
from hermes.sim.results import simulation_results
from hermes.sim.shared_cluster import SharedCluster
from hermes.sim.stream_figures import StreamSpec
from hermes.sim.tool_runner import ToolRunner
from hermes.workloads.call_content import call_content
from hermes.workloads.request_traces import TraceRequest

_RANKED_BE = BrosOptions(be_order="priority")


@dataclass(slots=True)
class _ModelGroup:
    runners: list[EngineRunner[LLMEngine]]
    router: Router


class SharedModels(Protocol):
    """Models served on GPUs they share, through a queue policy (`sim.shared_cluster`)."""

    def submit(self, req: EngineRequest, model: str, slo_s: float | None, now: float) -> None: ...

    def results(self, now: float) -> dict[str, object]: ...


@dataclass(slots=True)
class Simulation:
    policy: Policy
    slo: SLO | None = None
    # Attained service is measured in the units the demand models use.
    cost: DemandCost = field(default_factory=LinearCost)
    rank_interval_s: float = 0.1
    prewarm: PrewarmPolicy | None = None  # None: fixed keep-alive TTLs, no orders
    slo_classes: SloClassOptions = field(default_factory=SloClassOptions)
    kv_retention: KvRetention | None = None  # None: what vLLM does (LRU)
    # Admission per engine replica (`policies.admission`): 'auto', a fixed limit, or None
    # (the engine takes what max_num_seqs allows).
    admission: str | None = None
    admission_options: AdmissionOptions | None = None
    admissions: dict[str, EngineAdmission] = field(default_factory=dict)
    loop: EventLoop = field(default_factory=EventLoop)
    groups: dict[str, _ModelGroup] = field(default_factory=dict)
    shared: dict[str, SharedModels] = field(default_factory=dict)  # model -> its shared GPUs
    tools: dict[str, ToolRunner] = field(default_factory=dict)
    apps: dict[int, AppState] = field(default_factory=dict)
    requests: list[EngineRequest] = field(default_factory=list)
    streams: list[StreamSpec] = field(default_factory=list)
    arrivals: int = 0
    last_arrival_s: float = 0.0
    rank_rounds: int = 0
    retains: int = 0  # idle instances kept past their TTL for their application's next tool stage
    _orders: PrewarmOrders | None = None
    _unfinished_apps: int = 0
    _round_armed: bool = False
    _runner_of: dict[int, EngineRunner[LLMEngine]] = field(default_factory=dict)
    _default_model: str | None = None

    def __post_init__(self) -> None:
        self._orders = PrewarmOrders(self.loop, self.tools)

    # Prewarm counters, kept by the orders.
    @property
    def orders(self) -> PrewarmOrders:
        assert self._orders is not None
        return self._orders

    @property
    def reservations(self) -> dict[str, int]:
        return self.orders.reservations

    @property
    def prewarm_orders(self) -> int:
        return self.orders.orders

    @property
    def prewarm_orders_late(self) -> int:
        return self.orders.late

    @property
    def prewarm_renewals(self) -> int:
        return self.orders.renewals

    # Construction ---------------------------------------------------------------------------

    def add_model(
        self,
        name: str,
        cost: StepCostModel,
        config: EngineConfig,
        replicas: int,
        router: str = "round-robin",
        decode_runs: bool = True,
        engine: str = "vllm",
    ) -> None:
        """`replicas` engines of `engine` kind (a registry name) serving model `name`."""
        self._claim(name)
        runners = []
        for i in range(replicas):
            # A BROS engine orders waiting BE calls by the ranking policy, as others do.
            llm = make_named_engine(engine, cost, config, _RANKED_BE, decode_runs)
            hooks = self._admission_hooks(f"{name}/{i}", llm, config.max_num_seqs)
            runners.append(EngineRunner(self.loop, llm, f"{name}/{i}", self._llm_done, **hooks))
        self.groups[name] = _ModelGroup(runners, make_router(router))

    def _admission_hooks(self, name: str, llm: LLMEngine, max_seqs: int) -> dict[str, Any]:
        """The runner hooks of `name`'s admission controller (none without admission)."""
        if self.admission is None:
            return {}
        if not isinstance(llm, Engine):
            raise ValueError(
                f"{name}: an admission limit needs a vllm engine, not {type(llm).__name__}"
            )
        shell = EngineAdmission(
            llm, make_admission(self.admission, max_seqs, self.admission_options)
        )
        self.admissions[name] = shell
        return {"before_plan": shell.before_plan, "on_step": shell.on_step}

    def add_shared_gpus(
        self,
        costs: Mapping[str, StepCostModel],
        config: MultiModelConfig,
        count: int,
        policy: QueuePolicy,
        **options: Any,
    ) -> SharedCluster:
        """`count` GPUs shared by `costs`' models under `policy` (`SharedCluster` options)."""
        for name in costs:
            self._claim(name)
        cluster = SharedCluster(self.loop, costs, config, count, policy, self._llm_done, **options)
        for name in costs:
            self.shared[name] = cluster
        return cluster

    def _claim(self, name: str) -> None:
        if name in self.groups or name in self.shared:
            raise ValueError(f"model {name!r} is configured twice")
        if self._default_model is None:
            self._default_model = name

    def add_tool_backend(self, spec: ToolBackendSpec) -> None:
        if spec.name in self.tools:
            raise ValueError(f"tool backend {spec.name!r} is configured twice")
        if self.prewarm is not None:
            spec = replace(spec, keepalive_s=self.prewarm.keepalive_s(spec.keepalive_s))
        self.tools[spec.name] = ToolRunner(self.loop, ToolPool(spec), self._tool_done, self.policy)

    # Workloads ------------------------------------------------------------------------------

    def add_requests(self, trace: Sequence[TraceRequest], model: str | None = None) -> None:
        """Plain requests, each arriving at its `arrival_s` (the trace must be in time order)."""
        name = self._model(model, "requests")
        base = self.arrivals

        def arrive(i: int, now: float) -> None:
            t = trace[i]
            content = trace_content(t)
            req = EngineRequest(
                ("req", base + i), t.prompt_tokens, t.output_tokens, now, content=content
            )
            self._submit(name, req, now, None)

        self._feed([t.arrival_s for t in trace], arrive)
        self.arrivals += len(trace)

    def add_stream(self, spec: StreamSpec, trace: Sequence[TraceRequest]) -> None:
        """A stream of `spec.slo_class` requests with its SLOs (in time order)."""
        name = self._model(spec.model, f"streams[{spec.name}]")
        self.streams.append(spec)

        def arrive(i: int, now: float) -> None:
            t = trace[i]
            req = EngineRequest(
                (spec.name, i),
                t.prompt_tokens,
                t.output_tokens,
                now,
                slo_class=spec.slo_class,
                ttft_slo_s=spec.ttft_s,
                tpot_slo_s=spec.tpot_s,
                content=trace_content(t),
            )
            spec.requests.append(req)
            self._submit(name, req, now, None, spec.e2e_s)

        self._feed([t.arrival_s for t in trace], arrive)
        self.arrivals += len(trace)

    def _feed(self, times: Sequence[float], arrive: Callable[[int, float], None]) -> None:
        """Schedule arrivals one at a time, each scheduling the next, to keep the heap small."""
        for k in range(1, len(times)):
            if times[k] < times[k - 1]:
                raise ValueError(f"arrivals must be in time order: [{k}] comes before [{k - 1}]")

        def step(i: int) -> Callable[[float], None]:
            def fire(now: float) -> None:
                if i + 1 < len(times):
                    self.loop.at(times[i + 1], step(i + 1))
                arrive(i, now)

            return fire

        if times:
            self.loop.at(times[0], step(0))
            self.last_arrival_s = max(self.last_arrival_s, times[-1])

    def add_apps(self, runs: Sequence[tuple[float, AppRun]]) -> None:
        """Applications, each (arrival time, run); runs name their models and tool backends."""
        for _, run in runs:
            for k, stage in enumerate(run.stages):
                where = f"run {run.run_id!r} stages[{k}] ({stage.name})"
                if stage.kind == "llm":
                    self._model(stage.model, where)
                elif stage.backend not in self.tools:
                    # An unconfigured backend is always warm and unlimited: pure latency.
                    self.add_tool_backend(ToolBackendSpec(stage.backend, cold_start_s=0.0))
        first = len(self.apps)
        for arrival, run in runs:
            app_id = len(self.apps)
            # Runs carry deadlines relative to arrival; policies compare absolute times.
            deadline = None if run.deadline_s is None else arrival + run.deadline_s
            view = AppView(app_id, run.app, arrival, deadline_s=deadline, run=run)
            self.apps[app_id] = AppState(app_id, run, arrival, view)
        self._feed(
            [arrival for arrival, _ in runs],
            lambda i, now: self._app_arrive(self.apps[first + i], now),
        )
        self.arrivals += len(runs)
        self._unfinished_apps += len(runs)

    def _app_arrive(self, app: AppState, now: float) -> None:
        self.policy.on_arrival(app.view, now)
        if self.policy.dynamic and not self._round_armed:
            self._round_armed = True
            self.loop.after(self.rank_interval_s, self._rank_round)
        self._issue_stage(app, now)

    def _model(self, model: str | None, where: str) -> str:
        name = model or self._default_model
        if name is None or (name not in self.groups and name not in self.shared):
            known = ", ".join([*self.groups, *self.shared]) or "none"
            raise ValueError(f"{where}: model {name!r} is not configured (configured: {known})")
        return name

    # The application state machine --------------------------------------------------------

    def _issue_stage(self, app: AppState, now: float) -> None:
        self.orders.release(app)  # this is the stage its reservations were for
        stage = app.run.stages[app.stage]
        app.pending = len(stage.calls)
        view = app.view
        view.stage_index = app.stage
        view.stage = stage
        view.unfinished_calls = app.pending
        view.attained_s = view.stage_service_s = 0.0
        app.stage_done_s = 0.0
        app.stage_cold_wait_s = 0.0
        if app.pending == 0:
            self._stage_done(app, now)
            return
        if self.prewarm is not None:
            for order in self.prewarm.on_stage(view, now):
                self.orders.schedule(app, order, now)
        if stage.kind == "llm":
            if self.kv_retention is not None:
                self.kv_retention.llm_stage_starts(app.app_id)
            name = self._model(stage.model, "")
            for k, call in enumerate(stage.calls):
                assert isinstance(call, LLMCall)
                rid = ("app", app.app_id, app.stage, k)
                # What it shares with the type's other runs and its own earlier calls.
                content = call_content(app.run, app.app_id, app.stage, k)
                req = EngineRequest(
                    rid, call.prompt_tokens, call.completion_tokens, now, content=content
                )
                self._submit(name, req, now, app)
                if not req.done:
                    app.live.append(req)
        else:
            pool = self.tools[stage.backend]
            for k, call in enumerate(stage.calls):
                assert isinstance(call, ToolCall)
                pool.submit(ToolCallId(app.app_id, app.stage, k), call.duration_s, now, app.view)

    def _submit(
        self,
        model: str,
        req: EngineRequest,
        now: float,
        app: AppState | None,
        slo_s: float | None = None,
    ) -> None:
        """Rank `req` (real-time first) and hand it to its model's replica or shared GPUs."""
        info = CallInfo(req.id, now, req.prompt_tokens)
        rank = self.policy.priority(info, None if app is None else app.view, now)
        req.priority = engine_rank(rank, "rt" if req.slo_class == "rt" else "be", self.slo_classes)
        self.requests.append(req)
        shared = self.shared.get(model)
        if shared is not None:
            shared.submit(req, model, slo_s, now)
            return
        runners = self.groups[model].runners
        route = RouteRequest(  # session routers' key; prefix routers' cache lookups
            None if app is None else app.app_id, cached_lookup(runners, req)
        )
        i = (
            0
            if len(runners) == 1
            else self.groups[model].router.choose(ReplicaLoads(runners), route)
        )
        self._runner_of[id(req)] = runners[i]
        runners[i].submit(req, now)

    def _llm_done(self, req: EngineRequest, now: float) -> None:
        runner = self._runner_of.pop(id(req), None)
        rid = req.id
        if not (isinstance(rid, tuple) and rid[0] == "app"):
            return
        app = self.apps[rid[1]]
        if self.kv_retention is not None and runner is not None:
            self.kv_retention.call_done(app.app_id, req, runner.engine)
        if req.state is RequestState.REJECTED:
            if app.failed is None:
                app.failed = f"stages[{rid[2]}].calls[{rid[3]}]: {req.reason}"
        else:
            if req in app.live:
                app.live.remove(req)
            served = self.cost.llm_calls_s(
                np.array([req.prompt_tokens], dtype=np.float64),
                np.array([req.generated], dtype=np.float64),
            )
            app.stage_done_s += float(served[0])
            app.view.served_tokens += req.prompt_tokens + req.generated
        self._call_done(app, now)

    def _tool_done(self, call_id: Hashable, now: float, cold_wait_s: float, instance: int) -> None:
        assert isinstance(call_id, ToolCallId)
        app = self.apps[call_id.app_id]
        app.stage_cold_wait_s = max(app.stage_cold_wait_s, cold_wait_s)
        stage = app.run.stages[call_id.stage]
        call = stage.calls[call_id.index]
        assert isinstance(call, ToolCall)
        if self.prewarm is not None:
            # Before the app moves on: its next stage may submit to this pool, which would
            # remove an instance whose TTL ends now.
            hold = self.prewarm.retain_s(app.view, stage.name, stage.backend, now)
            if hold > 0 and self.tools[stage.backend].retain(instance, now + hold, now):
                self.retains += 1
        served = self.cost.tool_calls_s(np.array([call.duration_s], dtype=np.float64))
        app.stage_done_s += float(served[0])
        self._call_done(app, now)

    def _call_done(self, app: AppState, now: float) -> None:
        app.pending -= 1
        app.view.unfinished_calls = app.pending
        if app.pending == 0:
            self._stage_done(app, now)
        else:
            self._rerank([app], now)  # fewer unfinished calls: a new demand state

    def _stage_done(self, app: AppState, now: float) -> None:
        if app.stage < len(app.run.stages):
            app.view.finished.append(app.run.stages[app.stage])
        app.done_s += app.stage_done_s
        app.cold_wait_s += app.stage_cold_wait_s
        app.view.total_attained_s = app.done_s
        app.stage += 1
        done = app.failed is not None or app.stage == len(app.run.stages)
        if self.kv_retention is not None:
            if done:
                self.kv_retention.app_done(app.app_id)
            else:
                nxt = app.run.stages[app.stage].name
                rank = self.policy.priority(CallInfo(("pin", app.app_id), now, 0), app.view, now)
                self.kv_retention.llm_stage_done(app.app_id, app.view, nxt, now, rank)
        if done:
            self.orders.release(app)
            app.finish_s = now
            self._unfinished_apps -= 1
            self.policy.on_done(app.view, now)
            return
        self._issue_stage(app, now)

    # Ranking rounds -------------------------------------------------------------------------

    def _rank_round(self, now: float) -> None:
        self.rank_rounds += 1
        live = [a for a in self.apps.values() if a.live]
        if live:
            self._rerank(live, now)
        for tools in self.tools.values():  # calls waiting for tool instances, too
            tools.rerank(now)
        if self._unfinished_apps > 0:
            self.loop.after(self.rank_interval_s, self._rank_round)
        else:
            self._round_armed = False

    def _rerank(self, apps: Sequence[AppState], now: float) -> None:
        """Refresh attained service of `apps` and give their waiting calls new priorities."""
        reqs = [r for a in apps for r in a.live]
        if not reqs:
            return
        prompt = np.array([min(r.num_computed, r.prompt_tokens) for r in reqs], dtype=np.float64)
        out = np.array([r.generated for r in reqs], dtype=np.float64)
        served = self.cost.llm_calls_s(prompt, out).tolist()
        k = 0
        for app in apps:
            attained = sum(served[k : k + len(app.live)])
            k += len(app.live)
            view = app.view
            view.attained_s = attained
            view.stage_service_s = app.stage_done_s + attained
            view.total_attained_s = app.done_s + view.stage_service_s
        ranks = self.policy.rank_apps([a.view for a in apps], now)
        for i, app in enumerate(apps):
            for req in app.live:
                runner = self._runner_of.get(id(req))
                if runner is None:  # on shared GPUs: their queue policy orders them
                    continue
                if ranks is None:
                    info = CallInfo(req.id, req.arrival_s, req.prompt_tokens)
                    priority = self.policy.priority(info, app.view, now)
                else:
                    priority = ranks[i]
                runner.set_priority(req, priority, now)

    # Running --------------------------------------------------------------------------------

    def run(
        self, until: float = float("inf"), progress: Callable[[float], None] | None = None
    ) -> float:
        """Run to the end (or `until`); `progress(fraction of arrivals issued)` now and then."""
        if progress is None:
            return self.loop.run(until)
        horizon = min(self.last_arrival_s, until)
        slices = 100
        for k in range(1, slices + 1):
            self.loop.run(horizon * k / slices)
            progress(k / slices)
        return self.loop.run(until)

    # Results --------------------------------------------------------------------------------

    def results(self) -> dict[str, object]:
        return simulation_results(self)
