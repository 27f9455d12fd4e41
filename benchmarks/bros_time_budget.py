"""Where a BROS engine's time goes, beside vLLM's, in `hermes bench bros`'s setting (issue 19).

    python benchmarks/bros_time_budget.py [--deployment 70b] [--loads 0.1,0.3,0.6]
        [--duration-s 200] [--slo-margin M] [--json OUT]

Each iteration's time is split with the engine's own cost model (`engine/cost_model.py`):
- fixed: the per-step overhead, the all-reduces' latency and the non-attention forward of a
  one-token batch (reading the weights): paid by every iteration whatever it holds;
- RT work and BE work: the rest of the non-attention forward and all-reduce bytes (shared by
  tokens), per-sequence overhead, attention and output tokens, by the class of the request.

RT tokens ride every iteration, so an engine that holds RT's time per token near its SLO runs
at least 1 / (TPOT SLO x (1 - margin)) iterations per second, and pays `fixed` that often; vLLM,
whose iterations are 3-4 times longer, pays it that much less often. BE gets what RT and the
fixed cost leave. Printed per engine and RT load: iterations per second, the three shares of
the GPU's time, and BE output tokens per second (per instance), measured after a 10 % warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any

from hermes.engine.catalog import make_engine
from hermes.engine.cost_model import StepCostModel
from hermes.engine.interface import LLMEngine
from hermes.engine.rt_pace import BrosOptions
from hermes.engine.step import Step, StepResult
from hermes.experiments.bros_paper import DEPLOYMENTS, BrosSettings
from hermes.experiments.bros_sim import rt_capacity, simulate
from hermes.experiments.bros_slos import derive_slos
from hermes.experiments.bros_workload import (
    BeStream,
    conversation_lengths,
    default_be_backlog,
    rt_trace,
)
from hermes.policies.slo_class import class_priority
from hermes.sim.window import Window


class Accounted:
    """An engine whose planned iterations are split into fixed, RT and BE time (decode runs
    of several iterations, which the vLLM engine plans when no prompt waits, by their first
    iteration's split)."""

    def __init__(self, engine: LLMEngine, cost: StepCostModel, start_s: float) -> None:
        self.engine, self.cost, self.start_s = engine, cost, start_s
        self.seconds = {"fixed": 0.0, "rt": 0.0, "be": 0.0}
        self.tokens = {"rt": 0, "be": 0}
        self.iterations = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def plan(self, now: float) -> Step | None:
        step = self.engine.plan(now)
        if step is not None and now >= self.start_s:
            self._account(step)
        return step

    def complete(self, step: Step) -> StepResult:
        return self.engine.complete(step)

    def _account(self, step: Step) -> None:
        c = self.cost
        own = {"rt": 0.0, "be": 0.0}
        tokens = {"rt": 0, "be": 0}
        for r, n, _ in step.chunks:
            cls = "rt" if r.slo_class == "rt" else "be"
            tokens[cls] += n
            done = r.num_computed
            if n == 1 and done > 0:
                attention = (done + 1) * c._decode_s_per_kv_token
            else:
                attention = n * (done + n / 2.0) * c._prefill_s_per_pair
            output = c.per_output_token_s if done + n >= r.num_tokens else 0.0
            own[cls] += c.per_sequence_s + attention + output
        total = tokens["rt"] + tokens["be"]
        fixed = c.per_step_s + c.nonattention_s(1) + c.tp_comm_s(1)
        shared = c.nonattention_s(total) + c.tp_comm_s(total) - c.nonattention_s(1) - c.tp_comm_s(1)
        duration = step.end_s - step.start_s
        split = fixed + shared + own["rt"] + own["be"]
        scale = duration / split  # a decode run: its iterations, split like its first
        self.seconds["fixed"] += fixed * scale
        for cls in ("rt", "be"):
            share = tokens[cls] / total if total else 0.0
            self.seconds[cls] += (own[cls] + shared * share) * scale
        self.iterations += step.iterations
        for cls in ("rt", "be"):
            self.tokens[cls] += tokens[cls] * step.iterations


def measure(
    dep_key: str, loads: list[float], duration_s: float, margin: float | None
) -> dict[str, Any]:
    d = next(x for x in DEPLOYMENTS if dep_key in x.key)
    s = BrosSettings()
    cfg, cost = s.engine, d.cost()
    pool = conversation_lengths().clipped(cfg.max_model_len)
    slos = derive_slos(cost, cfg, pool.percentile_prompt(90.0), pool.median_context())
    capacity = rt_capacity(cost, cfg, pool, s.seed, Window(*s.capacity_window_s, 0.0))
    warm = duration_s / 10
    out: dict[str, Any] = {"deployment": d.key, "tpot_slo_s": slos.tpot_s, "rows": []}
    for f in loads:
        for policy in ("vllm", "bros"):
            engine = make_engine(policy, cost, cfg, BrosOptions(slo_margin=margin))
            acc = Accounted(engine, cost, warm)
            run = simulate(
                acc,
                rt_trace(pool, f * capacity, duration_s, s.seed),
                BeStream(s.seed),
                Window(warm, duration_s, duration_s),
                ttft_slo_s=slos.ttft_s,
                tpot_slo_s=slos.tpot_s,
                rt_priority=class_priority(policy, "rt"),
                be_priority=class_priority(policy, "be"),
                be_backlog=default_be_backlog(cfg),
            )
            busy = sum(acc.seconds.values())
            row = {
                "load": f,
                "policy": policy,
                "iterations_per_s": acc.iterations / busy,
                **{f"{k}_share": v / busy for k, v in acc.seconds.items()},
                "be_tokens_per_s": run.be_tokens / run.span_s,
                "rt_forward_tokens_per_s": acc.tokens["rt"] / busy,
                "be_forward_tokens_per_s": acc.tokens["be"] / busy,
            }
            out["rows"].append(row)
            print(
                f"{d.key} load {f:g} {policy:5s} {row['iterations_per_s']:5.2f} it/s  fixed "
                f"{row['fixed_share']:.3f}  RT {row['rt_share']:.3f}  BE {row['be_share']:.3f}  "
                f"BE {row['be_tokens_per_s']:.0f} tok/s; forward tokens/s RT "
                f"{row['rt_forward_tokens_per_s']:.0f} BE {row['be_forward_tokens_per_s']:.0f}",
                flush=True,
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--deployment", default="70b", help="7b or 70b [default: 70b]")
    ap.add_argument("--loads", default="0.1,0.3,0.6", help="RT loads, x capacity per instance")
    ap.add_argument("--duration-s", type=float, default=200.0)
    ap.add_argument("--slo-margin", type=float, default=None, help="[default: adaptive]")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    if a.deployment not in ("7b", "70b"):
        ap.error(f"--deployment: expected 7b or 70b, got {a.deployment!r}")
    try:
        loads = [float(x) for x in a.loads.split(",")]
    except ValueError:
        ap.error(f"--loads: expected comma-separated numbers, got {a.loads!r}")
    if not loads or any(not x > 0 for x in loads):
        ap.error(f"--loads: expected positive numbers, got {a.loads!r}")
    if not a.duration_s > 0:
        ap.error(f"--duration-s: expected a positive number, got {a.duration_s}")
    key = "llama-2-70b" if a.deployment == "70b" else "llama-2-7b"
    out = measure(key, loads, a.duration_s, a.slo_margin)
    out["machine"] = {"cpu_count": os.cpu_count(), "python": platform.python_version()}
    if a.json is not None:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
