"""Writing an experiment's results: `results.json`, a Markdown report, and PNG plots."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI

import matplotlib.pyplot as plt


def _f(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.0f} %"


def _rel(new: float | None, base: float | None) -> float | None:
    return None if new is None or not base else new / base - 1.0


def headline_table(r: Mapping[str, Any], seqs: str) -> str:
    """Policies at the headline intensity: ACT mean, P95, P99 and the change against vllm."""
    head = str(r["settings"]["headline_intensity"])
    rows = r["load"][seqs]["by_intensity"][head]
    base = rows.get("vllm", {})
    lines = [
        "| policy | ACT mean, s | vs vllm | P95, s | vs vllm | P99, s |",
        "|---|---|---|---|---|---|",
    ]
    for policy, row in rows.items():
        if policy.startswith("_"):
            continue
        lines.append(
            f"| {policy} | {_f(row['act_mean'])} | "
            f"{_pct(_rel(row['act_mean'], base.get('act_mean')))} | {_f(row['act_p95'])} | "
            f"{_pct(_rel(row['act_p95'], base.get('act_p95')))} | {_f(row['act_p99'])} |"
        )
    floor = rows["_floor"]
    lines.append(
        f"| *each app alone* | {_f(floor['standalone_act_mean'])} | "
        f"{_pct(floor['max_reduction_vs_vllm'])} | | | |"
    )
    return "\n".join(lines)


def draws_line(r: Mapping[str, Any], seqs: str) -> str:
    """Mean ACT of vllm and gittins in each workload draw: how much one draw can swing."""
    by = r["load"][seqs].get("act_mean_by_draw", {})
    if "vllm" not in by or "gittins" not in by:
        return ""
    pairs = [
        f"{_f(v)} → {_f(g)} s ({_pct(_rel(g, v))})"
        for v, g in zip(by["vllm"], by["gittins"], strict=True)
    ]
    return "Mean ACT per workload draw, vllm → gittins: " + "; ".join(pairs) + "."


def _load_table(r: Mapping[str, Any], seqs: str) -> str:
    load = r["load"][seqs]["by_intensity"]
    policies = [p for p in next(iter(load.values())) if not p.startswith("_")]
    lines = [
        "| intensity | " + " | ".join(policies) + " | each app alone | busy |",
        "|---|" + "---|" * (len(policies) + 2),
    ]
    for k, rows in load.items():
        cells = " | ".join(_f(rows[p]["act_mean"]) for p in policies)
        busy = rows[policies[0]].get("utilisation")
        lines.append(
            f"| {k} | {cells} | {_f(rows['_floor']['standalone_act_mean'])} | {_f(busy, 2)} |"
        )
    return "\n".join(lines)


def _deadline_table(r: Mapping[str, Any]) -> str:
    lines = [
        "| max_num_seqs | deadline | vllm | edf | lstf |",
        "|---|---|---|---|---|",
    ]
    for seqs, rows in r["deadlines"].items():
        for factor, cell in rows.items():
            dsr = [cell[p]["dsr"] for p in ("vllm", "edf", "lstf")]
            lines.append(
                f"| {seqs} | {factor}x standalone | "
                + " | ".join("-" if d is None else f"{100 * d:.1f} %" for d in dsr)
                + " |"
            )
    return "\n".join(lines)


def _prewarm_table(r: Mapping[str, Any]) -> str:
    pw = r["prewarm"]
    lines = [
        "| prewarm | critical-path cold wait, s | warm backend-seconds | cold starts "
        "| ACT mean, s |",
        "|---|---|---|---|---|",
    ]
    for name, row in pw["policies"].items():
        lines.append(
            f"| {name} | {_f(row['cold_wait_s'])} | {_f(row['warm_instance_s'], 0)} | "
            f"{row['cold_starts']} | {_f(row['act_mean'], 2)} |"
        )
    for ttl, row in pw["keepalive_ttl"].items():
        lines.append(
            f"| keepalive TTL {float(ttl):g} s | {_f(row['cold_wait_s'])} | "
            f"{_f(row['warm_instance_s'], 0)} | {row['cold_starts']} | {_f(row['act_mean'], 2)} |"
        )
    return "\n".join(lines)


def _ablation_table(r: Mapping[str, Any]) -> str:
    lines = ["| max_num_seqs | variant | ACT mean, s | P95, s | P99, s |", "|---|---|---|---|---|"]
    for seqs, rows in r["ablation"].items():
        for name, row in rows.items():
            lines.append(
                f"| {seqs} | {name} | {_f(row['act_mean'], 2)} | {_f(row['act_p95'])} | "
                f"{_f(row['act_p99'])} |"
            )
    return "\n".join(lines)


def _overhead_table(r: Mapping[str, Any]) -> str:
    lines = [
        "| active apps | nothing changed, ms | running apps gained service, ms | all gained, ms |",
        "|---|---|---|---|",
    ]
    for row in r["overhead"]["rounds"]:
        lines.append(
            f"| {row['apps']:,} | {row['unchanged_ms']:.2f} | {row['round_ms']:.2f} "
            f"({row['running_gained']}) | {row['all_gained_ms']:.2f} |"
        )
    return "\n".join(lines)


def targets_table(targets: Sequence[Mapping[str, Any]], group: str | None = None) -> str:
    """The targets as a markdown table; `group` names an extra first column (e.g. the
    deployment or workload each target belongs to)."""
    head = ([group] if group else []) + ["target", "measured", "goal", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in targets:
        v = t["measured"]
        met = "-" if t["met"] is None else ("met" if t["met"] else "**not met**")
        cells = ([str(t[group])] if group else []) + [
            t["target"],
            "-" if v is None else f"{v:.3f}",
            t["goal"],
            met,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _tools_table(r: Mapping[str, Any]) -> str:
    """FIFO against policy order per layout and pool size: mean ACT, the change, what a
    clairvoyant order and unlimited pools give, P95, and the seconds calls waited for an
    instance."""
    lines = [
        "| layout | instances | FIFO ACT mean, s | policy ACT mean, s | change "
        "| oracle order, s | change | unlimited pools, s | change | FIFO P95, s "
        "| policy P95, s | queue wait FIFO → policy, s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for layout, cells in r["tools"]["sweep"].items():
        for n, cell in cells.items():
            f, p = cell["fifo"], cell["policy"]
            o, u = cell.get("oracle", {}), cell.get("unlimited", {})
            wait = f"{sum(f['queue_wait_s'].values()):.0f} → {sum(p['queue_wait_s'].values()):.0f}"
            lines.append(
                f"| {layout} | {n} | {_f(f['act_mean'], 2)} | {_f(p['act_mean'], 2)} | "
                f"{_pct(cell['reduction'])} | {_f(o.get('act_mean'), 2)} | "
                f"{_pct(cell.get('reduction_oracle'))} | {_f(u.get('act_mean'), 2)} | "
                f"{_pct(cell.get('reduction_unlimited'))} | {_f(f['act_p95'])} | "
                f"{_f(p['act_p95'])} | {wait} |"
            )
    return "\n".join(lines)


def _tools_by_app(r: Mapping[str, Any]) -> str:
    """Per application at the headline setting: ACT under each order and unlimited pools, and
    the seconds an application waited for tool slots under FIFO."""
    t = r["tools"]
    rows = {k: t.get(k, {}).get("act_mean_by_app", {}) for k in ("policy", "oracle", "unlimited")}
    f, wait = t["fifo"]["act_mean_by_app"], t["fifo"].get("tool_wait_s_by_app", {})
    lines = [
        "| application | FIFO ACT mean, s | of it waiting for tools, s | policy ACT mean, s "
        "| change | oracle order, s | unlimited pools, s |",
        "|---|---|---|---|---|---|---|",
    ]
    for app, base in f.items():
        p = rows["policy"].get(app)
        lines.append(
            f"| {app} | {_f(base, 2)} | {_f(wait.get(app), 2)} | {_f(p, 2)} | "
            f"{_pct(_rel(p, base))} | {_f(rows['oracle'].get(app), 2)} | "
            f"{_f(rows['unlimited'].get(app), 2)} |"
        )
    return "\n".join(lines)


def _tools_section(r: Mapping[str, Any]) -> list[str]:
    at = r["tools"]["setting"]
    return [
        "## Tool pools in policy order",
        "",
        f"gittins on {at['replicas']} engines (max_num_seqs {at['max_num_seqs']}), the "
        f"applications over {at['window_s']:g} s; sandboxed tools in pools of limited "
        "instances whose waiting calls go first come first served (FIFO) or by their "
        "applications' rank (policy). separate: docker and env pools of n each; shared: one "
        "pool of n sandboxes runs both. oracle order: the pools grant by the applications' "
        "true remaining demand (clairvoyant); unlimited pools: nothing queues for a tool.",
        "",
        _tools_table(r),
        "",
        f"By application, {at['layout']} pool of {at['instances']}:",
        "",
        _tools_by_app(r),
    ]


def _load_sections(r: Mapping[str, Any]) -> list[str]:
    s = r["settings"]
    parts: list[str] = []
    for seqs in r["load"]:
        parts += [
            "",
            f"## Completion time at intensity {s['headline_intensity']:g}, max_num_seqs {seqs}",
            "",
            headline_table(r, seqs),
            "",
            draws_line(r, seqs),
            "",
            f"Mean ACT (s) by intensity, max_num_seqs {seqs}:",
            "",
            _load_table(r, seqs),
        ]
    return [*parts, "", "![ACT vs load](act_vs_intensity.png)", "", "![ACT CDF](act_cdf.png)"]


def markdown(r: Mapping[str, Any]) -> str:
    s = r["settings"]
    mix = ", ".join(f"{k} {v:g}" for k, v in s["mix"].items())
    parts = [
        "# Hermes experiments",
        "",
        f"{s['apps']} applications ({mix}), Poisson arrivals over 30/k minutes at intensity k, "
        f"one {s['model']} on one {s['gpu']}; seed {s['seed']}. The load sweep pools "
        f"{s['workloads']} workload draws (seeds {s['seed']} onward), as the tools experiment "
        "does; the other experiments use the first. Tool backends are warm except in the "
        f"prewarming and tools experiments. "
        f"{r['wall_s']:.0f} s of wall time.",
        "",
        "## Targets",
        "",
        targets_table(r["targets"]),
    ]
    if "load" in r:
        parts += _load_sections(r)
    sections = (
        ("deadlines", "## Deadlines (deadline satisfaction rate)", _deadline_table, None),
        ("prewarm", "## Prewarming", _prewarm_table, "![prewarming](prewarm.png)"),
        ("ablation", "## Ablations", _ablation_table, None),
        ("overhead", "## Ranking-round overhead", _overhead_table, None),
    )
    for key, title, table, image in sections:
        if key in r:
            parts += ["", title, "", table(r)] + (["", image] if image else [])
    if "tools" in r:
        parts += ["", *_tools_section(r)]
    return "\n".join([*parts, ""])


def plot_load(r: Mapping[str, Any], path: Path) -> None:
    limits = list(r["load"])
    fig, axes = plt.subplots(2, len(limits), figsize=(5.5 * len(limits), 7), squeeze=False)
    for col, seqs in enumerate(limits):
        load = r["load"][seqs]["by_intensity"]
        ks = [float(k) for k in load]
        policies = [p for p in next(iter(load.values())) if not p.startswith("_")]
        for row, (stat, label) in enumerate((("act_mean", "mean"), ("act_p95", "P95"))):
            ax = axes[row][col]
            for p in policies:
                ax.plot(ks, [load[k][p][stat] for k in load], marker="o", label=p)
            if stat == "act_mean":
                floor = [load[k]["_floor"]["standalone_act_mean"] for k in load]
                ax.plot(ks, floor, "k--", label="each app alone")
            ax.set_title(f"{label} ACT, max_num_seqs {seqs}")
            ax.set_xlabel("intensity")
            ax.set_ylabel("seconds")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cdf(r: Mapping[str, Any], path: Path) -> None:
    limits = list(r["load"])
    fig, axes = plt.subplots(1, len(limits), figsize=(5.5 * len(limits), 4), squeeze=False)
    for col, seqs in enumerate(limits):
        ax = axes[0][col]
        for p, acts in r["load"][seqs]["cdf"].items():
            if acts:
                ax.step(acts, [(i + 1) / len(acts) for i in range(len(acts))], label=p)
        ax.set_xscale("log")
        ax.set_title(f"ACT CDF, intensity {r['settings']['headline_intensity']:g}, "
                     f"max_num_seqs {seqs}")  # fmt: skip
        ax.set_xlabel("completion time, s")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_prewarm(r: Mapping[str, Any], path: Path) -> None:
    pw = r["prewarm"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ttl = pw["keepalive_ttl"]
    ax.plot(
        [row["warm_instance_s"] for row in ttl.values()],
        [row["cold_wait_s"] for row in ttl.values()],
        "o-",
        color="grey",
        label="keepalive, TTL sweep",
    )
    for t, row in ttl.items():
        ax.annotate(f"{float(t):g}s", (row["warm_instance_s"], row["cold_wait_s"]), fontsize=7)
    for name, row in pw["policies"].items():
        ax.plot(row["warm_instance_s"], row["cold_wait_s"], "s", markersize=8, label=name)
    ax.set_xlabel("warm backend-seconds")
    ax.set_ylabel("critical-path cold-start wait, s (sum over apps)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(r: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """results.json, report.md and the plots in `out_dir`; the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "results.json", out_dir / "report.md"]
    paths[0].write_text(json.dumps(r, indent=2) + "\n", encoding="utf-8")
    paths[1].write_text(markdown(r), encoding="utf-8")
    for key, name, plot in (
        ("load", "act_vs_intensity.png", plot_load),
        ("load", "act_cdf.png", plot_cdf),
        ("prewarm", "prewarm.png", plot_prewarm),
    ):
        if key in r:  # only the experiments that ran
            plot(r, out_dir / name)
            paths.append(out_dir / name)
    return paths
