"""Long commands on the terminal (issue 17, items 7 and 9): progress bars fed by the benches'
callbacks, off with --quiet or off a terminal; `bench hermes --quick`, labelled as quick; the
servers' fast path (uvloop, httptools) and the pure-Python path they fall back to."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from hermes.cli import app, fast, progress

runner = CliRunner()


def _terminal(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """Progress drawn on a fake terminal; what it drew."""
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=120)
    monkeypatch.setattr(progress, "err", console)
    return buf


def test_a_bench_step_is_shown_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = _terminal(monkeypatch)
    with progress.steps("bench demo") as step:
        step("load: intensity 3, gittins")
        step("load: intensity 3, [oracle]")  # brackets are text, not markup
    drawn = buf.getvalue()
    assert "bench demo · step 2" in drawn
    assert "load: intensity 3, [oracle]" in drawn


def test_quiet_or_no_terminal_shows_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = _terminal(monkeypatch)
    with progress.steps("bench demo", quiet=True) as step:
        step("load")
    with progress.fraction("simulating", quiet=True) as done:
        assert done is None
    assert buf.getvalue() == ""
    monkeypatch.setattr(progress, "err", Console(file=io.StringIO(), force_terminal=False))
    assert not progress.shown(False)


def test_the_simulation_bar_follows_the_share_done(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = _terminal(monkeypatch)
    with progress.fraction("simulating") as done:
        assert done is not None
        done(0.5)
    assert "50%" in buf.getvalue()


def test_bench_hermes_quick_is_labelled_and_small(tmp_path: Path) -> None:
    out = tmp_path / "quick"
    args = ["bench", "hermes", "--quick", "--experiments", "overhead", "--overhead-apps", "1,10"]
    res = runner.invoke(app, [*args, "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    r = json.loads((out / "results.json").read_text())
    assert r["quick"] is True
    s = r["settings"]
    assert (s["apps"], s["workloads"], s["batch_limits"]) == (40, 1, [8])
    assert s["overhead_apps"] == [1, 10]  # what the command line gave wins
    assert s["experiments"] == ["overhead"]
    assert "quick run" in res.output


def test_quick_is_refused_with_recorded_runs(tmp_path: Path) -> None:
    res = runner.invoke(app, ["bench", "hermes", "--quick", "--runs", str(tmp_path)])
    assert res.exit_code == 2
    assert "--quick applies to the paper's experiments" in res.output


def _loop_name() -> str:
    box: list[str] = []

    async def which() -> None:
        box.append(type(asyncio.get_running_loop()).__module__)

    fast.run(which())
    return box[0]


def test_the_fast_path_where_uvloop_and_httptools_import() -> None:
    pytest.importorskip("uvloop")
    pytest.importorskip("httptools")
    assert fast.path() == "uvloop + httptools"
    assert _loop_name().startswith("uvloop")


def test_without_them_the_pure_python_path_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "httptools", None)
    assert fast.path() == "asyncio + h11"
    assert _loop_name().startswith("asyncio")


# `hermes serve --emulate` with uvloop and httptools unimportable: it says so, and a call goes
# through the gateway to its emulated engine and back.
_FALLBACK = """
import sys
sys.modules["uvloop"] = None
sys.modules["httptools"] = None
from hermes.cli import app
app(["serve", "--emulate", "--port", "0", "--time-scale", "0.01"], prog_name="hermes")
"""


def test_serve_falls_back_to_the_pure_python_path() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _FALLBACK], stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stderr is not None
        line = ""
        for line in proc.stderr:  # the banner comes once the socket is bound
            if "hermes gateway on" in line:
                break
        assert "asyncio + h11" in line, line
        url = line.split(" on ")[1].split()[0]
        body = {"model": "llama-2-7b", "prompt": "hi", "max_tokens": 2}
        req = urllib.request.Request(
            f"{url}/v1/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as resp:  # bound before the banner
            answer = json.loads(resp.read())
        assert answer["usage"]["completion_tokens"] == 2
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        if proc.stderr is not None:
            proc.stderr.close()
