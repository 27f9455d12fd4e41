"""Sweeps of independent simulations in parallel (`experiments.parallel`): results in job order
whatever the number of workers, shared data sent once, failures raised, progress from the
parent; the Hermes bench gives the same results on one worker, two, and a local Ray."""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hermes.cli import app
from hermes.experiments import hermes_paper as hp
from hermes.experiments.parallel import Sweep, pmap

runner = CliRunner()


def _spin(job: int, shared: int | None) -> tuple[int, int | None, int]:
    """Early jobs take longest (so workers finish them out of order)."""
    total = 0
    for i in range((8 - job) * 20_000):
        total += i % 7
    return job * job, shared, os.getpid()


def _fail_on_three(job: int, _: object) -> int:
    if job == 3:
        raise ValueError("job 3 fails")
    return job


@pytest.mark.parametrize("workers", [1, 2])
def test_results_come_in_job_order_with_the_shared_data(workers: int) -> None:
    finished: list[int] = []
    out = pmap(_spin, range(8), workers, shared=41, on_done=lambda i, _: finished.append(i))
    assert [square for square, _, _ in out] == [j * j for j in range(8)]
    assert {shared for _, shared, _ in out} == {41}
    assert sorted(finished) == list(range(8))  # each job reported once, in the parent
    pids = {pid for _, _, pid in out}
    assert (pids == {os.getpid()}) == (workers == 1)


def test_a_failing_job_fails_the_sweep() -> None:
    with pytest.raises(ValueError, match="job 3 fails"):
        pmap(_fail_on_three, list(range(6)), 2)


def test_studies_overlap_on_workers_but_those_alone_run_first() -> None:
    started: list[str] = []

    def study(name: str, sweep: Sweep[None]) -> list[int]:
        started.append(name)
        return [square for square, _, _ in sweep.map(_spin, [1, 2, 3])]

    with Sweep[None](2) as sweep:
        names = ("a", "timed", "b", "c")
        out = sweep.studies({n: partial(study, n, sweep) for n in names}, alone=("timed",))
    assert list(out) == list(names)  # in the order given, whichever ended first
    assert all(v == [1, 4, 9] for v in out.values())
    assert started[0] == "timed"
    assert sorted(started[1:]) == ["a", "b", "c"]


def test_bad_pool_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="workers: expected 0"):
        Sweep(-1)
    with pytest.raises(ValueError, match="ray_address"):
        Sweep(2, " ")


def _small() -> hp.PaperSettings:
    return hp.PaperSettings(
        apps=8,
        intensities=(3.0,),
        workloads=2,
        policies=("vllm", "gittins"),
        batch_limits=(8,),
        deadline_factors=(1.5,),
        prewarm_policies=("none", "pdgraph"),
        keepalive_ttls_s=(1.0,),
        tools_instances=(1,),
        experiments=("load", "deadlines", "prewarm", "ablation", "tools"),
    )


def _without_wall_times(results: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in results.items() if k != "wall_s"}


def test_the_hermes_bench_gives_the_same_results_on_one_worker_and_two() -> None:
    heard: list[str] = []
    one = hp.run_all(_small(), heard.append)
    two = hp.run_all(_small(), workers=2)
    assert _without_wall_times(one) == _without_wall_times(two)
    # Every simulation reported once: load (2 standalone, 4), deadlines (1 standalone, 3),
    # prewarm 3, ablation 5, tools 16 (separate and shared pools, two draws, FIFO, the
    # policy's and the clairvoyant order, and unlimited pools).
    assert len(heard) == 2 + 4 + 1 + 3 + 3 + 5 + 16
    assert any(m.startswith("load: max_num_seqs 8, intensity 3.0, gittins") for m in heard)


def test_the_cli_takes_workers_and_checks_them(tmp_path: Path) -> None:
    args = ["bench", "hermes", "--apps", "6", "--intensity", "3", "--workloads", "1"]
    args += ["--policies", "vllm,gittins", "--max-num-seqs", "8", "--experiments", "ablation"]
    outs = []
    for workers in ("1", "2"):
        out = tmp_path / workers
        result = runner.invoke(app, [*args, "--workers", workers, "--out", str(out)])
        assert result.exit_code == 0, result.output
        outs.append(json.loads((out / "results.json").read_text()))
    assert _without_wall_times(outs[0]) == _without_wall_times(outs[1])
    bad = runner.invoke(app, [*args, "--workers", "-1", "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0
    assert "--workers" in bad.output


def test_the_hermes_bench_on_a_local_ray_gives_the_same_results() -> None:
    ray = pytest.importorskip("ray")
    settings = hp.PaperSettings(**{**hp._settings_dict(_small()), "experiments": ("ablation",)})
    alone = hp.run_all(settings)
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        on_ray = hp.run_all(settings, workers=2, ray_address="local")
        # Ray's workers (not this process) have their raylet's pid in the environment; the
        # job is a partial of a library function: the workers cannot import this test file.
        with Sweep[None](2, "local") as sweep:
            raylets = sweep.run([("env", partial(os.getenv, "RAY_RAYLET_PID"))] * 4)
    finally:
        ray.shutdown()
    assert _without_wall_times(alone) == _without_wall_times(on_ray)
    assert os.getenv("RAY_RAYLET_PID") is None
    assert all(raylets)  # the jobs ran in Ray's workers


def _without_timings(value: Any) -> Any:
    """`value` without what a clock measured (wall times, the planner's decide times)."""
    if isinstance(value, dict):
        return {
            k: _without_timings(v)
            for k, v in value.items()
            if k != "wall_s" and not k.startswith("decide_ms")
        }
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def test_the_qlm_bench_gives_the_same_results_on_one_worker_and_two() -> None:
    from hermes.experiments import qlm_paper

    s = qlm_paper.quick_settings(
        workloads=("WA", "WB"),
        policies=("vllm", "qlm"),
        rates=(("WA", (20.0,)), ("WB", (20.0,))),
        duration_s=20.0,
    )
    heard: list[str] = []
    one = qlm_paper.run_all(s, heard.append)
    two = qlm_paper.run_all(s, workers=2)
    assert _without_timings(one) == _without_timings(two)
    assert sorted(heard) == [
        "WA: 20 req/s, qlm",
        "WA: 20 req/s, vllm",
        "WB: 20 req/s, qlm",
        "WB: 20 req/s, vllm",
    ]


def test_the_bros_bench_gives_the_same_results_on_one_worker_and_two() -> None:
    from hermes.experiments import bros_paper as bp

    s = bp.quick_settings(
        policies=("vllm", "split", "bros"),
        deployments=bp.DEPLOYMENTS[:1],
        load_fractions=(0.3,),
        duration_s=30.0,
        warmup_s=5.0,
        drain_s=30.0,
    )
    heard: list[str] = []
    one = bp.run_all(s, heard.append)
    two = bp.run_all(s, workers=2)
    assert _without_timings(one) == _without_timings(two)
    # The capacity and split's BE instance, then one run per policy.
    assert len(heard) == 2 + 3
