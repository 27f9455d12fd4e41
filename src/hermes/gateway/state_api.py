"""`GET /v1/hermes/state`: what the gateway holds now, as JSON, for the dashboard and for
operators' scripts. Upstreams (health, calls in flight, current limit), the queue in rank
order, the applications in progress with their predicted remaining demand, the demand graph
learned for each type, and ACT and TTFT histograms over a recent window.

Every part is bounded whatever clients do: the queue and the applications are cut to the top
`top` entries (the counts say how many there are), a graph to its `MAX_NODES` most visited
stages, and the histograms are differences of the Prometheus histograms' cumulative buckets
against snapshots kept at most once a second for `window_s` (no per-call hook, no per-call
memory). It reads the gateway's state on the event loop, as the handlers do.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from prometheus_client import Histogram
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from hermes.core.demand_cost import DemandCost
from hermes.core.demand_sampler import DemandModel, Progress
from hermes.core.pdgraph import END, START, PDGraph
from hermes.core.rank_cache import GittinsRanker
from hermes.gateway.apps import CallTicket, GatewayApp
from hermes.gateway.dispatch import Dispatcher, Waiting
from hermes.gateway.errors import BadRequestError

if TYPE_CHECKING:
    from hermes.gateway.server import Gateway

TOP = 50  # queue entries and applications listed
MAX_TOP = 1000  # the most a `?top=` may ask for
MAX_NODES = 64  # stages drawn per graph (the most visited)
WINDOW_S = 300.0  # the histograms' recent window
SAMPLES = 256  # demand samples per application state (cached per state)
_MAX_STATES = 10_000  # cached demand states before the cache is emptied


def _round(x: float, digits: int = 4) -> float:
    return round(float(x), digits)


def _mean(xs: list[float] | list[int]) -> float:
    return _round(sum(xs) / len(xs)) if xs else 0.0


@dataclass(slots=True)
class RecentHistogram:
    """A Prometheus histogram's counts over about the last `window_s`: its cumulative buckets
    now, less those of the newest snapshot at least `window_s` old (or of the start)."""

    source: Histogram
    started_s: float  # when the histogram was empty
    window_s: float = WINDOW_S
    period_s: float = 1.0  # at most one snapshot per period
    _snaps: deque[tuple[float, list[float]]] = field(default_factory=deque)

    def _cumulative(self) -> tuple[list[float], list[float]]:
        """(upper bounds, cumulative counts), summed over every label set."""
        bounds: list[float] = []
        counts: dict[float, float] = {}
        for family in self.source.collect():
            for s in family.samples:
                if s.name.endswith("_bucket"):
                    le = float(s.labels["le"])
                    counts[le] = counts.get(le, 0.0) + s.value
        bounds = sorted(counts)
        return bounds, [counts[b] for b in bounds]

    def view(self, now: float) -> dict[str, Any]:
        bounds, cum = self._cumulative()
        snaps = self._snaps
        if not snaps:
            snaps.append((self.started_s, [0.0] * len(cum)))  # nothing counted before it
        if now - snaps[-1][0] >= self.period_s:
            snaps.append((now, cum))
        # Keep one snapshot at least `window_s` old (the base), and those after it.
        while len(snaps) > 1 and snaps[1][0] <= now - self.window_s:
            snaps.popleft()
        since, base = snaps[0]
        if len(base) != len(cum):  # a histogram without samples yet has no buckets
            base = [0.0] * len(cum)
        window = [c - b for c, b in zip(cum, base, strict=True)]
        counts = [b - a for a, b in zip([0.0, *window], window, strict=False)]
        return {
            "span_s": _round(now - since, 3),
            "upper_bounds": ["+Inf" if np.isinf(b) else b for b in bounds],
            "counts": [round(c) for c in counts],
            "total": round(window[-1]) if window else 0,
        }


class RemainingDemand:
    """Predicted remaining demand of applications in progress, from the graphs learned so far
    (seconds of service, by the gateway's demand cost); None where no graph knows the stage."""

    def __init__(self, graphs: Callable[[], Mapping[str, PDGraph]], cost: DemandCost) -> None:
        self.graphs = graphs
        self.cost = cost
        self._models: dict[str, DemandModel] = {}
        self.ranker = GittinsRanker(self._models, samples=SAMPLES, seed=0)

    def mean_s(self, app: GatewayApp) -> float | None:
        view = app.view
        graph = self.graphs().get(app.app_type)
        if graph is None or view.stage is None:
            return None
        model = self._models.get(app.app_type)
        if model is None or model.graph is not graph:
            model = self._models[app.app_type] = DemandModel(graph, self.cost)
        if self.ranker.cached_states > _MAX_STATES:
            self.ranker.clear()
        progress = Progress(view.stage.name, view.unfinished_calls, tuple(view.finished))
        try:
            dist = self.ranker.distribution(app.app_type, progress)
        except (KeyError, ValueError):  # a stage the graph never saw: no prediction
            return None
        return dist.mean_remaining(view.attained_s)


def upstreams(gw: Gateway) -> list[dict[str, Any]]:
    """Each upstream: models, health, calls in flight, its limit now, its admission
    controller's state and what its engine's /metrics said last (vLLM's; None before)."""
    d = gw.dispatcher
    feed = {name: (described, sample) for name, _, described, sample in gw.admission.snapshot()}
    rows = []
    for u in d.upstreams:
        described, sample = feed.get(u.name, ({}, None))
        engine: dict[str, float | None] | None = None
        if sample is not None:
            engine = {"running": sample.running, "waiting": sample.waiting}
            engine["kv_usage"] = sample.kv_usage
        rows.append(
            {
                "name": u.name,
                "models": sorted(u.models),
                "loaded": sorted(d.loaded(u.name)),
                "healthy": d.healthy(u.name),
                "in_flight": d.busy(u.name),
                "limit": d.limit_of(u.name),
                "admission": dict(described),
                "engine": engine,
            }
        )
    return rows


def queue(d: Dispatcher, now: float, top: int) -> dict[str, Any]:
    """The calls waiting, best first: real-time ahead of best-effort, then by rank."""

    def order(w: Waiting) -> tuple[bool, float, int]:
        return (not w.rt, w.priority, w.seq)

    first = heapq.nsmallest(top, d.waiting(), key=order)
    rows = []
    for w in first:
        ticket = cast(CallTicket, w.key)
        rows.append(
            {
                "app_id": ticket.app.app_id,
                "app_type": ticket.app.app_type,
                "stage": ticket.stage.name,
                "model": w.model,
                "rank": _round(w.priority, 6),
                "slo_class": "rt" if w.rt else "be",
                "aged": w.aged,
                "waited_s": _round(max(0.0, now - w.queued_s), 3),
            }
        )
    return {"count": d.queued, "calls": rows}


def applications(
    apps: Iterable[GatewayApp], n_apps: int, demand: RemainingDemand, now: float, top: int
) -> dict[str, Any]:
    """Applications in progress: those with calls in flight first, then the oldest."""

    def order(a: GatewayApp) -> tuple[bool, bool, float]:
        # LLM calls in flight only: summing every stage's would cost O(stages) per app.
        return (a.ephemeral, a.llm_in_flight == 0, a.view.arrival_s)

    rows = []
    for a in heapq.nsmallest(top, apps, key=order):
        cur = a.current
        remaining = demand.mean_s(a)
        rows.append(
            {
                "app_id": a.app_id,
                "app_type": a.app_type,
                "stage": None if cur is None else cur.name,
                "stage_kind": None if cur is None else cur.kind,
                "stage_index": a.view.stage_index,
                "in_flight": a.in_flight,
                "calls": a.calls,
                "attained_s": _round(a.view.total_attained_s),
                "predicted_remaining_s": None if remaining is None else _round(remaining),
                "age_s": _round(max(0.0, now - a.view.arrival_s), 3),
                "tagged": not a.ephemeral,
            }
        )
    return {"count": n_apps, "apps": rows}


def graph_view(graph: PDGraph) -> dict[str, Any]:
    """Nodes (the `MAX_NODES` most visited) and the edges between them with probabilities."""
    ranked = sorted(graph.nodes.values(), key=lambda n: (-len(n.fanouts), n.name))
    kept = ranked[:MAX_NODES]
    names = {n.name for n in kept} | {START, END}
    nodes: list[dict[str, Any]] = [{"name": START, "kind": "start"}]
    for n in kept:
        # An LLM stage's demand: completion tokens per call; a tool stage's: seconds.
        demand = [b if n.kind == "llm" else a for _, a, b in n.calls]
        nodes.append(
            {
                "name": n.name,
                "kind": n.kind,
                "backend": n.backend,
                "visits": len(n.fanouts),
                "mean_fanout": _mean([f for _, f in n.fanouts]),
                "mean_demand": _mean(demand),
            }
        )
    nodes.append({"name": END, "kind": "end"})
    edges = [
        {"source": src, "target": dst, "p": _round(p)}
        for src, succ in graph.successors().items()
        if src in names
        for dst, p in succ.items()
        if dst in names
    ]
    return {
        "app_type": graph.app,
        "runs_seen": graph.runs_seen,
        "stages": len(graph.nodes),
        "nodes": nodes,
        "edges": edges,
    }


class StateApi:
    """The state of one gateway, as `GET /v1/hermes/state` answers it."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        m = gateway.metrics
        started = gateway.clock()
        self.ttft = RecentHistogram(m.ttft, started)
        self.act = RecentHistogram(m.act, started)
        self.demand = RemainingDemand(lambda: gateway.graphs, gateway.tracker.cost)

    async def handle(self, request: Request) -> Response:
        top = parse_top(request.query_params.get("top"))
        return JSONResponse(self.snapshot(self.gateway.clock(), top))

    def snapshot(self, now: float, top: int = TOP) -> dict[str, Any]:
        gw = self.gateway
        apps = gw.tracker.apps
        return {
            "policy": gw.config.policy,
            "draining": gw._draining,
            "upstreams": upstreams(gw),
            "queue": queue(gw.dispatcher, now, top),
            "apps": applications(apps.values(), len(apps), self.demand, now, top),
            "graphs": [graph_view(g) for _, g in sorted(gw.graphs.items())],
            "histograms": {"ttft_s": self.ttft.view(now), "act_s": self.act.view(now)},
        }


def parse_top(raw: str | None) -> int:
    """The `top` query parameter: how many queue entries and applications to list."""
    if raw is None:
        return TOP
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_TOP:
        raise BadRequestError(
            f"query parameter top: expected an integer from 1 to {MAX_TOP}, got {raw[:20]!r}",
            "top",
        )
    return int(raw)
