"""Admission in the simulator (issue 15): policy names with an admission suffix, a fixed limit
that holds, and the adaptive controller finishing every application."""

from __future__ import annotations

from pathlib import Path

import pytest

from hermes.engine.request import EngineRequest
from hermes.experiments.common import (
    PAPER_MIX,
    EngineSpec,
    config_for,
    spread_over,
    template_workload,
)
from hermes.sim.build import build, template_graphs
from hermes.sim.config import ConfigError, config_from_dict
from hermes.sim.simulation import Simulation


@pytest.fixture(scope="module")
def workload() -> tuple[list, dict]:  # type: ignore[type-arg]
    runs, offsets = template_workload(PAPER_MIX, 30, seed=7)
    # 30 applications within 20 s: far more calls at once than 8.
    return spread_over(runs, offsets, 20.0), template_graphs(list(PAPER_MIX), 50, 7)


def most_at_once(requests: list[EngineRequest]) -> int:
    """The most requests in an engine at once, from their admission and finish times."""
    events = sorted(
        [(r.first_scheduled_s, 1) for r in requests if r.first_scheduled_s is not None]
        + [(r.finish_s, -1) for r in requests if r.first_scheduled_s is not None]
    )
    most = now = 0
    for _, step in events:  # finishes sort before admissions at the same instant
        now += step
        most = max(most, now)
    return most


def run(policy: str, workload: tuple[list, dict]) -> Simulation:  # type: ignore[type-arg]
    schedule, graphs = workload
    sim = build(config_for(policy, EngineSpec(max_num_seqs=256), 7), runs=schedule, graphs=graphs)
    sim.run()
    return sim


def test_a_fixed_limit_holds(workload: tuple[list, dict]) -> None:  # type: ignore[type-arg]
    unlimited = run("gittins", workload)
    assert most_at_once(unlimited.requests) > 8  # the limit below has work to do
    limited = run("gittins+8", workload)
    assert most_at_once(limited.requests) <= 8
    assert all(a.finish_s is not None and a.failed is None for a in limited.apps.values())
    figures = limited.results()["instances"][0]["admission"]  # type: ignore[index]
    assert figures["kind"] == "fixed"
    assert figures["max_in_engine"] <= 8


def test_auto_finishes_every_application(workload: tuple[list, dict]) -> None:  # type: ignore[type-arg]
    sim = run("gittins+auto", workload)
    assert all(a.finish_s is not None and a.failed is None for a in sim.apps.values())
    figures = sim.results()["instances"][0]["admission"]  # type: ignore[index]
    assert figures["kind"] == "auto"
    assert 1 <= figures["limit"] <= 256
    assert figures["mean_limit"] is not None


def test_plain_policies_have_no_admission(workload: tuple[list, dict]) -> None:  # type: ignore[type-arg]
    sim = run("vllm", workload)
    assert "admission" not in sim.results()["instances"][0]  # type: ignore[index]
    assert not sim.admissions


@pytest.mark.parametrize("bad", ["gittins+", "gittins+x", "gittins+0"])
def test_a_bad_suffix_is_refused_in_the_config(bad: str) -> None:
    data = {"policy": bad, "apps": {"templates": {"factool_code": 1}, "count": 1}}
    with pytest.raises(ConfigError, match="admission suffix"):
        config_from_dict(data, "sim.yaml")


def test_admission_needs_a_vllm_engine() -> None:
    data = {
        "policy": "gittins+8",
        "instances": [{"engine": "bros"}],
        "apps": {"templates": {"factool_code": 1}, "count": 1},
    }
    with pytest.raises(ValueError, match="needs a vllm engine"):
        build(config_from_dict(data, "sim.yaml"))


def test_recorded_bench_reports_throughput_and_the_targets() -> None:
    from hermes.experiments.recorded_runs import RecordedSettings, recorded_bench
    from hermes.workloads.templates import generate_runs

    runs = generate_runs("factool_kbqa", 20, seed=3) + generate_runs("factool_code", 20, seed=4)
    policies = ("vllm", "gittins+8", "gittins+auto")
    for intensity, count in ((40.0, 3), (1.0, 1)):
        s = RecordedSettings(apps=16, policies=policies, intensity=intensity)
        out = recorded_bench(runs, s)
        for row in out["policies"].values():
            assert row["failed"] == 0
            assert row["makespan_s"] > 0
            assert row["output_tokens_per_s"] > 0
        targets = out["targets"]
        assert len(targets) == count
        assert all(t["target"].startswith("gittins+auto vs vllm") for t in targets)
        assert all(isinstance(t["met"], bool) for t in targets)


def test_the_admission_experiment_sweeps_fixed_limits() -> None:
    from hermes.experiments.hermes_paper import PaperSettings, run_all

    s = PaperSettings(
        apps=8,
        intensities=(4.0,),
        headline_intensity=4.0,
        workloads=1,
        training_runs=30,
        experiments=("admission",),
        admission_limits=(2, 4),
    )
    r = run_all(s)
    rows = r["admission"]["by_intensity"]["4.0"]
    assert set(rows) == {"vllm", "gittins", "gittins+2", "gittins+4", "gittins+auto", "_best_fixed"}
    assert rows["gittins+2"]["mean_limit"] == pytest.approx(2.0)
    assert rows["gittins"]["mean_limit"] is None
    best = rows["_best_fixed"]
    assert best["act_mean"] == min(
        rows[p]["act_mean"] for p in ("gittins", "gittins+2", "gittins+4")
    )
    [t] = [t for t in r["targets"] if "best fixed limit" in t["target"]]
    assert t["measured"] == pytest.approx(rows["gittins+auto"]["act_mean"] / best["act_mean"] - 1)


def test_hermes_sim_takes_an_admission_suffix(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from hermes.cli import app

    runner = CliRunner()
    out = tmp_path / "sim.json"
    res = runner.invoke(app, ["sim", "--limit", "40", "--policy", "vllm+4", "--json", str(out)])
    assert res.exit_code == 0, res.output
    for instance in json.loads(out.read_text())["instances"]:
        assert instance["admission"]["kind"] == "fixed"
        assert instance["admission"]["max_in_engine"] <= 4
    bad = runner.invoke(app, ["sim", "--limit", "10", "--policy", "vllm+lots"])
    assert bad.exit_code == 2
    assert "the admission suffix must be '+auto' or '+N'" in bad.output
