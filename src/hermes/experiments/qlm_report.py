"""`hermes bench qlm`'s files: results.json, report.md and one plot of SLO attainment against
load per workload."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from hermes.experiments.report import targets_table


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def markdown(r: dict[str, Any]) -> str:
    s = r["settings"]
    lines = [
        "# QLM experiments: multi-model queue management",
        "",
        f"{s['instances']} A100 instances; gamma arrivals (CV 4) over {s['duration_s']:g} s; "
        "request lengths from the Azure conversation trace; SLOs on completion. Seed "
        f"{s['seed']}; {r['wall_s']:.0f} s of wall time.",
        "",
        "Baselines: `vllm` is a first-come-first-served queue per model (separate deployments; "
        "an idle instance swaps only to a model no instance serves); `vllm-shared` is the QLM "
        "paper's, one FCFS queue in front of GPUs the models share (vLLM with sleep mode behind "
        "a naive router: head-of-line blocking, swaps in arrival order); `edf` is one "
        "earliest-deadline-first queue. Each target names the baseline it compares with.",
        "",
        "## Targets",
        "",
        targets_table(r["targets"], "workload"),
    ]
    for name, w in r["workloads"].items():
        lines += [
            "",
            f"## {name}",
            "",
            "| req/s | policy | SLO attainment | by class | throughput req/s | model swaps "
            "(warm/cold) | GPU util | decide p95 ms |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in w["rates"]:
            for p, v in row["policies"].items():
                classes = ", ".join(
                    f"{c} {_pct(a)}" for c, a in v["slo_attainment_by_class"].items()
                )
                sw = v["model_swaps"]
                d95 = v["decide_ms_p95"]
                lines.append(
                    f"| {row['rate']:g} | {p} | {_pct(v['slo_attainment'])} | {classes} | "
                    f"{v['throughput_req_s']:.2f} | {sw['warm']}/{sw['cold']} | "
                    f"{v['gpu_utilisation']:.2f} | {'-' if d95 is None else f'{d95:.1f}'} |"
                )
        lines += ["", f"![{name}](qlm_{name}.png)"]
    return "\n".join(lines) + "\n"


def plot(r: dict[str, Any], name: str, path: Path) -> None:
    rows = r["workloads"][name]["rates"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for p in rows[0]["policies"]:
        xs = [row["rate"] for row in rows]
        ys = [100 * (row["policies"][p]["slo_attainment"] or 0.0) for row in rows]
        ax.plot(xs, ys, marker="o", label=p)
    ax.set_xlabel("arrivals per second")
    ax.set_ylabel("SLO attainment, %")
    ax.set_title(f"{name}: SLO attainment by load")
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(r: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "results.json", out_dir / "report.md"]
    paths[0].write_text(json.dumps(r, indent=1) + "\n")
    paths[1].write_text(markdown(r))
    for name in r["workloads"]:
        p = out_dir / f"qlm_{name}.png"
        plot(r, name, p)
        paths.append(p)
    return paths
