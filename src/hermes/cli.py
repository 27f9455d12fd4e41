"""The ``hermes`` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hermes.core.demand_sampler import DemandModel
from hermes.core.pdgraph import PDGraphFormatError, learn
from hermes.core.pdgraph_summary import summarize
from hermes.core.runs import AppRun, RunFormatError
from hermes.workloads.pdgraph_files import load_pdgraphs, save_pdgraphs
from hermes.workloads.run_files import read_runs, write_runs

app = typer.Typer(
    help="Hermes: application-aware scheduling for LLM serving.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True)


def _fail(message: str) -> typer.Exit:
    # escape: a message quotes paths and values, whose brackets are not markup.
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


def _read_all(paths: list[Path]) -> list[AppRun]:
    runs: list[AppRun] = []
    for p in paths:
        if not p.is_file():
            raise _fail(f"{p}: no such file")
        try:
            runs.extend(read_runs(p))
        except RunFormatError as e:
            raise _fail(str(e)) from None
    return runs


@app.command()
def generate(
    app_name: Annotated[str, typer.Argument(metavar="APP", help="Application template name.")],
    runs: Annotated[int, typer.Option("--runs", min=1, help="How many runs.")] = 100,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    output: Annotated[Path, typer.Option("-o", "--output", help="Runs file (JSON Lines).")] = Path(
        "runs.jsonl"
    ),
) -> None:
    """Generate application runs (format v1) from a built-in template."""
    from hermes.workloads.templates import TEMPLATE_NAMES, generate_runs

    if app_name not in TEMPLATE_NAMES:
        raise _fail(f"unknown application {app_name!r}; known: {', '.join(TEMPLATE_NAMES)}")
    n = write_runs(output, generate_runs(app_name, runs, seed))
    out.print(f"wrote {n} runs of {app_name} to {output}")


@app.command("learn")
def learn_cmd(
    run_files: Annotated[list[Path], typer.Argument(metavar="RUNS...", help="Run files.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="PDGraphs file (JSON).")] = Path(
        "pdgraphs.json"
    ),
    window: Annotated[int, typer.Option(min=1, help="Sliding-window size per node.")] = 1000,
    store: Annotated[
        Path | None,
        typer.Option(
            "--store",
            metavar="PATH",
            help="Also append the runs to this gateway run store (SQLite), created if needed.",
        ),
    ] = None,
) -> None:
    """Learn one PDGraph per application type found in the run files."""
    runs = _read_all(run_files)
    if not runs:
        raise _fail("the run files hold no runs")
    try:
        graphs = learn(runs, window=window)
    except ValueError as e:
        raise _fail(str(e)) from None
    # The store first: a bad store path fails the command before anything is written.
    held = None if store is None else _seed_store(store, runs)
    save_pdgraphs(output, graphs)
    counts = ", ".join(f"{a} ({g.runs_seen} runs)" for a, g in sorted(graphs.items()))
    out.print(f"learned {len(graphs)} PDGraphs to {output}: {counts}")
    if held is not None:
        out.print(f"added {len(runs)} runs to {store}, which now holds {held}")


def _seed_store(path: Path, runs: list[AppRun]) -> int:
    """Append `runs` to the gateway's run store at `path`, created if needed; how many runs
    it holds now."""
    import sqlite3

    from hermes.gateway.run_store import RunStore

    try:
        store = RunStore(path)
    except ValueError as e:  # not an SQLite file, or a directory
        raise _fail(str(e)) from None
    except OSError as e:  # its folder cannot be made: a file in the way, no permission
        raise _fail(f"{path}: not a usable run store: {e}") from None
    try:
        store.add(runs)
        return store.count()
    except sqlite3.DatabaseError as e:  # e.g. a read-only file
        raise _fail(f"{path}: not a usable run store: {e}") from None
    finally:
        store.close()


def _fmt(stats: dict[str, float], keys: tuple[str, ...] = ("mean", "p50", "p90")) -> str:
    if not stats:
        return "-"
    return " / ".join(f"{stats[k]:.3g}" for k in keys)


def _print_summary(s: dict[str, Any]) -> None:
    out.rule(f"[bold]{s['app']}[/] · {s['runs_seen']} runs")
    nodes = Table(title="stages", title_justify="left", expand=False)
    nodes.add_column("stage", no_wrap=True)
    for col in (
        "kind (backend)",
        "fan-out mean/max",
        "prompt tok mean/p50/p90",
        "completion tok mean/p50/p90",
        "tool s mean/p50/p90",
    ):
        nodes.add_column(col)
    for name, n in s["nodes"].items():
        nodes.add_row(
            name,
            f"{n['kind']} ({n['backend']})",
            _fmt(n["fanout"], ("mean", "max")),
            _fmt(n.get("prompt_tokens", {})),
            _fmt(n.get("completion_tokens", {})),
            _fmt(n.get("duration_s", {})),
        )
    out.print(nodes)
    edges = Table(title="transitions", title_justify="left")
    edges.add_column("from")
    edges.add_column("to (probability)")
    for src, dsts in s["edges"].items():
        edges.add_row(src, ", ".join(f"{d} ({p:.3f})" for d, p in dsts.items()))
    out.print(edges)
    d = s["demand_s"]
    out.print(
        "total demand (s, linear cost): "
        + ", ".join(f"{k} {d[k]:.3g}" for k in ("mean", "p10", "p50", "p90", "p99"))
    )
    for c in s["correlations"]:
        out.print(
            f"refines {c['target']} from {c['source']} "
            f"({c['source_feature']}→{c['target_feature']}, ρ={c['rho']:.2f}, {c['runs']} runs)"
        )


@app.command()
def inspect(
    pdgraphs: Annotated[Path, typer.Argument(help="PDGraphs file written by 'hermes learn'.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for the demand quantiles.")] = 0,
) -> None:
    """Print each application's stages, transitions and demand quantiles."""
    if not pdgraphs.is_file():
        raise _fail(f"{pdgraphs}: no such file")
    try:
        graphs = load_pdgraphs(pdgraphs)
    except PDGraphFormatError as e:
        raise _fail(str(e)) from None
    summaries = {a: summarize(DemandModel(g), seed=seed) for a, g in sorted(graphs.items())}
    if as_json:
        json.dump(summaries, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    for s in summaries.values():
        _print_summary(s)


@app.command()
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Where runs and PDGraphs go.")] = Path(
        "out/demo"
    ),
    runs: Annotated[int, typer.Option(min=1, help="Runs per application.")] = 200,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Generate runs of the six applications, learn their PDGraphs and inspect them."""
    from hermes.workloads.templates import TEMPLATE_NAMES, generate_runs

    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for i, name in enumerate(TEMPLATE_NAMES):
        path = out_dir / f"{name}.jsonl"
        write_runs(path, generate_runs(name, runs, seed + i))
        files.append(path)
    graphs_path = out_dir / "pdgraphs.json"
    learn_cmd(files, graphs_path, 1000)
    inspect(graphs_path, False, seed)


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
        raise _fail(str(e)) from None
    data = base.model_dump(mode="python", exclude_unset=False)
    group = {k: v for k, v in overrides.items() if k in ("model", "gpu", "tp", "count")}
    if "max_model_len" in overrides:
        group["max_model_len"] = overrides["max_model_len"]
    if group:
        data["instances"][0].update(group)
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
        raise _fail(str(e)) from None


@app.command()
def sim(
    config: Annotated[
        Path | None, typer.Option("--config", help="Simulation config (YAML).")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results here.")] = None,
    trace: Annotated[
        Path | None, typer.Option(help="Request trace (Azure CSV or Mooncake JSONL).")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model of the first instance group.")] = None,
    gpu: Annotated[str | None, typer.Option(help="GPU of the first instance group.")] = None,
    tp: Annotated[int | None, typer.Option(help="Tensor-parallel degree.")] = None,
    instances: Annotated[int | None, typer.Option(help="Replicas in the first group.")] = None,
    policy: Annotated[str | None, typer.Option(help="Scheduling policy.")] = None,
    router: Annotated[str | None, typer.Option(help="Router between replicas.")] = None,
    max_model_len: Annotated[int | None, typer.Option(help="Longest prompt + output.")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N trace requests.")] = None,
    repeat: Annotated[
        int | None, typer.Option(help="Replay the trace N times back to back.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
) -> None:
    """Simulate a cluster serving a workload. Without options: the Azure conversation trace
    (19,366 requests) on two Llama-2-7B A100 engines with vLLM-style FCFS."""
    from rich.progress import Progress

    from hermes.policies.registry import make_policy
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
    }
    cfg = _sim_config(
        config, {k: v for k, v in given.items() if v is not None}, trace, limit, repeat
    )
    try:
        make_policy(cfg.policy)
        if err.is_terminal:
            with Progress(console=err, transient=True) as bar:
                task = bar.add_task("simulating", total=1.0)
                results = simulate(cfg, lambda f: bar.update(task, completed=f))
        else:
            results = simulate(cfg)
    except (ValueError, OSError, TraceFormatError, RunFormatError) as e:
        raise _fail(str(e)) from None
    _print_sim(results)
    if json_out is not None:
        _write_json(json_out, results)


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    out.print(f"results written to {escape(str(path))}")


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
    if r.get("slo_attainment") is not None:
        table.add_row("SLO attainment", f"{100 * r['slo_attainment']:.1f} %")
    table.add_row("simulated / wall s", f"{r['makespan_s']:.0f} / {r['wall_s']:.2f}")
    out.print(table)


@app.command()
def serve(
    config: Annotated[Path | None, typer.Option("--config", help="Gateway config (YAML).")] = None,
    emulate: Annotated[
        bool, typer.Option("--emulate", help="Serve emulated engines: no GPU, no other server.")
    ] = False,
    host: Annotated[str | None, typer.Option(help="Listen address.")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port.")] = None,
    time_scale: Annotated[
        float, typer.Option(min=0.001, help="With --emulate: model time per wall second.")
    ] = 1.0,
) -> None:
    """The gateway: an OpenAI-compatible endpoint that schedules applications' calls in front
    of inference engines. --emulate runs one emulated Llama-2-7B A100 engine in-process."""
    import asyncio
    import signal

    from hermes.gateway.config import emulated_default, load_gateway_config
    from hermes.gateway.serve import serve_until_stopped
    from hermes.sim.config import ConfigError

    if (config is None) == (not emulate):
        raise _fail("give --config FILE or --emulate (not both)")
    try:
        cfg = (
            load_gateway_config(config)
            if config is not None
            else emulated_default(time_scale=time_scale)
        )
    except ConfigError as e:
        raise _fail(str(e)) from None
    update: dict[str, Any] = {}
    if host is not None:
        update["host"] = host
    if port is not None:
        update["port"] = port
    cfg = cfg.model_copy(update=update)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        err.print(
            f"hermes gateway on http://{cfg.host}:{cfg.port} (policy {cfg.policy}); Ctrl-C stops"
        )
        await serve_until_stopped(cfg, stop)

    try:
        _run_fast(main())
    except (OSError, ValueError) as e:
        raise _fail(str(e)) from None


def _run_fast(coro: Any) -> None:
    """Run `coro` on uvloop when it is installed (`pip install 'hermes[fast]'`), else on
    asyncio's own loop."""
    import asyncio

    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


@app.command()
def replay(
    run_files: Annotated[list[Path], typer.Argument(metavar="RUNS...", help="Run files.")],
    target: Annotated[str, typer.Option(help="The gateway's base URL, e.g. http://host:8080.")],
    rate: Annotated[float, typer.Option(help="Applications per second.")],
    apps: Annotated[
        int | None,
        typer.Option(min=1, help="Applications drawn with replacement. (default: each run once)"),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed (draws and arrivals).")] = 0,
    model: Annotated[
        str | None,
        typer.Option(help="Model for every call. (default: the stage's, else the gateway's first)"),
    ] = None,
    api_key: Annotated[str | None, typer.Option(help="The gateway's API key.")] = None,
    admin_key: Annotated[
        str | None, typer.Option(help="Key for the app events. (default: the API key)")
    ] = None,
    time_scale: Annotated[
        float,
        typer.Option(help="Wall seconds per recorded second (tools, deadlines)."),
    ] = 1.0,
    timeout: Annotated[float, typer.Option(help="Per request, s.")] = 600.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results here.")] = None,
) -> None:
    """Drive recorded runs through a gateway as their applications would (Poisson arrivals,
    stages in order, an LLM stage's calls in parallel) and report completion times."""
    import asyncio

    from hermes.replay import ReplayError, ReplaySettings
    from hermes.replay import replay as run_replay

    runs = _read_all(run_files)
    try:
        settings = ReplaySettings(
            target, rate, apps, seed, model, api_key, admin_key, time_scale, timeout_s=timeout
        )
        with err.status(f"replaying through {escape(target)}"):
            result = asyncio.run(run_replay(runs, settings))
    except ReplayError as e:
        raise _fail(str(e)) from None
    result["config"]["files"] = [str(p) for p in run_files]
    _print_recorded({"policies": {"replay": result}})
    if result["errors"]:
        errors = ", ".join(f"{k}: {v}" for k, v in result["errors"].items())
        out.print(f"errors by status: {escape(errors)}")
    if json_out is not None:
        _write_json(json_out, result)
    if result["failed"]:
        err.print(f"[bold red]{result['failed']} of {result['apps']} applications failed[/]")
        raise typer.Exit(1)


bench = typer.Typer(
    help="Reproduce the papers' experiments on the simulator.", no_args_is_help=True
)
app.add_typer(bench, name="bench")


def _floats(text: str, option: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise _fail(f"{option}: expected comma-separated numbers, got {text!r}") from None
    if not values or any(not v > 0 for v in values):
        raise _fail(f"{option}: expected positive numbers, got {text!r}")
    return values


def _weights(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            w = float(value)
        except ValueError:
            w = -1.0
        if not sep or not name.strip() or not w >= 0:
            raise _fail(f"--weights: expected APP=WEIGHT,... with weights >= 0, got {part!r}")
        out[name.strip()] = w
    return out


@bench.command("hermes")
def bench_hermes(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Directory for results.json, report.md and plots.")
    ] = Path("bench-out/hermes"),
    runs: Annotated[
        list[Path] | None,
        typer.Option("--runs", help="Recorded run files (format v1); repeat for several."),
    ] = None,
    train_fraction: Annotated[
        float, typer.Option(help="With --runs: share of each type's runs that teach its PDGraph.")
    ] = 0.5,
    intensity: Annotated[
        str | None,
        typer.Option(
            help="Load(s): k packs the applications into 30/k minutes. [default: "
            "1,1.5,2,2.5,3; with --runs: 3]"
        ),
    ] = None,
    policies: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated policies. [default: all seven; with --runs: vllm,gittins,oracle]"
        ),
    ] = None,
    apps: Annotated[int, typer.Option(min=1, help="Applications per experiment.")] = 200,
    weights: Annotated[
        str | None, typer.Option(help="With --runs: APP=WEIGHT,... instead of run counts.")
    ] = None,
    max_num_seqs: Annotated[
        str | None,
        typer.Option(help="Engine batch limit(s). [default: 256,8; with --runs: 256]"),
    ] = None,
    workloads: Annotated[
        int, typer.Option(min=1, help="Workload draws pooled in the load sweep.")
    ] = 3,
    overhead_apps: Annotated[
        str, typer.Option(help="Active applications per timed ranking round.")
    ] = "1,10,100,1000,10000",
    model: Annotated[str, typer.Option(help="Model of the one engine.")] = "llama-2-7b",
    gpu: Annotated[str, typer.Option(help="GPU of the one engine.")] = "a100",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="With --runs: write the summary here.")
    ] = None,
) -> None:
    """The Hermes paper's experiments: completion time by policy and load, deadlines,
    prewarming, ablations and ranking overhead. With --runs: policies on recorded runs."""
    from hermes.experiments.common import EngineSpec
    from hermes.policies.registry import policy_names

    chosen = (
        None if policies is None else tuple(p.strip() for p in policies.split(",") if p.strip())
    )
    for p in chosen or ():
        if p not in policy_names():
            raise _fail(f"--policies: unknown policy {p!r}; known: {', '.join(policy_names())}")
    limits = (
        tuple(int(x) for x in _floats(max_num_seqs, "--max-num-seqs")) if max_num_seqs else None
    )
    loads = _floats(intensity, "--intensity") if intensity is not None else None
    try:
        from hermes.profiles import load_profile

        load_profile(model, gpu, None)
    except (ValueError, OSError) as e:
        raise _fail(str(e)) from None
    if runs:
        from hermes.experiments.recorded_runs import RecordedSettings, recorded_bench

        if loads is not None and len(loads) != 1:
            raise _fail("--intensity: give one load with --runs")
        if limits is not None and len(limits) != 1:
            raise _fail("--max-num-seqs: give one batch limit with --runs")
        try:
            settings = RecordedSettings(
                train_fraction=train_fraction,
                intensity=loads[0] if loads else 3.0,
                policies=chosen or ("vllm", "gittins", "oracle"),
                seed=seed,
                apps=apps,
                weights=_weights(weights) if weights else None,
                engine=EngineSpec(model, gpu, 1, limits[0] if limits else 256),
            )
            with err.status("simulating"):
                result = recorded_bench(_read_all(runs), settings)
        except ValueError as e:
            raise _fail(str(e)) from None
        _print_recorded(result)
        if json_out is not None:
            _write_json(json_out, result)
        return
    if weights is not None:
        raise _fail("--weights applies to --runs only (the paper's mix is fixed)")
    from hermes.experiments import hermes_paper, report

    base = hermes_paper.PaperSettings()
    kwargs: dict[str, Any] = {"apps": apps, "model": model, "gpu": gpu, "seed": seed}
    kwargs["workloads"] = workloads
    kwargs["overhead_apps"] = tuple(int(x) for x in _floats(overhead_apps, "--overhead-apps"))
    if loads is not None:
        kwargs["intensities"] = loads
        kwargs["headline_intensity"] = max(loads)
    if chosen is not None:
        kwargs["policies"] = chosen
    if limits is not None:
        kwargs["batch_limits"] = limits
    settings_p = hermes_paper.PaperSettings(**{**hermes_paper._settings_dict(base), **kwargs})
    try:
        with err.status("starting") as status:
            results = hermes_paper.run_all(settings_p, lambda m: status.update(escape(m)))
    except ValueError as e:
        raise _fail(str(e)) from None
    paths = report.write(results, out_dir)
    _print_targets(results)
    out.print(f"wrote {', '.join(escape(str(p)) for p in paths)}")


@bench.command("bros")
def bench_bros(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Directory for results.json, report.md and plots.")
    ] = Path("bench-out/bros"),
    quick: Annotated[
        bool, typer.Option("--quick", help="A short run at two loads (a smoke test).")
    ] = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    policies: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated policies. [default: vllm,vllm-priority,split,bros,bros-nobidir]"
        ),
    ] = None,
    duration_s: Annotated[
        float | None,
        typer.Option(
            "--duration-s", help="Simulated seconds of RT arrivals. [default: 600; --quick: 60]"
        ),
    ] = None,
    slo_margin: Annotated[
        float,
        typer.Option(
            "--slo-margin",
            min=0.0,
            max=0.95,
            help="BROS aims each RT token this fraction of its SLO early: higher trades BE "
            "throughput for RT latency.",
        ),
    ] = 0.1,
) -> None:
    """The BROS paper's experiment: real-time and best-effort requests co-served on one
    engine, by policy and RT load, on Llama-2-7B (2 × A100) and Llama-2-70B TP4 (8 × A100)."""
    from hermes.experiments import bros_paper, bros_report
    from hermes.experiments.bros_sim import POLICIES

    overrides: dict[str, Any] = {"seed": seed, "slo_margin": slo_margin}
    if policies is not None:
        chosen = tuple(p.strip() for p in policies.split(",") if p.strip())
        for p in chosen:
            if p not in POLICIES:
                raise _fail(f"--policies: unknown policy {p!r}; known: {', '.join(POLICIES)}")
        if not chosen:
            raise _fail("--policies: name at least one policy")
        overrides["policies"] = chosen
    if duration_s is not None:
        if not duration_s > 0:
            raise _fail(f"--duration-s: expected a positive number, got {duration_s}")
        base = bros_paper.quick_settings() if quick else bros_paper.BrosSettings()
        # Keep the warm-up's share of the run.
        overrides["duration_s"] = duration_s
        overrides["warmup_s"] = duration_s * base.warmup_s / base.duration_s
    try:
        settings = (
            bros_paper.quick_settings(**overrides)
            if quick
            else bros_paper.BrosSettings(**overrides)
        )
        with err.status("starting") as status:
            results = bros_paper.run_all(settings, lambda m: status.update(escape(m)))
    except ValueError as e:
        raise _fail(str(e)) from None
    paths = bros_report.write(results, out_dir)
    _print_targets(results, "deployment", "BROS")
    out.print(f"wrote {', '.join(escape(str(p)) for p in paths)}")


@bench.command("qlm")
def bench_qlm(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Directory for results.json, report.md and plots.")
    ] = Path("bench-out/qlm"),
    quick: Annotated[bool, typer.Option(help="A short run at two loads (a smoke test).")] = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    policies: Annotated[
        str | None,
        typer.Option(help="Comma-separated policies. [default: vllm,edf,qlm-noplan,qlm]"),
    ] = None,
    workloads: Annotated[
        str | None, typer.Option(help="Comma-separated workloads. [default: WA,WB,WC]")
    ] = None,
    instances: Annotated[int, typer.Option(min=1, max=64, help="Instances (A100).")] = 4,
) -> None:
    """The QLM paper's workloads (WA: interactive and batch on one model; WB: three models,
    batch; WC: with mega-prompts) under vllm, edf, qlm-noplan and qlm, over bursty load."""
    from hermes.experiments import qlm_paper, qlm_report

    overrides: dict[str, Any] = {"seed": seed, "instances": instances}
    for option, value, known in (
        ("policies", policies, qlm_paper.POLICIES),
        ("workloads", workloads, qlm_paper.WORKLOADS),
    ):
        if value is None:
            continue
        chosen = tuple(x.strip() for x in value.split(",") if x.strip())
        bad = [x for x in chosen if x not in known]
        if bad or not chosen:
            raise _fail(f"--{option}: expected some of {', '.join(known)}, got {value!r}")
        overrides[option] = chosen
    settings = (
        qlm_paper.quick_settings(**overrides) if quick else qlm_paper.QlmSettings(**overrides)
    )
    with err.status("starting") as status:
        results = qlm_paper.run_all(settings, lambda m: status.update(escape(m)))
    paths = qlm_report.write(results, out_dir)
    _print_targets(results, "workload", "QLM")
    out.print("wrote " + ", ".join(str(p) for p in paths))


def _print_recorded(r: dict[str, Any]) -> None:
    table = Table(title="application completion time, s")
    for col in ("policy", "apps", "mean", "p50", "p95", "p99", "deadlines met"):
        table.add_column(col)
    for name, row in r["policies"].items():
        dsr = row["dsr"]
        table.add_row(
            name,
            str(row["apps"]),
            *(
                f"{row[k]:.2f}" if row[k] is not None else "-"
                for k in ("act_mean", "act_p50", "act_p95", "act_p99")
            ),
            "-" if dsr is None else f"{100 * dsr:.1f} %",
        )
    out.print(table)


def _print_targets(r: dict[str, Any], group: str | None = None, name: str = "") -> None:
    """The run's targets as a table; `group` names an extra first column."""
    table = Table(title=f"{name + ' ' if name else ''}targets ({r['wall_s']:.0f} s)")
    for col in ([group] if group else []) + ["target", "measured", "goal", "met"]:
        table.add_column(col)
    for t in r["targets"]:
        v = t["measured"]
        met = "-" if t["met"] is None else ("yes" if t["met"] else "[red]no[/]")
        cells = [escape(t["target"]), "-" if v is None else f"{v:.3f}", t["goal"], met]
        table.add_row(*([escape(str(t[group]))] if group else []), *cells)
    out.print(table)


def main() -> None:  # pragma: no cover - console entry point
    app()
