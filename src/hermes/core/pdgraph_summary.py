"""A PDGraph described for people and machines: nodes, edges, demand quantiles."""

from __future__ import annotations

from typing import Any

import numpy as np

from hermes.core.demand_sampler import DemandModel
from hermes.core.pdgraph import END, START, PDGraph

QUANTILES = (0.1, 0.5, 0.9, 0.99)


def _stats(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    out = {"mean": float(values.mean())}
    out.update({f"p{round(q * 100)}": float(np.quantile(values, q)) for q in QUANTILES})
    out["max"] = float(values.max())
    return out


def _prefix(graph: PDGraph, stage: str) -> dict[str, Any]:
    """What the stage's calls share, as learned (`core.prefix_learning`)."""
    node = graph.nodes[stage]
    learned = graph.learned_prefix(stage)
    return {
        "shared_prefix_tokens": 0 if learned is None else learned.shared_prefix_tokens,
        "history_resend": node.history_resend,
        "resend_share": node.resend_share,
        "resend_checks": len(node.resends),
    }


def summarize(model: DemandModel, *, samples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Nodes with their windows' statistics, edge probabilities, correlations used by
    refinement, and quantiles of the total demand in seconds (sampled with ``seed``)."""
    graph: PDGraph = model.graph
    nodes: dict[str, Any] = {}
    for name, node in graph.nodes.items():
        fan = np.array([f for _, f in node.fanouts], dtype=np.float64)
        calls = np.array([(a, b) for _, a, b in node.calls], dtype=np.float64).reshape(-1, 2)
        entry: dict[str, Any] = {
            "kind": node.kind,
            "backend": node.backend,
            "visits_in_window": len(node.fanouts),
            "fanout": _stats(fan),
        }
        if node.model is not None:
            entry["model"] = node.model
        if node.kind == "llm":
            entry["prompt_tokens"] = _stats(calls[:, 0])
            entry["completion_tokens"] = _stats(calls[:, 1])
            entry["prefix"] = _prefix(graph, name)
        else:
            entry["duration_s"] = _stats(calls[:, 0])
        nodes[name] = entry
    total = model.total(samples, np.random.default_rng(seed))
    return {
        "app": graph.app,
        "runs_seen": graph.runs_seen,
        "prefix_fraction": graph.prefix_fraction,
        "start": START,
        "end": END,
        "nodes": nodes,
        "edges": graph.successors(),
        # Where the next stage depends on the visit number (loops): one entry per visit, the
        # last serving every later one.
        "edges_by_visit": {
            src: [graph.transition_probabilities(src, k) for k in range(1, depth + 1)]
            for src in graph.edges
            for depth in [graph.visit_table(src).depth]
            if depth > 1
        },
        "correlations": [
            {
                "source": c.source,
                "target": c.target,
                "source_feature": c.source_feature,
                "target_feature": c.target_feature,
                "rho": c.rho,
                "runs": c.runs,
            }
            for corrs in model.correlations.values()
            for c in corrs
        ],
        "demand_s": _stats(total),
    }
