"""The command line: generate, learn, inspect, demo, and the errors bad input gets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hermes.cli import app

runner = CliRunner()


def test_generate_learn_inspect(tmp_path: Path) -> None:
    runs = tmp_path / "kbqa.jsonl"
    res = runner.invoke(app, ["generate", "factool_kbqa", "--runs", "40", "--seed", "3",
                              "-o", str(runs)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert len(runs.read_text().splitlines()) == 40
    graphs = tmp_path / "g.json"
    res = runner.invoke(app, ["learn", str(runs), "-o", str(graphs)])
    assert res.exit_code == 0, res.output
    assert "factool_kbqa (40 runs)" in res.output
    res = runner.invoke(app, ["inspect", str(graphs), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)["factool_kbqa"]
    assert set(summary["nodes"]) == {"extract_claims", "generate_queries", "search", "verifies"}
    assert summary["edges"]["search"] == {"verifies": 1.0}
    assert summary["demand_s"]["p10"] <= summary["demand_s"]["p50"] <= summary["demand_s"]["p99"]
    assert any(c["target"] == "verifies" for c in summary["correlations"])
    res = runner.invoke(app, ["inspect", str(graphs)])
    assert res.exit_code == 0
    assert "verifies" in res.output
    assert "transitions" in res.output


def test_demo_runs_the_main_job(tmp_path: Path) -> None:
    res = runner.invoke(app, ["demo", "--runs", "30", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "pdgraphs.json").is_file()
    for name in ("react_alfw", "langchain_mapreduce", "factool_code"):
        assert name in res.output


def test_a_malformed_run_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"app": "a", "run_id": "1", "stages": [{"name": "x", "kind": "llm"}]}\n')
    res = runner.invoke(app, ["learn", str(bad)])
    assert res.exit_code == 2
    assert f"{bad}:1: stages[0]: missing required field 'calls'" in res.output


@pytest.mark.parametrize(
    ("command", "content", "message"),
    [
        (["learn", "{missing}"], None, "no such file"),
        (["learn", "{file}"], "", "hold no runs"),
        (["generate", "nope"], None, "unknown application 'nope'"),
        (["inspect", "{file}"], "{}", "pdgraphs.format"),
        (["inspect", "{missing}"], None, "no such file"),
    ],
)
def test_bad_inputs_exit_2_with_a_message(
    tmp_path: Path, command: list[str], content: str | None, message: str
) -> None:
    file = tmp_path / "input"
    if content is not None:
        file.write_text(content)
    args = [a.format(file=file, missing=tmp_path / "missing") for a in command]
    res = runner.invoke(app, args)
    assert res.exit_code == 2
    assert message in res.output
