"""`hermes bench`: the papers' experiments on the simulator (Hermes, BROS, QLM)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from hermes.cli.common import (
    err,
    fail,
    floats,
    out,
    print_recorded,
    print_targets,
    read_all,
    writable_dir,
    write_json,
    written,
)
from hermes.cli.progress import Quiet, steps
from hermes.cli.sweep_options import RayAddress, Workers, checked_ray_address

QuickHermes = Annotated[
    bool,
    typer.Option(
        "--quick",
        help="A short run (about a minute): 40 applications at the full run's arrival rate, "
        "one draw, max_num_seqs 8, every experiment but kv. Options given win.",
    ),
]


def _weights(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            w = float(value)
        except ValueError:
            w = -1.0
        if not sep or not name.strip() or not w >= 0:
            raise fail(f"--weights: expected APP=WEIGHT,... with weights >= 0, got {part!r}")
        out[name.strip()] = w
    return out


POLICIES_HELP = (
    "Comma-separated policies; a suffix '+auto' or '+N' puts an admission limit in front of "
    "the engine, the rest queued by rank (gittins+auto). [default: the nine of the load "
    "sweep; with --runs: vllm,gittins,gittins+auto,oracle]"
)


def bench_hermes(
    ctx: typer.Context,
    out_dir: Annotated[
        Path, typer.Option("--out", help="Directory for results.json, report.md and plots.")
    ] = Path("bench-out/hermes"),
    runs: Annotated[
        list[Path] | None,
        typer.Option(
            "--runs",
            help="Recorded run files (format v1), or folders of them (every *.jsonl); repeat "
            "the flag for several: --runs a.jsonl --runs b.jsonl.",
        ),
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
        typer.Option(help=POLICIES_HELP + " Policies: {policies}."),
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
    model: Annotated[str, typer.Option(help="Model of the one engine: {models}.")] = "llama-2-7b",
    gpu: Annotated[str, typer.Option(help="GPU of the one engine: {gpus}.")] = "a100",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="With --runs: write the summary here.")
    ] = None,
    experiments: Annotated[
        str | None,
        typer.Option(help="Comma-separated experiments to run, of {experiments}. [default: all]"),
    ] = None,
    workers: Workers = 1,
    ray_address: RayAddress = None,
    quick: QuickHermes = False,
    quiet: Quiet = False,
) -> None:
    """The Hermes paper's experiments: completion time by policy and load, deadlines,
    prewarming, ablations, ranking overhead, tool pools in policy order. With --runs: policies
    on recorded runs."""
    chosen = _ranking_policies(policies)
    named = _experiments(experiments)
    limits = tuple(int(x) for x in floats(max_num_seqs, "--max-num-seqs")) if max_num_seqs else None
    loads = floats(intensity, "--intensity") if intensity is not None else None
    _check_profile(model, gpu)
    if runs:
        _not_with_runs(named, workers, ray_address, quick)
        _bench_recorded(
            runs, train_fraction, loads, chosen, seed, apps, weights, (model, gpu), limits, json_out
        )
        return
    if weights is not None:
        raise fail("--weights applies to --runs only (the paper's mix is fixed)")
    kwargs: dict[str, Any] = {"apps": apps, "model": model, "gpu": gpu, "seed": seed}
    kwargs["workloads"] = workloads
    kwargs["overhead_apps"] = tuple(int(x) for x in floats(overhead_apps, "--overhead-apps"))
    kwargs.update(_given({"experiments": named, "policies": chosen, "batch_limits": limits}, loads))
    writable_dir(out_dir, "--out")
    kwargs = _quick(ctx, kwargs) if quick else kwargs
    _bench_paper(kwargs, out_dir, workers, checked_ray_address(ray_address), (quick, quiet))


def _given(given: dict[str, Any], loads: tuple[float, ...] | None) -> dict[str, Any]:
    """The paper's settings the command line gave (None: not given)."""
    out = {k: v for k, v in given.items() if v is not None}
    if loads is not None:
        out["intensities"] = loads
        out["headline_intensity"] = max(loads)
    return out


def _not_with_runs(
    named: tuple[str, ...] | None, workers: int, ray_address: str | None, quick: bool = False
) -> None:
    if quick:
        raise fail("--quick applies to the paper's experiments, not to --runs")
    if named is not None:
        raise fail("--experiments applies to the paper's experiments, not to --runs")
    if workers != 1 or ray_address is not None:
        raise fail("--workers and --ray-address apply to the paper's experiments, not to --runs")


def _check_profile(model: str, gpu: str) -> None:
    try:
        from hermes.profiles import load_profile

        load_profile(model, gpu, None)
    except (ValueError, OSError) as e:
        raise fail(str(e)) from None


def _experiments(text: str | None) -> tuple[str, ...] | None:
    """The comma-separated experiments named, each checked; None when not given."""
    if text is None:
        return None
    from hermes.experiments.hermes_paper import EXPERIMENTS

    chosen = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [x for x in chosen if x not in EXPERIMENTS]
    if bad or not chosen:
        raise fail(f"--experiments: expected some of {', '.join(EXPERIMENTS)}, got {text!r}")
    return tuple(dict.fromkeys(chosen))


def _ranking_policies(policies: str | None) -> tuple[str, ...] | None:
    """The comma-separated policies named, each checked; None when not given."""
    from hermes.policies.registry import check_ranking

    chosen = (
        None if policies is None else tuple(p.strip() for p in policies.split(",") if p.strip())
    )
    for p in chosen or ():
        try:
            check_ranking(p)
        except ValueError as e:
            raise fail(f"--policies: {e}") from None
    return chosen


def _bench_recorded(
    runs: list[Path],
    train_fraction: float,
    loads: tuple[float, ...] | None,
    chosen: tuple[str, ...] | None,
    seed: int,
    apps: int,
    weights: str | None,
    model_gpu: tuple[str, str],
    limits: tuple[int, ...] | None,
    json_out: Path | None,
) -> None:
    """`bench hermes --runs`: policies on recorded runs."""
    from hermes.experiments.common import EngineSpec
    from hermes.experiments.recorded_runs import RecordedSettings, recorded_bench

    if loads is not None and len(loads) != 1:
        raise fail("--intensity: give one load with --runs")
    if limits is not None and len(limits) != 1:
        raise fail("--max-num-seqs: give one batch limit with --runs")
    model, gpu = model_gpu
    try:
        settings = RecordedSettings(
            train_fraction=train_fraction,
            intensity=loads[0] if loads else 3.0,
            policies=chosen or ("vllm", "gittins", "gittins+auto", "oracle"),
            seed=seed,
            apps=apps,
            weights=_weights(weights) if weights else None,
            engine=EngineSpec(model, gpu, 1, limits[0] if limits else 256),
        )
        with err.status("simulating"):
            result = recorded_bench(read_all(runs), settings)
    except ValueError as e:
        raise fail(str(e)) from None
    print_recorded(result)
    if json_out is not None:
        write_json(json_out, result)


def _quick(ctx: typer.Context, kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs` over the quick size (`experiments.hermes_quick`): the options given on the
    command line win, those left at their defaults give way."""
    from hermes.experiments.hermes_quick import quick_overrides

    def defaulted(name: str) -> bool:
        source = ctx.get_parameter_source(name)
        return source is not None and source.name == "DEFAULT"

    left = {k for k in ("apps", "workloads", "overhead_apps") if defaulted(k)}
    return quick_overrides({k: v for k, v in kwargs.items() if k not in left})


def _bench_paper(
    kwargs: dict[str, Any],
    out_dir: Path,
    workers: int = 1,
    ray_address: str | None = None,
    quick_quiet: tuple[bool, bool] = (False, False),
) -> None:
    """`bench hermes`: the paper's experiments with `kwargs` over the default settings."""
    from hermes.experiments import hermes_paper, report

    base = hermes_paper.PaperSettings()
    settings = hermes_paper.PaperSettings(**{**hermes_paper._settings_dict(base), **kwargs})
    try:
        with steps("bench hermes", quick_quiet[1]) as step:
            results = hermes_paper.run_all(settings, step, workers, ray_address)
    except ValueError as e:
        raise fail(str(e)) from None
    if quick_quiet[0]:  # a quick run says so; a full one has no such key
        results["quick"] = True
    paths = written(lambda: report.write(results, out_dir))
    print_targets(results, name="quick run," if quick_quiet[0] else "")
    out.print(f"wrote {', '.join(escape(str(p)) for p in paths)}")


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
        typer.Option(help="Comma-separated policies, of {bros_policies}. [default: all]"),
    ] = None,
    duration_s: Annotated[
        float | None,
        typer.Option(
            "--duration-s", help="Simulated seconds of RT arrivals. [default: 600; --quick: 60]"
        ),
    ] = None,
    slo_margin: Annotated[
        float | None,
        typer.Option(
            "--slo-margin",
            min=0.0,
            max=0.95,
            help="BROS aims each RT token this fraction of its SLO early: higher trades BE "
            "throughput for RT latency. [default: adapted online to BE's share of the engine]",
        ),
    ] = None,
    workers: Workers = 1,
    ray_address: RayAddress = None,
    quiet: Quiet = False,
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
                raise fail(f"--policies: unknown policy {p!r}; known: {', '.join(POLICIES)}")
        if not chosen:
            raise fail("--policies: name at least one policy")
        overrides["policies"] = chosen
    if duration_s is not None:
        if not duration_s > 0:
            raise fail(f"--duration-s: expected a positive number, got {duration_s}")
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
        address = checked_ray_address(ray_address)
        writable_dir(out_dir, "--out")
        with steps("bench bros", quiet) as step:
            results = bros_paper.run_all(settings, step, workers, address)
    except ValueError as e:
        raise fail(str(e)) from None
    if quick:
        results["quick"] = True
    paths = written(lambda: bros_report.write(results, out_dir))
    print_targets(results, "deployment", "BROS")
    out.print(f"wrote {', '.join(escape(str(p)) for p in paths)}")


def bench_qlm(
    out_dir: Annotated[
        Path, typer.Option("--out", help="Directory for results.json, report.md and plots.")
    ] = Path("bench-out/qlm"),
    quick: Annotated[bool, typer.Option(help="A short run at two loads (a smoke test).")] = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    policies: Annotated[
        str | None,
        typer.Option(help="Comma-separated policies, of {qlm_policies}. [default: all]"),
    ] = None,
    workloads: Annotated[
        str | None,
        typer.Option(help="Comma-separated workloads, of {qlm_workloads}. [default: all]"),
    ] = None,
    instances: Annotated[int, typer.Option(min=1, max=64, help="Instances (A100).")] = 4,
    workers: Workers = 1,
    ray_address: RayAddress = None,
    quiet: Quiet = False,
) -> None:
    """The QLM paper's workloads (WA: interactive and batch on one model; WB: three models,
    batch; WC: with mega-prompts) under vllm, vllm-shared, edf, qlm-noplan and qlm, over bursty
    load."""
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
            raise fail(f"--{option}: expected some of {', '.join(known)}, got {value!r}")
        overrides[option] = chosen
    settings = (
        qlm_paper.quick_settings(**overrides) if quick else qlm_paper.QlmSettings(**overrides)
    )
    address = checked_ray_address(ray_address)
    writable_dir(out_dir, "--out")
    with steps("bench qlm", quiet) as step:
        results = qlm_paper.run_all(settings, step, workers, address)
    if quick:
        results["quick"] = True
    paths = written(lambda: qlm_report.write(results, out_dir))
    print_targets(results, "workload", "QLM")
    out.print("wrote " + ", ".join(str(p) for p in paths))
