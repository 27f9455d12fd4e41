"""The gateway's composition root: policy, demand models learned from the run store, and
online learning as applications finish (the store is written by the gateway's outbox, off the
event loop)."""

from __future__ import annotations

import logging
import time

from hermes.config_base import ConfigError
from hermes.core.demand_sampler import DemandModel
from hermes.core.pdgraph import PDGraph
from hermes.core.runs import AppRun
from hermes.engine.demand_cost_adapter import EngineDemandCost
from hermes.gateway.apps import OTHER_TYPE
from hermes.gateway.config import GatewayConfig
from hermes.gateway.run_store import RunStore
from hermes.gateway.server import Gateway
from hermes.policies.base import PolicyContext
from hermes.policies.prewarm import make_prewarm
from hermes.policies.registry import make_policy
from hermes.profiles import load_profile
from hermes.types import Clock
from hermes.workloads.pdgraph_files import load_pdgraphs

log = logging.getLogger("hermes.gateway")

# Stage names come from clients: a type's graph learns at most this many (a run that would
# add more is not learned), so that a graph's memory is bounded as the types' number is.
MAX_GRAPH_STAGES = 1024


def open_store(config: GatewayConfig) -> RunStore | None:
    """The configured run store, or a ConfigError naming `run_store`."""
    if config.run_store is None:
        return None
    try:
        return RunStore(config.run_store)
    except ValueError as e:
        raise ConfigError(f"run_store: {e}") from None


def build_gateway(config: GatewayConfig, clock: Clock = time.monotonic) -> Gateway:
    """A gateway whose policy ranks by PDGraphs from the run store (or a PDGraph file) and
    keeps learning from every application that finishes."""
    cost = EngineDemandCost(load_profile(config.demand_model, config.demand_gpu, None))
    store = open_store(config)
    opts = config.policy_options
    graphs: dict[str, PDGraph] = {}
    if opts.pdgraphs is not None:
        graphs.update(load_pdgraphs(opts.pdgraphs))
    if store is not None:
        try:
            graphs.update(store.graphs())
        except ValueError as e:
            store.close()
            raise ConfigError(f"run_store: {e}") from None
    models = {app: DemandModel(g, cost) for app, g in graphs.items()}
    # Policies read `models` as it grows: types first seen in production are ranked once
    # their first run has finished.
    ctx = PolicyContext(models, cost, opts.refine, opts.samples, seed=0)
    policy = make_policy(config.policy, ctx)

    def learn(run: AppRun) -> None:
        graph = graphs.get(run.app)
        known = graph.nodes.keys() if graph is not None else set()
        if len(known | {s.name for s in run.stages}) > MAX_GRAPH_STAGES:
            gateway.metrics.runs_not_learned.labels("too_many_stage_names").inc()
            log.warning(
                "run %s of %s not learned: its graph would hold over %d stage names",
                run.run_id,
                run.app,
                MAX_GRAPH_STAGES,
            )
            return
        if graph is None:
            graph = graphs[run.app] = PDGraph(run.app)
            models[run.app] = DemandModel(graph, cost)
        try:
            graph.observe(run)
        except ValueError as e:  # e.g. a stage name reused for another kind of stage
            gateway.metrics.runs_not_learned.labels("invalid").inc()
            log.warning("run %s of %s not learned: %s", run.run_id, run.app, e)

    # The same context: prewarm plans read the graphs as they learn.
    cold_starts = {t.name: t.cold_start_s for t in config.prewarm_targets}
    prewarm = make_prewarm(opts.prewarm, ctx, k=opts.prewarm_k, cold_starts=cold_starts)
    gateway = Gateway(config, policy, clock, learn, cost, prewarm)
    gateway.graphs = graphs
    # Types learned beforehand are known ones; new types are admitted up to max_app_types.
    gateway.tracker.types.known.update(t for t in graphs if t != OTHER_TYPE)
    if store is not None:
        gateway.use_store(store)
    return gateway
