"""The commands about applications: `generate` runs from templates, `learn` PDGraphs from
runs, `inspect` them, and the `demo` that does all three."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from hermes.cli.common import fail, os_error, out, writable
from hermes.core.demand_sampler import DemandModel
from hermes.core.pdgraph import PDGraphFormatError, learn
from hermes.core.pdgraph_summary import summarize
from hermes.core.runs import AppRun
from hermes.workloads.pdgraph_files import load_pdgraphs, save_pdgraphs
from hermes.workloads.run_files import write_runs


def generate(
    app_name: Annotated[
        str, typer.Argument(metavar="APP", help="Application template: {applications}.")
    ],
    runs: Annotated[int, typer.Option("--runs", min=1, help="How many runs.")] = 100,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    output: Annotated[Path, typer.Option("-o", "--output", help="Runs file (JSON Lines).")] = Path(
        "runs.jsonl"
    ),
) -> None:
    """Generate application runs (format v1) from a built-in template."""
    from hermes.workloads.templates import TEMPLATE_NAMES, generate_runs

    if app_name not in TEMPLATE_NAMES:
        raise fail(f"unknown application {app_name!r}; known: {', '.join(TEMPLATE_NAMES)}")
    writable(output, "-o")
    try:
        n = write_runs(output, generate_runs(app_name, runs, seed))
    except OSError as e:
        raise fail(f"-o: {os_error(e, output)}") from None
    out.print(f"wrote {n} runs of {app_name} to {output}")


def learn_cmd(
    run_files: Annotated[
        list[Path],
        typer.Argument(
            metavar="RUNS...",
            help="Run files, folders of them (every *.jsonl), or gateway run stores (their "
            "finished runs).",
        ),
    ],
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
    """Learn one PDGraph per application type found in the run files or run stores."""
    from hermes.cli.runs import read_sources

    writable(output, "-o")
    if store is not None and any(_same_file(store, p) for p in run_files):
        raise fail(f"--store: {store} is also an input; its runs are in it already")
    runs = read_sources(run_files)
    if not runs:
        raise fail("the run files hold no runs")
    try:
        graphs = learn(runs, window=window)
    except ValueError as e:
        raise fail(str(e)) from None
    # The store first: a bad store path fails the command before anything is written.
    held = None if store is None else _seed_store(store, runs)
    try:
        save_pdgraphs(output, graphs)
    except OSError as e:
        raise fail(f"-o: {os_error(e, output)}") from None
    counts = ", ".join(f"{a} ({g.runs_seen} runs)" for a, g in sorted(graphs.items()))
    out.print(f"learned {len(graphs)} PDGraphs to {output}: {counts}")
    if held is not None:
        out.print(f"added {len(runs)} runs to {store}, which now holds {held}")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:  # one of them does not exist
        return False


def _seed_store(path: Path, runs: list[AppRun]) -> int:
    """Append `runs` to the gateway's run store at `path`, created if needed; how many runs
    it holds now."""
    import sqlite3

    from hermes.gateway.run_store import RunStore

    try:
        store = RunStore(path)
    except ValueError as e:  # not an SQLite file, a directory, a folder that cannot be made
        raise fail(f"--store: {e}") from None
    try:
        store.add(runs)
        return store.count()
    except sqlite3.DatabaseError as e:  # e.g. a read-only file
        raise fail(f"--store: {path}: not a usable run store: {e}") from None
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


def inspect(
    pdgraphs: Annotated[Path, typer.Argument(help="PDGraphs file written by 'hermes learn'.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for the demand quantiles.")] = 0,
) -> None:
    """Print each application's stages, transitions and demand quantiles."""
    if not pdgraphs.is_file():
        raise fail(f"{pdgraphs}: no such file")
    try:
        graphs = load_pdgraphs(pdgraphs)
    except PDGraphFormatError as e:
        raise fail(str(e)) from None
    summaries = {a: summarize(DemandModel(g), seed=seed) for a, g in sorted(graphs.items())}
    if as_json:
        json.dump(summaries, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    for s in summaries.values():
        _print_summary(s)


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
