"""The command line's rough edges (issue 17, item 8): `--version`; valid choices listed in
`--help` from the registries; a folder where run files are expected; `replay --target`
ending in `/v1`; errors, never tracebacks, for bad paths and busy ports; `--time-scale`
described the same way wherever it means the same."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hermes.cli import app
from hermes.cli.common import run_files
from hermes.gateway.config import emulated_default
from hermes.policies.registry import policy_names
from hermes.profiles import list_profiles
from hermes.replay.driver import api_base
from hermes.testing.gateway_thread import gateway_in_thread
from hermes.workloads.pdgraph_files import load_pdgraphs
from hermes.workloads.run_files import write_runs
from hermes.workloads.templates import TEMPLATE_NAMES, generate_runs

runner = CliRunner()
WIDE = {"COLUMNS": "400", "TERMINAL_WIDTH": "400"}


def _words(text: str) -> str:
    """Help text with rich's box drawing and line breaks gone: one line of words."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def _refused(args: list[str], message: str) -> str:
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert message in _words(res.output), res.output
    assert "Traceback" not in res.output
    return str(res.output)


def test_version_prints_the_installed_version() -> None:
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == f"hermes {version('hermes-sched')}"


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["sim"], lambda: policy_names()),
        (["bench", "hermes"], lambda: policy_names()),
        (["generate"], lambda: list(TEMPLATE_NAMES)),
        (["sim"], lambda: sorted({p.split("@")[0] for p in list_profiles()})),
        (["emulate"], lambda: sorted({p.split("@")[0] for p in list_profiles()})),
        (["bench", "hermes"], lambda: ["a100", "h100", "load", "deadlines", "kv"]),
    ],
)
def test_help_lists_the_valid_choices_from_the_registries(command: list[str], expected) -> None:  # type: ignore[no-untyped-def]
    res = runner.invoke(app, [*command, "--help"], env=WIDE)
    assert res.exit_code == 0, res.output
    text = _words(res.output)
    assert "{" not in text.replace("{APP}", "")  # every placeholder filled in
    for name in expected():
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), (name, text)


def test_time_scale_reads_the_same_for_the_emulator_and_the_gateway() -> None:
    # The emulator's clock: model time runs 1 / time_scale as fast as the wall clock.
    for command in (["serve"], ["emulate"]):
        res = runner.invoke(app, [*command, "--help"], env=WIDE)
        assert "wall seconds per model second (0.1: ten times faster)" in _words(res.output).lower()


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "runs"
    folder.mkdir()
    write_runs(folder / "a.jsonl", generate_runs("factool_math", 3, 0))
    write_runs(folder / "b.jsonl", generate_runs("react_fever", 3, 1))
    (folder / "notes.txt").write_text("not a run file")
    return folder


def test_a_folder_stands_for_every_run_file_in_it(runs_dir: Path, tmp_path: Path) -> None:
    assert run_files([runs_dir]) == [runs_dir / "a.jsonl", runs_dir / "b.jsonl"]
    out = tmp_path / "g.json"
    res = runner.invoke(app, ["learn", str(runs_dir), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert set(load_pdgraphs(out)) == {"factool_math", "react_fever"}


def test_a_folder_without_run_files_and_a_missing_path_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _refused(["learn", str(tmp_path / "empty")], "a directory with no *.jsonl run file in it")
    _refused(["learn", str(tmp_path / "nope.jsonl")], "nope.jsonl: no such file or directory")


def test_the_replay_target_may_end_in_v1(runs_dir: Path) -> None:
    assert api_base("http://h:8080/v1/") == api_base("http://h:8080") == "http://h:8080"
    with gateway_in_thread(emulated_default(port=0, time_scale=0.05)) as (_, url):
        args = ["replay", str(runs_dir), "--target", f"{url}/v1", "--rate", "50"]
        res = runner.invoke(app, [*args, "--time-scale", "0.05"])
    assert res.exit_code == 0, res.output
    assert "errors by status" not in res.output


def test_bad_output_paths_are_errors_not_tracebacks(tmp_path: Path) -> None:
    missing = tmp_path / "missing" / "dir" / "x.jsonl"
    _refused(["generate", "factool_math", "-o", str(missing)], "the folder")
    assert not missing.parent.exists()
    _refused(["generate", "factool_math", "-o", str(tmp_path)], "is a directory")
    blocker = tmp_path / "file"
    blocker.write_text("in the way")
    _refused(["bench", "qlm", "--quick", "--out", str(blocker)], "--out: ")


def test_a_missing_trace_is_named() -> None:
    _refused(["sim", "--trace", "/no/such/trace.csv"], "--trace: /no/such/trace.csv: no such file")


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield s.getsockname()[1]


def test_a_busy_port_is_an_error_and_no_banner(busy_port: int) -> None:
    where = f"cannot listen on 127.0.0.1:{busy_port}"
    out = _refused(["emulate", "--model", "m", "--port", str(busy_port)], where)
    assert "hermes emulated engine on" not in out
    out = _refused(["serve", "--emulate", "--port", str(busy_port)], where)
    assert "hermes gateway on" not in out


def test_an_address_that_does_not_resolve_is_named() -> None:
    host = "no.such.host.invalid"  # .invalid never resolves (RFC 2606)
    _refused(["emulate", "--model", "m", "--host", host], f"cannot listen on {host}:8000")
