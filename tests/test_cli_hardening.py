"""The command line answers bad input with a one-line error and exit status 2, never a
traceback: a config that is not UTF-8, a run file line nested too deeply, an instance count
beyond the simulator's bound, a port out of range, an unusable run store (named by its field)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from hermes.cli import app
from hermes.sim.config import MAX_REPLICAS

runner = CliRunner()


def _refused(args: list[str], message: str) -> None:
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert message in " ".join(res.output.split()), res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize("command", ["serve", "sim"])
def test_a_config_that_is_not_utf8_is_a_clear_error(tmp_path: Path, command: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(b"port: 8080\nbackends: \xff\xfe\n")
    _refused([command, "--config", str(cfg)], "c.yaml: not UTF-8 text (invalid start byte")


def test_a_config_nested_too_deeply_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("a: " + "[" * 100_000 + "]" * 100_000 + "\n")
    _refused(["sim", "--config", str(cfg)], "c.yaml:")


def test_a_run_file_line_nested_too_deeply_is_a_clear_error(tmp_path: Path) -> None:
    runs = tmp_path / "runs.jsonl"
    runs.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    out = tmp_path / "g.json"
    _refused(["learn", str(runs), "-o", str(out)], "runs.jsonl: a line nests its JSON too deeply")


def test_the_simulators_instance_count_is_bounded() -> None:
    _refused(
        ["sim", "--instances", "100000000"],
        f"instances[0].count: Input should be less than or equal to {MAX_REPLICAS}",
    )


def test_a_port_out_of_range_is_a_clear_error() -> None:
    _refused(["serve", "--emulate", "--port", "99999"], "--port")


def test_an_unusable_run_store_names_the_field(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("in the way")
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(
        "port: 0\nbackends: [{name: a, url: 'http://127.0.0.1:9', models: [m]}]\n"
        f"run_store: {blocker / 'runs.sqlite'}\n"
    )
    _refused(["serve", "--config", str(cfg)], "run_store: ")
    runs = tmp_path / "runs.jsonl"
    assert (
        runner.invoke(app, ["generate", "factool_kbqa", "--runs", "2", "-o", str(runs)]).exit_code
        == 0
    )
    store = blocker / "runs.sqlite"
    _refused(
        ["learn", str(runs), "-o", str(tmp_path / "g.json"), "--store", str(store)], "--store: "
    )
