"""The `kv` experiment: KV retention while applications run tool stages. The paper's mix (100
applications over 5 minutes, Gittins ranking) on one Llama-2-7B A100 engine with a tight KV
pool (400 blocks of 16 tokens), the same with a 2 GiB CPU tier, and the A100's full pool,
under retention lru (vLLM), ttl (Continuum) and pdgraph (Hermes)."""

from __future__ import annotations

from contextlib import nullcontext
from functools import partial
from typing import Any

from hermes.experiments.common import PAPER_MIX
from hermes.experiments.parallel import Sweep
from hermes.sim.build import simulate
from hermes.sim.config import config_from_dict
from hermes.types import ProgressLog

RETENTIONS = ("lru", "ttl", "pdgraph")
SETTINGS: dict[str, dict[str, Any]] = {
    "tight": {"num_gpu_blocks": 400},
    "tight + CPU tier": {"num_gpu_blocks": 400, "cpu_kv_gb": 2.0},
    "roomy": {},
}


def run(setting: dict[str, Any], retention: str, seed: int = 0) -> dict[str, Any]:
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


def kv_experiment(
    seed: int = 0, progress: ProgressLog = lambda m: None, sweep: Sweep[Any] | None = None
) -> dict[str, Any]:
    """Every setting by retention; `policies` is the tight setting's (the issue's headline).
    The runs on `sweep` (in this process without one); `progress` hears each as it ends."""
    jobs = [
        (f"kv: {name}, {retention}", partial(_job, setting, retention, seed))
        for name, setting in SETTINGS.items()
        for retention in RETENTIONS
    ]
    with Sweep(progress=progress) if sweep is None else nullcontext(sweep) as runner:
        done = iter(runner.run(jobs))
    by_setting = {name: {r: next(done) for r in RETENTIONS} for name in SETTINGS}
    return {"policies": by_setting["tight"], "by_setting": by_setting}
