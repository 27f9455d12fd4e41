"""KV retention policies and the simulator carrying them out."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from hermes.core.demand_sampler import DemandModel
from hermes.core.llm_return import llm_return_samples
from hermes.engine.demand_cost_adapter import EngineDemandCost
from hermes.experiments.common import PAPER_MIX
from hermes.policies.base import AppView, PolicyContext
from hermes.policies.kv_retention import (
    FORGET,
    LET_GO,
    PDGraphRetention,
    Retention,
    make_retention,
)
from hermes.profiles import load_profile
from hermes.sim.build import simulate, template_graphs
from hermes.sim.config import config_from_dict

COST = EngineDemandCost(load_profile("llama-2-7b@a100"))


def _ctx() -> PolicyContext:
    graphs = template_graphs(["react_alfw"], 50, 0)
    return PolicyContext({k: DemandModel(g, COST) for k, g in graphs.items()}, COST, seed=0)


def test_an_agent_comes_back_from_its_tool_and_the_walk_says_when() -> None:
    ctx = _ctx()
    model = ctx.models["react_alfw"]
    t = llm_return_samples(model, "act", 300, np.random.default_rng(0))
    assert np.isfinite(t).mean() > 0.9  # ReAct: after acting it thinks again, nearly always
    assert (t[np.isfinite(t)] > 0).all()
    assert (llm_return_samples(model, "thought", 10, np.random.default_rng(0)) == 0).all()


def test_the_policies_decide_as_their_rules_say() -> None:
    ctx = _ctx()
    view = AppView(0, "react_alfw", 0.0)
    assert make_retention("lru", ctx).on_llm_stage_done(view, "act", 0.0) == LET_GO
    ttl = make_retention("ttl", ctx).on_llm_stage_done(view, "act", 0.0)
    assert ttl.pin_s > 0
    pd = PDGraphRetention(ctx, k=0.5, max_pin_s=1e9).on_llm_stage_done(view, "act", 0.0)
    assert pd.pin_s > 0
    assert pd.by_rank
    assert not ttl.by_rank
    far = PDGraphRetention(ctx, k=0.5, max_pin_s=0.0).on_llm_stage_done(view, "act", 0.0)
    assert far == Retention(offload=True, prefetch_in_s=far.prefetch_in_s)
    assert far.prefetch_in_s is not None
    never = PDGraphRetention(ctx, k=1.0).on_llm_stage_done(view, "act", 0.0)
    assert never in (FORGET, Retention(pin_s=never.pin_s))  # unlikely back: its blocks go
    assert make_retention("pdgraph", ctx).on_llm_stage_done(view, None, 0.0) == LET_GO
    with pytest.raises(ValueError, match="unknown KV retention 'mru'"):
        make_retention("mru", ctx)


def _run(retention: str) -> Any:
    cfg = config_from_dict(
        {
            "seed": 0,
            "policy": "gittins",
            "kv_retention": retention,
            "instances": [{"model": "llama-2-7b", "num_gpu_blocks": 400}],
            "apps": {  # the paper's six-application mix, on a tight KV pool
                "templates": PAPER_MIX,
                "count": 100,
                "arrivals": {"process": "poisson", "window_s": 300},
            },
        }
    )
    return simulate(cfg)


def test_retention_keeps_agents_prefixes_through_their_tool_stages() -> None:
    lru, ttl = _run("lru"), _run("ttl")
    assert "kv_retention" not in lru
    assert ttl["kv_retention"]["pins"] > 0
    assert ttl["prefix_cache"]["hit_rate"] > lru["prefix_cache"]["hit_rate"] + 0.1
    assert ttl["act"]["mean"] < lru["act"]["mean"]
    assert ttl["apps"]["completed"] == lru["apps"]["completed"] == 100


def test_the_kv_experiment_reports_each_policy_and_checks_its_targets() -> None:
    from hermes.experiments.hermes_paper import _kv_targets
    from hermes.experiments.kv_retention import REFERENCE, SETTINGS, run

    row = run(SETTINGS["tight"], "lru")
    assert {"act_mean", "act_p95", "hit_rate"} <= set(row)
    assert row["act_mean"] > 0
    free = run(SETTINGS["tight"], REFERENCE)  # nothing lost, nothing on the GPU while idle
    assert free["hit_rate"] > row["hit_rate"]
    assert free["prefill_tokens"] < row["prefill_tokens"]

    def rows(lru: float, ttl: float, pd: float) -> dict[str, Any]:
        return {k: {"act_mean": v} for k, v in (("lru", lru), ("ttl", ttl), ("pdgraph", pd))}

    tight = {**rows(20.0, 16.0, 14.0), REFERENCE: {"act_mean": 15.0}}
    kv = {"by_setting": {"tight": tight, "roomy": rows(10.0, 10.0, 10.1)}}
    met = {t["target"]: t["met"] for t in _kv_targets(kv)}
    assert met == {
        "pdgraph vs lru retention, mean ACT (tight)": True,  # -30 %
        "pdgraph vs ttl retention, mean ACT (tight)": True,  # -12.5 %
        f"{REFERENCE} vs lru retention, mean ACT (tight)": True,  # -25 %
        f"{REFERENCE} vs ttl retention, mean ACT (tight)": False,  # -6.25 %
        "pdgraph vs lru retention, mean ACT (roomy)": True,  # +1 %, within 2 %
        "pdgraph vs ttl retention, mean ACT (roomy)": True,
    }
    assert _kv_targets(None) == []


def test_pdgraph_drops_a_finished_applications_own_blocks_and_lru_keeps_them() -> None:
    pd, lru = _run("pdgraph"), _run("lru")
    assert pd["kv_retention"]["forgets"] > 0
    assert pd["apps"]["completed"] == lru["apps"]["completed"] == 100
