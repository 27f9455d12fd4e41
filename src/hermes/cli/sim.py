"""`hermes sim`: a simulated cluster serving a workload, from a config file and options."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from hermes.cli.common import fail, os_error, out, write_json
from hermes.cli.progress import Quiet, fraction
from hermes.core.runs import RunFormatError


def _sim_config(
    config: Path | None,
    overrides: dict[str, Any],
    trace: Path | None,
    limit: int | None,
    repeat: int | None,
) -> Any:
    from hermes.sim.config import DEFAULT_CONFIG, ConfigError, config_from_dict, load_config

    try:
        base = load_config(config) if config is not None else DEFAULT_CONFIG
    except ConfigError as e:
        raise fail(str(e)) from None
    data = base.model_dump(mode="python", exclude_unset=False)
    group = {k: v for k, v in overrides.items() if k in ("model", "gpu", "tp", "count")}
    if "max_model_len" in overrides:
        group["max_model_len"] = overrides["max_model_len"]
    if group:
        data["instances"][0].update(group)
    for key in ("enable_prefix_caching", "cpu_kv_gb"):  # every instance group
        if key in overrides:
            for g in data["instances"]:
                g[key] = overrides[key]
    for key in ("policy", "router", "seed"):
        if key in overrides:
            data[key] = overrides[key]
    if trace is not None or limit is not None or repeat is not None:
        work = dict(data["requests"] or {})
        if trace is not None:
            work["trace"] = str(trace)
        if limit is not None:
            work["limit"] = limit
        if repeat is not None:
            work["repeat"] = repeat
        data["requests"] = work
    try:
        changed = bool(overrides) or trace is not None or limit is not None or repeat is not None
        source = str(config) if config else "default config"
        return config_from_dict(data, f"{source} with command-line options" if changed else source)
    except ConfigError as e:
        raise fail(str(e)) from None


def sim(
    config: Annotated[
        Path | None, typer.Option("--config", help="Simulation config (YAML).")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results here.")] = None,
    trace: Annotated[
        Path | None, typer.Option(help="Request trace (Azure CSV or Mooncake JSONL).")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model of the first instance group: {models}.")
    ] = None,
    gpu: Annotated[
        str | None, typer.Option(help="GPU of the first instance group: {gpus}.")
    ] = None,
    tp: Annotated[int | None, typer.Option(help="Tensor-parallel degree.")] = None,
    instances: Annotated[int | None, typer.Option(help="Replicas in the first group.")] = None,
    policy: Annotated[str | None, typer.Option(help="Scheduling policy: {policies}.")] = None,
    router: Annotated[str | None, typer.Option(help="Router between replicas: {routers}.")] = None,
    max_model_len: Annotated[int | None, typer.Option(help="Longest prompt + output.")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N trace requests.")] = None,
    repeat: Annotated[
        int | None, typer.Option(help="Replay the trace N times back to back.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    prefix_caching: Annotated[
        bool | None,
        typer.Option(
            "--prefix-caching/--no-prefix-caching",
            help="Automatic prefix caching in every engine. [default: on]",
        ),
    ] = None,
    cpu_kv_gb: Annotated[
        float | None,
        typer.Option(help="A CPU tier for the prefix cache per instance, GiB. [default: 0]"),
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Simulate a cluster serving a workload. Without options: the Azure conversation trace
    (19,366 requests) on two Llama-2-7B A100 engines with vLLM-style FCFS."""
    from hermes.policies.registry import check_ranking
    from hermes.sim.build import simulate
    from hermes.workloads.request_traces import TraceFormatError

    given = {
        "model": model,
        "gpu": gpu,
        "tp": tp,
        "count": instances,
        "policy": policy,
        "router": router,
        "max_model_len": max_model_len,
        "seed": seed,
        "enable_prefix_caching": prefix_caching,
        "cpu_kv_gb": cpu_kv_gb,
    }
    if trace is not None and not trace.is_file():
        raise fail(f"--trace: {trace}: no such file")
    cfg = _sim_config(
        config, {k: v for k, v in given.items() if v is not None}, trace, limit, repeat
    )
    try:
        check_ranking(cfg.policy)
        with fraction("simulating", quiet) as done:
            results = simulate(cfg, done)
    except OSError as e:  # a trace or run file the config names, unreadable
        raise fail(os_error(e)) from None
    except (ValueError, TraceFormatError, RunFormatError) as e:
        raise fail(str(e)) from None
    _print_sim(results)
    if json_out is not None:
        write_json(json_out, results)


def _ms(d: Any) -> str:
    if not d or d.get("mean") is None:
        return "-"
    return " / ".join(f"{1e3 * d[k]:.1f}" for k in ("mean", "p50", "p90", "p99"))


def _s(d: Any) -> str:
    if not d or d.get("mean") is None:
        return "-"
    return " / ".join(f"{d[k]:.2f}" for k in ("mean", "p50", "p90", "p99"))


def _print_sim(r: dict[str, Any]) -> None:
    table = Table(title="simulation", show_header=True)
    table.add_column("metric")
    table.add_column("value")
    table.add_row(
        "requests", f"{r['requests']} ({r['completed']} completed, {r['rejected']} rejected)"
    )
    table.add_row("TTFT ms (mean / p50 / p90 / p99)", _ms(r["ttft"]))
    table.add_row("TPOT ms", _ms(r["tpot"]))
    table.add_row("ITL ms", _ms(r["itl"]))
    table.add_row("end-to-end s", _s(r["e2e"]))
    table.add_row("preemptions", str(r["preemptions"]))
    if "apps" in r:
        a = r["apps"]
        table.add_row(
            "applications", f"{a['apps']} ({a['completed']} completed, {a['failed']} failed)"
        )
        table.add_row("completion time s", _s(a["act"]))
    attainment = r.get("slo_attainment")
    if isinstance(attainment, dict):  # per SLO class, with request streams
        for cls, share in attainment.items():
            table.add_row(
                f"SLO attainment, {cls}", "-" if share is None else f"{100 * share:.1f} %"
            )
    elif attainment is not None:
        table.add_row("SLO attainment", f"{100 * attainment:.1f} %")
    pc = r.get("prefix_cache") or {}
    if pc.get("hit_rate") is not None:
        table.add_row("prefix cache hit rate", f"{100 * pc['hit_rate']:.1f} % of prompt tokens")
    for name, st in r.get("streams", {}).items():
        table.add_row(f"stream {name} ({st['slo_class']}): TTFT ms", _ms(st["ttft"]))
    if r.get("shared_gpus"):
        table.add_row("model swaps", str(r["model_swaps"]))
    table.add_row("simulated / wall s", f"{r['makespan_s']:.0f} / {r['wall_s']:.2f}")
    out.print(table)
