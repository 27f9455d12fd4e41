"""`hermes learn --store`: runs seeded into the gateway's run store, which the gateway then
learns its demand graphs from."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from hermes.cli import app
from hermes.gateway.build import build_gateway
from hermes.gateway.config import Backend, GatewayConfig
from hermes.gateway.run_store import RunStore
from hermes.workloads.run_files import write_runs
from hermes.workloads.templates import generate_runs

runner = CliRunner()


def _runs_file(tmp_path: Path, n: int = 12) -> Path:
    path = tmp_path / "kbqa.jsonl"
    write_runs(path, generate_runs("factool_kbqa", n, 3))
    return path


def test_learn_seeds_the_run_store_the_gateway_learns_from(tmp_path: Path) -> None:
    runs = _runs_file(tmp_path)
    store = tmp_path / "state" / "runs.sqlite"  # its folder is made too
    graphs = tmp_path / "g.json"
    for held in (12, 24):  # appended, not replaced
        res = runner.invoke(app, ["learn", str(runs), "-o", str(graphs), "--store", str(store)])
        assert res.exit_code == 0, res.output
        assert "factool_kbqa (12 runs)" in res.output  # -o as before: these files' runs
        assert f"added 12 runs to {store}, which now holds {held}" in res.output
        assert graphs.is_file()
    s = RunStore(store)
    try:
        stored = s.runs()
    finally:
        s.close()
    assert len(stored) == 24
    assert {r.app for r in stored} == {"factool_kbqa"}
    backend = Backend(name="b", kind="vllm", url="http://127.0.0.1:9", models=["m"])
    gw = build_gateway(GatewayConfig(backends=[backend], run_store=str(store)))
    try:
        assert gw.graphs["factool_kbqa"].runs_seen == 24
    finally:
        assert gw.store is not None
        gw.store.close()


def test_learn_without_store_leaves_no_store(tmp_path: Path) -> None:
    runs = _runs_file(tmp_path, 3)
    res = runner.invoke(app, ["learn", str(runs), "-o", str(tmp_path / "g.json")])
    assert res.exit_code == 0, res.output
    assert "added" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.json", "kbqa.jsonl"]


@pytest.mark.parametrize("kind", ["text", "folder", "under_a_file"])
def test_an_unusable_store_is_a_clear_error(tmp_path: Path, kind: str) -> None:
    runs = _runs_file(tmp_path, 3)
    blocker = tmp_path / "blocker"
    if kind == "text":
        blocker.write_text("not a database, " * 100)
        store = blocker
    elif kind == "folder":
        blocker.mkdir()
        store = blocker
    else:
        blocker.write_text("a file where a folder should be")
        store = blocker / "runs.sqlite"
    graphs = tmp_path / "g.json"
    res = runner.invoke(app, ["learn", str(runs), "-o", str(graphs), "--store", str(store)])
    assert res.exit_code == 2
    assert f"{store}: not a usable run store" in res.output.replace("\n", "")
    assert not graphs.exists()  # nothing written
