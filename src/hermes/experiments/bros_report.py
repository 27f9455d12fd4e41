"""Writing the BROS experiment's results: `results.json`, a Markdown report and one PNG per
deployment."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI

import matplotlib.pyplot as plt

from hermes.experiments.report import targets_table

_MARKERS = ("o", "s", "^", "D", "v", "P")


def _f(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{1e3 * x:.0f}"


def _share(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def _margin(m: float | None) -> str:
    if m is None:
        return "early by a margin adapted online to BE's share of the engine"
    return f"{m:g} of its SLO early"


def _policies(dep: Mapping[str, Any]) -> list[str]:
    return list(dep["by_load"][0]["policies"]) if dep["by_load"] else []


def slo_lines(dep: Mapping[str, Any]) -> list[str]:
    s = dep["slos"]
    return [
        f"- TTFT SLO **{s['ttft_s']:.2f} s** = min({s['ttft_multiple']:g} × "
        f"{s['unloaded_ttft_s']:.3f} s, {s['ttft_ceiling_s']:g} s): the unloaded TTFT of the "
        f"trace's P90 prompt ({s['prompt_tokens']} tokens) alone on the engine.",
        f"- TPOT SLO **{1e3 * s['tpot_s']:.0f} ms** = min({s['tpot_multiple']:g} × "
        f"{1e3 * s['unloaded_tpot_s']:.1f} ms, {1e3 * s['tpot_ceiling_s']:.0f} ms): the "
        f"unloaded time per output token of one sequence at the median context "
        f"({s['context_tokens']} tokens).",
        f"- RT capacity: {dep['rt_capacity_per_instance']:.2f} req/s per instance, "
        f"{dep['rt_capacity']:.2f} req/s for the deployment; BE backlog: "
        f"{dep['be_backlog']} requests kept queued.",
    ]


def load_table(dep: Mapping[str, Any]) -> str:
    lines = [
        "| RT load | RT req/s | policy | TTFT mean / P99, s | TPOT mean / P99, ms "
        "| end-to-end mean / P99, s | SLO attainment | BE tok/s | BE req/s | preemptions |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in dep["by_load"]:
        for policy, row in x["policies"].items():
            unfinished = row["rt_unfinished"]
            att = _share(row["slo_attainment"])
            if unfinished:
                att += f" ({unfinished} unfinished)"
            lines.append(
                f"| {x['fraction']:g} × | {x['rt_rate_per_s']:.2f} | {policy} | "
                f"{_f(row['ttft_mean_s'])} / {_f(row['ttft_p99_s'])} | "
                f"{_ms(row['tpot_mean_s'])} / {_ms(row['tpot_p99_s'])} | "
                f"{_f(row['e2e_mean_s'], 1)} / {_f(row['e2e_p99_s'], 1)} | {att} | "
                f"{row['be_tokens_per_s']:.0f} | {row['be_requests_per_s']:.2f} | "
                f"{row['preemptions']} |"
            )
    return "\n".join(lines)


def markdown(r: Mapping[str, Any]) -> str:
    s = r["settings"]
    parts = [
        "# BROS experiments: real-time and best-effort requests on one engine",
        "",
        "RT requests: (prompt, output) lengths of the Azure LLM inference trace 2023 "
        "(conversation), prompts cut to fit max_model_len, Poisson arrivals. BE requests: a "
        "standing backlog, prompts uniform in [512, 1024] tokens, outputs uniform in [32, 128]. "
        f"RT arrivals over {s['duration_s']:g} simulated s; those after a {s['warmup_s']:g} s "
        f"warm-up are measured and get up to {s['drain_s']:g} s more to finish (an unfinished "
        "one misses its SLO and enters the latency percentiles at its age then, a lower "
        "bound). BE throughput counts BE output tokens over the same window. Co-served "
        "policies: each instance serves both classes; the instances are identical and "
        "independent, so one is simulated at its share of the RT rate and BE figures are for "
        "the whole deployment. `split`: one instance serves only RT at the full rate, the "
        "other only BE. `vllm`: FCFS over both classes; `vllm-priority`: RT before BE "
        f"(static priority). RT load in multiples of the deployment's RT capacity. BROS aims "
        f"each RT token {_margin(s['slo_margin'])} (`--slo-margin`). Seed "
        f"{s['seed']}; {r['wall_s']:.0f} s of wall time.",
        "",
    ]
    parts += ["## Targets", "", targets_table(r["targets"], "deployment"), ""]
    for key, dep in r["deployments"].items():
        parts += [
            f"## {dep['title']}",
            "",
            f"Profile `{dep['profile']}`, {dep['gpus']} GPUs.",
            "",
            *slo_lines(dep),
            "",
            load_table(dep),
            "",
            f"![{key}](bros_{key}.png)",
            "",
        ]
    return "\n".join(parts)


def plot_deployment(dep: Mapping[str, Any], path: Path) -> None:
    """RT P99 end-to-end latency, SLO attainment, BE throughput and RT P99 TPOT vs RT load."""
    policies = _policies(dep)
    loads = [x["rt_rate_per_s"] for x in dep["by_load"]]
    panels = (
        ("e2e_p99_s", "RT P99 end-to-end latency, s", 1.0),
        ("slo_attainment", "RT SLO attainment, %", 100.0),
        ("be_tokens_per_s", "BE throughput, output tokens/s", 1.0),
        ("tpot_p99_s", "RT P99 TPOT, ms", 1e3),
    )
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for ax, (key, label, scale) in zip(axes.flat, panels, strict=True):
        for k, p in enumerate(policies):
            ys = [x["policies"][p][key] for x in dep["by_load"]]
            pts = [(lx, y * scale) for lx, y in zip(loads, ys, strict=True) if y is not None]
            if pts:
                # Distinct markers and dashes: policies that coincide stay visible.
                ax.plot(
                    [a for a, _ in pts],
                    [b for _, b in pts],
                    marker=_MARKERS[k % len(_MARKERS)],
                    ls="-" if k % 2 == 0 else "--",
                    label=p,
                )
        if key == "tpot_p99_s":
            ax.axhline(1e3 * dep["slos"]["tpot_s"], color="k", ls="--", lw=0.8, label="SLO")
        if key == "e2e_p99_s":
            ax.set_yscale("log")
        ax.set_xlabel("RT load, requests/s (deployment)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(dep["title"])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(r: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """results.json, report.md and one plot per deployment in `out_dir`; the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "results.json", out_dir / "report.md"]
    paths[0].write_text(json.dumps(r, indent=2) + "\n", encoding="utf-8")
    paths[1].write_text(markdown(r), encoding="utf-8")
    for key, dep in r["deployments"].items():
        path = out_dir / f"bros_{key}.png"
        plot_deployment(dep, path)
        paths.append(path)
    return paths
