"""The `kv` experiment: KV retention while applications run tool stages. The paper's mix (100
applications over 5 minutes, Gittins ranking) on one Llama-2-7B A100 engine with a tight KV
pool (400 blocks of 16 tokens), the same with a 16 GiB CPU tier, and the A100's full pool,
under retention lru (vLLM), ttl (Continuum) and pdgraph (Hermes), over four workload draws.

Beside them runs a free-cache reference: lru with an unbounded CPU tier that copies back at no
cost, so that every reuse hits and idle KV takes no GPU memory. No retention policy keeps more
for less (retention only chooses what stays cached, where), so the reference shows how much of
the gap to a roomy pool retention could close at all."""

from __future__ import annotations

from contextlib import nullcontext
from functools import partial
from typing import Any

import numpy as np

from hermes.experiments.common import PAPER_MIX
from hermes.experiments.parallel import Sweep
from hermes.sim.build import simulate
from hermes.sim.config import config_from_dict
from hermes.types import ProgressLog

RETENTIONS = ("lru", "ttl", "pdgraph")
REFERENCE = "free-cache reference"
DRAWS = 4  # workload draws (seeds seed .. seed + 3): one draw's differences are mostly noise
SETTINGS: dict[str, dict[str, Any]] = {
    "tight": {"num_gpu_blocks": 400},
    "tight + CPU tier": {"num_gpu_blocks": 400, "cpu_kv_gb": 16.0},
    "roomy": {},
}
# An unbounded CPU tier (1 TiB) and a copy speed that makes reloads free.
FREE_CACHE: dict[str, Any] = {"cpu_kv_gb": 1024.0, "swap_bytes_per_s": 1e15}


def run(setting: dict[str, Any], retention: str, seed: int = 0) -> dict[str, Any]:
    """One simulation; `retention` may be REFERENCE (lru on the free cache)."""
    if retention == REFERENCE:
        setting, retention = {**setting, **FREE_CACHE}, "lru"
    cfg = config_from_dict(
        {
            "seed": seed,
            "policy": "gittins",
            "kv_retention": retention,
            "instances": [{"model": "llama-2-7b", "count": 1, **setting}],
            "apps": {
                "templates": PAPER_MIX,
                "count": 100,
                "arrivals": {"process": "poisson", "window_s": 300},
            },
        }
    )
    out: Any = simulate(cfg)
    pc = out["prefix_cache"]
    return {
        "act_mean": out["act"]["mean"],
        "act_p95": out["act"]["p95"],
        "hit_rate": pc["hit_rate"],
        "reloaded_tokens": pc["reloaded_tokens"],
        "prefill_tokens": sum(i["prefill_tokens"] for i in out["instances"]),
        "preemptions": out["preemptions"],
        "retention": out.get("kv_retention"),
    }


def _job(setting: dict[str, Any], retention: str, seed: int, _shared: object) -> dict[str, Any]:
    return run(setting, retention, seed)


def _over_draws(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The draws' means (ACT, hit rate, tokens, preemptions), and each draw's mean ACT."""
    keys = ("act_mean", "act_p95", "hit_rate", "reloaded_tokens", "prefill_tokens", "preemptions")
    out: dict[str, Any] = {k: float(np.mean([r[k] for r in runs])) for k in keys}
    out["act_mean_by_draw"] = [r["act_mean"] for r in runs]
    out["retention"] = runs[0]["retention"]
    return out


def kv_experiment(
    seed: int = 0,
    progress: ProgressLog = lambda m: None,
    sweep: Sweep[Any] | None = None,
    settings: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Every setting (SETTINGS unless given) by retention (and the reference), averaged over
    DRAWS draws; `policies` is the tight setting's (the issue's headline), where there is one.
    The runs on `sweep` (in this process without one); `progress` hears each as it ends."""
    settings = SETTINGS if settings is None else settings
    kinds = (*RETENTIONS, REFERENCE)
    seeds = range(seed, seed + DRAWS)
    jobs = [
        (f"kv: {name}, {kind}, draw {s}", partial(_job, setting, kind, s))
        for name, setting in settings.items()
        for kind in kinds
        for s in seeds
    ]
    with Sweep(progress=progress) if sweep is None else nullcontext(sweep) as runner:
        done = iter(runner.run(jobs))
    by_setting = {
        name: {kind: _over_draws([next(done) for _ in seeds]) for kind in kinds}
        for name in settings
    }
    tight = by_setting.get("tight", {})
    return {
        "policies": {r: tight[r] for r in RETENTIONS if r in tight},
        "by_setting": by_setting,
        "draws": list(seeds),
    }
