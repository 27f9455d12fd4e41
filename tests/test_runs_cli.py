"""`hermes runs export|stats` and `hermes learn STORE`: the gateway's run store read back, as a
runs file (format v1) and as figures, with clear errors for what is not a store."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hermes.cli import app
from hermes.core.runs import AppRun
from hermes.gateway.run_store import RunStore, read_store
from hermes.workloads.pdgraph_files import load_pdgraphs
from hermes.workloads.run_files import read_runs
from hermes.workloads.templates import generate_runs

runner = CliRunner()


def _store(tmp_path: Path) -> tuple[Path, list[AppRun], list[AppRun]]:
    """A store written by the gateway's writer: 6 kbqa and 4 math runs finished, 2 cut off."""
    path = tmp_path / "runs.sqlite"
    kbqa = generate_runs("factool_kbqa", 6, 1)
    math = generate_runs("factool_math", 4, 2)
    cut = generate_runs("factool_kbqa", 2, 3)
    cut = [AppRun(r.app, f"cut-{r.run_id}", r.stages[:1]) for r in cut]
    store = RunStore(path)
    try:
        store.add(kbqa[:3])
        store.add(cut, finished=False)
        store.add(math)
        store.add(kbqa[3:])
    finally:
        store.close()
    return path, kbqa + math, cut


def test_export_writes_the_finished_runs_in_format_v1(tmp_path: Path) -> None:
    path, done, cut = _store(tmp_path)
    out = tmp_path / "runs.jsonl"
    res = runner.invoke(app, ["runs", "export", str(path), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "wrote 10 finished runs" in res.output
    exported = read_runs(out)  # format v1, checked by the reader
    assert sorted(r.run_id for r in exported) == sorted(r.run_id for r in done)
    assert {r.run_id: r for r in exported} == {r.run_id: r for r in done}

    res = runner.invoke(app, ["runs", "export", str(path), "-o", str(out), "--unfinished"])
    assert res.exit_code == 0, res.output
    assert [r.run_id for r in read_runs(out)] == [r.run_id for r in cut]

    res = runner.invoke(app, ["runs", "export", str(path), "-o", str(out), "--app", "factool_math"])
    assert res.exit_code == 0, res.output
    assert {r.app for r in read_runs(out)} == {"factool_math"}


def test_round_trip_store_export_learn_equals_learning_from_the_store(tmp_path: Path) -> None:
    path, _, _ = _store(tmp_path)
    exported, from_file, from_store = (tmp_path / n for n in ("r.jsonl", "f.json", "s.json"))
    assert runner.invoke(app, ["runs", "export", str(path), "-o", str(exported)]).exit_code == 0
    res = runner.invoke(app, ["learn", str(exported), "-o", str(from_file)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["learn", str(path), "-o", str(from_store)])
    assert res.exit_code == 0, res.output
    assert "factool_kbqa (6 runs)" in res.output  # the cut-off runs are not learned
    assert from_file.read_bytes() == from_store.read_bytes()
    graphs = load_pdgraphs(from_store)
    assert {a: g.runs_seen for a, g in graphs.items()} == {"factool_kbqa": 6, "factool_math": 4}


def test_stats_counts_runs_calls_tokens_and_tool_time(tmp_path: Path) -> None:
    path, done, _ = _store(tmp_path)
    res = runner.invoke(app, ["runs", "stats", str(path), "--json"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.output)
    assert (s["runs"], s["unfinished"]) == (10, 2)
    kbqa = [r for r in done if r.app == "factool_kbqa"]
    k = s["apps"]["factool_kbqa"]
    assert (k["runs"], k["unfinished"]) == (6, 2)
    assert k["llm_calls"] == sum(r.llm_call_count for r in kbqa)
    tokens = sum(
        c.prompt_tokens + c.completion_tokens
        for r in kbqa
        for st in r.stages
        for c in st.llm_calls()
    )
    assert k["prompt_tokens"] + k["completion_tokens"] == tokens
    assert k["tokens_per_run"] == pytest.approx(tokens / 6)
    tool_s = sum(c.duration_s for r in kbqa for st in r.stages for c in st.tool_calls())
    assert k["tool_seconds"] == pytest.approx(tool_s)
    assert k["stages_per_run"]["max"] == max(len(r.stages) for r in kbqa)
    assert set(k["stage_names"]) == {st.name for r in kbqa for st in r.stages}
    res = runner.invoke(app, ["runs", "stats", str(path)], env={"COLUMNS": "120"})
    assert res.exit_code == 0, res.output
    assert "10 finished runs, 2 unfinished" in res.output
    assert "factool_math" in res.output


def test_an_old_store_without_the_finished_column_reads_as_finished(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    run = generate_runs("factool_math", 1, 0)[0]
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE runs (seq INTEGER PRIMARY KEY AUTOINCREMENT, app TEXT NOT NULL,"
            " run_id TEXT NOT NULL, stored_at REAL NOT NULL, body TEXT NOT NULL)"
        )
        from hermes.core.runs import run_to_dict

        db.execute(
            "INSERT INTO runs (app, run_id, stored_at, body) VALUES (?, ?, 0, ?)",
            (run.app, run.run_id, json.dumps(run_to_dict(run))),
        )
    rows = read_store(path, finished=None)
    assert [(r.run, r.finished) for r in rows] == [(run, True)]
    with sqlite3.connect(path) as db:  # reading did not migrate it
        assert "finished" not in {row[1] for row in db.execute("PRAGMA table_info(runs)")}


def _bad(tmp_path: Path, kind: str) -> tuple[Path, str]:
    p = tmp_path / f"{kind}.sqlite"
    if kind == "missing":
        return p, "no such run store"
    if kind == "folder":
        p.mkdir()
        return p, "no such run store"
    if kind == "text":
        p.write_text('{"app": "x"}\n')
        return p, "not a run store (not an SQLite database)"
    if kind == "corrupt":
        p.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
        return p, "not a readable run store"
    if kind == "other_db":
        with sqlite3.connect(p) as db:
            db.execute("CREATE TABLE t (a)")
        return p, "no `runs` table"
    store = RunStore(p)  # a run whose body is not format v1
    store.close()
    with sqlite3.connect(p) as db:
        db.execute(
            "INSERT INTO runs (app, run_id, stored_at, body) VALUES ('a', 'r', 0, '{\"app\": 1}')"
        )
    return p, "stored run #1 is unreadable"


@pytest.mark.parametrize("kind", ["missing", "folder", "text", "corrupt", "other_db", "bad_run"])
@pytest.mark.parametrize("command", ["export", "stats", "learn"])
def test_what_is_not_a_store_is_a_clear_error(tmp_path: Path, kind: str, command: str) -> None:
    path, needle = _bad(tmp_path, kind)
    out = tmp_path / "out.json"
    args = {
        "export": ["runs", "export", str(path), "-o", str(out)],
        "stats": ["runs", "stats", str(path)],
        "learn": ["learn", str(path), "-o", str(out)],
    }[command]
    res = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert "Traceback" not in res.output
    if command == "learn" and kind in ("missing", "folder", "text"):
        return  # read as a runs file, with that reader's message
    assert needle in res.output.replace("\n", "")
    assert not out.exists()


def test_export_refuses_a_missing_folder_and_overwriting_a_store(tmp_path: Path) -> None:
    path, _, _ = _store(tmp_path)
    res = runner.invoke(app, ["runs", "export", str(path), "-o", str(tmp_path / "no" / "x.jsonl")])
    assert res.exit_code == 2
    assert "does not exist" in res.output
    res = runner.invoke(app, ["runs", "export", str(path), "-o", str(path)])
    assert res.exit_code == 2
    assert "is a run store" in res.output
    assert len(read_store(path)) == 10


def test_learn_refuses_to_seed_a_store_from_itself(tmp_path: Path) -> None:
    path, _, _ = _store(tmp_path)
    res = runner.invoke(
        app, ["learn", str(path), "-o", str(tmp_path / "g.json"), "--store", str(path)]
    )
    assert res.exit_code == 2
    assert "is also an input" in res.output
    assert len(read_store(path)) == 10
