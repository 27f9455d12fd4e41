"""`hermes bench hermes`: the experiment plumbing, recorded-run mode and the command line."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hermes.cli import app
from hermes.core.runs import AppRun
from hermes.experiments.common import (
    EngineSpec,
    reduction,
    standalone_times,
)
from hermes.experiments.recorded_runs import RecordedSettings, recorded_bench, split
from hermes.sim.build import template_graphs
from hermes.workloads.outcomes import Outcome, summary
from hermes.workloads.run_files import write_runs
from hermes.workloads.templates import generate_runs

runner = CliRunner()


def test_summary_statistics_and_deadlines() -> None:
    outcomes = [Outcome("a", float(x), None) for x in range(1, 101)] + [Outcome("a", None, None)]
    s = summary(outcomes)
    assert s["apps"] == 101
    assert s["failed"] == 1
    assert s["act_mean"] == pytest.approx(50.5)
    assert (s["act_p50"], s["act_p95"], s["act_p99"]) == (50.0, 95.0, 99.0)
    assert s["dsr"] is None
    timed = [Outcome("a", 1.0, 2.0), Outcome("a", 3.0, 2.0), Outcome("a", None, 5.0)]
    assert summary([*timed, Outcome("a", 1.0, None)])["dsr"] == pytest.approx(1 / 3)
    assert reduction(30.0, 100.0) == pytest.approx(-0.7)
    assert reduction(None, 1.0) is None


def test_standalone_time_is_a_floor_under_contention() -> None:
    runs = generate_runs("factool_kbqa", 6, seed=1)
    graphs = template_graphs(["factool_kbqa"], 20, 0)
    alone = standalone_times(runs, EngineSpec(max_num_seqs=8), graphs, 0)
    assert all(t > 0 for t in alone)
    assert len(set(alone)) > 1  # each run its own time


def _runs_file(tmp_path: Path) -> Path:
    code = generate_runs("factool_code", 10, seed=1)
    # A type no template knows: its runs are kbqa's, renamed, with deadlines.
    novel = [
        replace(r, app="fresh_agent", run_id=f"f{i}", deadline_s=60.0)
        for i, r in enumerate(generate_runs("factool_kbqa", 8, seed=2))
    ]
    path = tmp_path / "runs.jsonl"
    write_runs(path, [*code, *novel])
    return path


def test_split_takes_the_first_part_of_each_type_in_file_order() -> None:
    a = generate_runs("factool_math", 5, seed=0)
    b = [replace(r, app="other") for r in generate_runs("factool_math", 3, seed=1)]
    parts = split([a[0], b[0], a[1], a[2], b[1], a[3], b[2], a[4]], 0.5)
    assert parts["factool_math"] == ([a[0], a[1]], [a[2], a[3], a[4]])
    assert parts["other"] == ([b[0]], [b[1], b[2]])


def test_recorded_runs_work_for_unseen_application_types(tmp_path: Path) -> None:
    from hermes.workloads.run_files import read_runs

    runs: list[AppRun] = read_runs(_runs_file(tmp_path))
    s = RecordedSettings(apps=30, policies=("vllm", "gittins", "oracle"), intensity=50.0)
    out = recorded_bench(runs, s)
    assert set(out["policies"]) == {"vllm", "gittins", "oracle"}
    for row in out["policies"].values():
        assert row["apps"] == 30
        assert row["failed"] == 0
        assert 0 < row["act_p50"] <= row["act_p95"] <= row["act_p99"]
        assert row["dsr"] is not None
        assert 0.0 <= row["dsr"] <= 1.0
    cfg = out["config"]
    assert cfg["runs"] == {
        "factool_code": {"train": 5, "replay": 5},
        "fresh_agent": {"train": 4, "replay": 4},
    }
    assert cfg["learned"] == ["factool_code", "fresh_agent"]
    assert cfg["weights"] == {"factool_code": 5.0, "fresh_agent": 4.0}


def test_recorded_run_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="train-fraction must be in"):
        RecordedSettings(train_fraction=1.0)
    with pytest.raises(ValueError, match="unknown policy 'fifo'"):
        RecordedSettings(policies=("fifo",))
    with pytest.raises(ValueError, match="--policies: policy 'gittins\\+x': the admission suffix"):
        RecordedSettings(policies=("gittins+x",))
    with pytest.raises(ValueError, match="unknown policy 'fifo'"):
        RecordedSettings(policies=("fifo+auto",))
    runs = generate_runs("factool_math", 4, seed=0)
    with pytest.raises(ValueError, match="no runs to replay for application 'x'"):
        recorded_bench(runs, RecordedSettings(weights={"x": 1.0}))


def test_cli_bench_with_recorded_runs(tmp_path: Path) -> None:
    path = _runs_file(tmp_path)
    out = tmp_path / "o" / "bench.json"
    args = ["bench", "hermes", "--runs", str(path), "--train-fraction", "0.5"]
    args += ["--intensity", "40", "--policies", "vllm,gittins", "--seed", "1", "--apps", "20"]
    res = runner.invoke(app, [*args, "--json", str(out)])
    assert res.exit_code == 0, res.output
    data: dict[str, Any] = json.loads(out.read_text())
    assert set(data["policies"]) == {"vllm", "gittins"}
    keys = {"apps", "act_mean", "act_p50", "act_p95", "act_p99", "dsr", "failed"}
    keys |= {"makespan_s", "output_tokens_per_s"}
    assert set(data["policies"]["gittins"]) == keys
    assert data["policies"]["gittins"]["makespan_s"] > 0
    assert data["policies"]["gittins"]["output_tokens_per_s"] > 0
    assert data["config"]["seed"] == 1
    assert data["config"]["intensity"] == 40.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policies", "vllm,nope"], "unknown policy 'nope'"),
        (["--policies", "vllm,gittins+"], "the admission suffix must be '+auto' or '+N'"),
        (["--intensity", "1,x"], "--intensity: expected comma-separated numbers"),
        (["--intensity", "0"], "--intensity: expected positive numbers"),
        (["--weights", "a=1"], "--weights applies to --runs only"),
        (["--runs", "missing.jsonl"], "missing.jsonl: no such file"),
        (["--model", "gpt-9"], "gpt-9"),
    ],
)
def test_cli_bench_rejects_bad_input(args: list[str], message: str) -> None:
    res = runner.invoke(app, ["bench", "hermes", *args])
    assert res.exit_code == 2
    assert message in res.output


def test_cli_bench_paper_mode_writes_results_report_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    args = ["bench", "hermes", "--out", str(out), "--apps", "12", "--intensity", "2,4"]
    args += ["--policies", "vllm,gittins,oracle", "--max-num-seqs", "4", "--workloads", "2"]
    res = runner.invoke(app, [*args, "--overhead-apps", "1,20"])
    assert res.exit_code == 0, res.output
    names = {p.name for p in out.iterdir()}
    assert names == {
        "results.json",
        "report.md",
        "act_vs_intensity.png",
        "act_cdf.png",
        "prewarm.png",
    }
    for png in ("act_vs_intensity.png", "act_cdf.png", "prewarm.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = json.loads((out / "results.json").read_text())
    load = r["load"]["4"]["by_intensity"]
    assert set(load) == {"2.0", "4.0"}
    for rows in load.values():
        assert rows["vllm"]["apps"] == 24  # two draws pooled
        # No order of service beats every application having the engine to itself.
        floor = rows["_floor"]["standalone_act_mean"]
        assert all(rows[p]["act_mean"] >= floor * 0.999 for p in ("vllm", "gittins", "oracle"))
    assert len(r["load"]["4"]["cdf"]["gittins"]) == 24
    assert set(r["deadlines"]["4"]) == {"1.2", "1.5", "2.0"}
    assert set(r["prewarm"]["policies"]) == {"none", "keepalive", "on-queue", "pdgraph"}
    none, keep = r["prewarm"]["policies"]["none"], r["prewarm"]["policies"]["keepalive"]
    assert none["cold_wait_s"] > keep["cold_wait_s"]
    assert [row["apps"] for row in r["overhead"]["rounds"]] == [1, 20]
    assert {t["met"] for t in r["targets"]} <= {True, False, None}
    report = (out / "report.md").read_text()
    assert "| gittins |" in report
    assert "![ACT vs load](act_vs_intensity.png)" in report


def test_cli_bench_runs_only_the_named_experiments(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    # 16 applications: the fewest whose draw (seed 0) has two sandbox calls meet in the pool.
    args = ["bench", "hermes", "--out", str(out), "--apps", "16", "--workloads", "1"]
    res = runner.invoke(app, [*args, "--experiments", "tools,overhead", "--overhead-apps", "1"])
    assert res.exit_code == 0, res.output
    assert {p.name for p in out.iterdir()} == {"results.json", "report.md"}  # no plots to draw
    r = json.loads((out / "results.json").read_text())
    assert set(r) == {"settings", "tools", "overhead", "targets", "wall_s"}
    assert r["settings"]["experiments"] == ["tools", "overhead"]
    tools = r["tools"]
    for order in ("fifo", "policy"):
        row = tools[order]
        assert row["apps"] == 16
        assert row["failed"] == 0
        assert row["act_mean"] > 0
        assert row["act_p95"] > 0
        assert set(row["queue_wait_s"]) == {"sandbox"}
        assert row["tool_calls"]["sandbox"] > 0
    assert tools["setting"] == {**tools["setting"], "layout": "shared", "instances": 1}
    assert set(tools["sweep"]) == {"separate", "shared"}
    assert set(tools["sweep"]["separate"]) == {"1", "2", "4"}
    assert set(tools["sweep"]["separate"]["1"]["fifo"]["queue_wait_s"]) == {"docker", "env"}
    # The references: a clairvoyant order of the same pools, and the pools unlimited.
    for ref in ("oracle", "unlimited"):
        assert tools[ref]["apps"] == 16
        assert tools[ref]["failed"] == 0
    # Unlimited pools never queue (a call that finds every instance busy starts one).
    assert sum(tools["unlimited"]["queue_wait_s"].values()) == 0
    assert sum(tools["unlimited"]["tool_wait_s_by_app"].values()) == 0
    assert tools["fifo"]["instances_launched"] == {"sandbox": [1]}  # the limit held
    assert tools["unlimited"]["instances_launched"]["sandbox"][0] >= 1
    fifo = tools["fifo"]
    assert sum(fifo["tool_wait_s_by_app"].values()) > 0
    assert set(fifo["tool_wait_s_by_app"]) == set(fifo["act_mean_by_app"])
    assert set(fifo["llm_wait_s_by_app"]) == set(fifo["act_mean_by_app"])
    assert min(fifo["llm_wait_s_by_app"].values()) >= 0
    assert fifo["act_mean_pool_users"] > 0
    targets = [t["target"] for t in r["targets"]]
    assert sum(t.startswith("policy-ordered vs FIFO tool pools") for t in targets) == 1
    assert sum(t.startswith("ranking round") for t in targets) == 1
    report = (out / "report.md").read_text()
    assert "## Tool pools in policy order" in report
    assert "## Ranking-round overhead" in report
    assert "## Prewarming" not in report
    assert "act_vs_intensity.png" not in report


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--experiments", "tools,kv2"], "--experiments: expected some of load, deadlines"),
        (["--experiments", ","], "--experiments: expected some of"),
        (["--runs", "x.jsonl", "--experiments", "tools"], "--experiments applies to the paper"),
    ],
)
def test_cli_bench_rejects_unknown_experiments(args: list[str], message: str) -> None:
    res = runner.invoke(app, ["bench", "hermes", *args])
    assert res.exit_code == 2
    assert message in res.output


def test_paper_settings_check_the_experiments() -> None:
    from hermes.experiments.hermes_paper import EXPERIMENTS, PaperSettings

    assert set(PaperSettings().experiments) == set(EXPERIMENTS)
    with pytest.raises(ValueError, match=r"experiments: expected some of load, .*got nope"):
        PaperSettings(experiments=("nope",))
    with pytest.raises(ValueError, match="got none"):
        PaperSettings(experiments=())


def test_the_shared_layout_sends_sandboxed_tools_to_one_pool() -> None:
    from hermes.experiments.tool_queues import SANDBOX, shared_runs

    runs = [
        *generate_runs("factool_code", 2, seed=0),
        *generate_runs("react_alfw", 2, seed=0),
        *generate_runs("factool_kbqa", 2, seed=0),
    ]
    before = {st.backend for r in runs for st in r.stages if st.kind == "tool"}
    assert before == {"docker", "env", "search"}
    after = shared_runs(runs)
    assert {st.backend for r in after for st in r.stages if st.kind == "tool"} == {
        SANDBOX,
        "search",
    }
    assert [len(r.stages) for r in after] == [len(r.stages) for r in runs]
