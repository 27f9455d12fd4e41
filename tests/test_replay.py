"""`hermes replay`: the plan (runs into timed requests) and the replay through an emulated
gateway over real HTTP."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hermes.cli import app
from hermes.core.runs import AppRun, LLMCall, Stage, ToolCall
from hermes.emulator import prompt_tokens_for_text
from hermes.gateway.config import emulated_default
from hermes.gateway.context import parse_context
from hermes.replay import LLMStep, ReplayError, ReplaySettings, ToolStep, plan, prompt_text
from hermes.testing.gateway_thread import gateway_in_thread
from hermes.testing.ports import free_port
from hermes.workloads.run_files import write_runs
from hermes.workloads.templates import generate_runs


def _run(run_id: str, deadline_s: float | None = None) -> AppRun:
    return AppRun(
        "demo",
        run_id,
        (
            Stage("ask", "llm", "llm", (LLMCall(40, 5), LLMCall(80, 0))),
            Stage("look", "tool", "search", (ToolCall(0.5), ToolCall(2.0))),
            Stage("answer", "llm", "llm", (LLMCall(120, 7),), model="big"),
        ),
        deadline_s=deadline_s,
    )


def test_plan_replays_every_run_once_in_order_by_default() -> None:
    runs = [_run(f"r{i}") for i in range(5)]
    apps = plan(runs, 2.0, seed=3, default_model="m")
    assert [a.run_id for a in apps] == [r.run_id for r in runs]
    starts = [a.start_s for a in apps]
    assert starts[0] == 0.0
    assert starts == sorted(starts)
    assert starts[-1] > 0
    assert len({a.app_id for a in apps}) == 5
    assert plan(runs, 2.0, seed=3, default_model="m") == apps
    assert [a.start_s for a in plan(runs, 2.0, seed=4, default_model="m")] != starts


def test_plan_draws_apps_with_replacement_by_the_seed() -> None:
    runs = [_run(f"r{i}") for i in range(3)]
    drawn = [a.run_id for a in plan(runs, 1.0, apps=30, seed=1)]
    assert len(drawn) == 30
    assert set(drawn) == {"r0", "r1", "r2"}
    assert drawn == [a.run_id for a in plan(runs, 1.0, apps=30, seed=1)]
    assert drawn != [a.run_id for a in plan(runs, 1.0, apps=30, seed=2)]


def test_plan_turns_stages_into_requests_and_tool_waits() -> None:
    [a] = plan([_run("r0", deadline_s=8.0)], 1.0, default_model="m", time_scale=0.5)
    assert a.deadline_s == 4.0
    ask, look, answer = a.steps
    assert isinstance(ask, LLMStep)
    assert isinstance(look, ToolStep)
    assert isinstance(answer, LLMStep)
    # Parallel tool calls: the stage lasts as long as the longest, scaled.
    assert (look.stage, look.backend, look.duration_s) == ("look", "search", 1.0)
    assert [b["max_tokens"] for b in ask.bodies] == [5, 1]
    assert {b["model"] for b in ask.bodies} == {"m"}
    assert answer.bodies[0]["model"] == "big"  # the stage's recorded model
    assert all(b["stream"] is False for b in ask.bodies)
    ctx = parse_context(ask.headers)
    assert (ctx.app_id, ctx.app_type, ctx.stage, ctx.deadline_ms) == (a.app_id, "demo", "ask", 4e3)
    texts = [b["messages"][0]["content"] for b in ask.bodies]
    # Four characters a token, as the gateway and the emulator count; each prompt its own.
    assert [prompt_tokens_for_text(t) for t in texts] == [40, 80]
    assert texts[0][:20] != texts[1][:20]
    [forced] = plan([_run("r0")], 1.0, model="x")
    assert {b["model"] for s in forced.steps if isinstance(s, LLMStep) for b in s.bodies} == {"x"}


def test_prompt_text_is_about_four_characters_a_token() -> None:
    for n in (0, 1, 7, 200, 3000):
        text = prompt_text(n, "app-1/0/2:")
        assert abs(len(text) - 4 * n) <= 4 or n < 3
        assert text.startswith("app-1/0/2:")


def test_plan_refuses_what_the_gateway_would_refuse() -> None:
    bad = replace(_run("r0"), app="no spaces allowed")
    with pytest.raises(ValueError, match="run 'r0' cannot be replayed: header x-hermes-app-type"):
        plan([bad], 1.0)
    with pytest.raises(ValueError, match="rate must be a positive number"):
        plan([_run("r0")], 0.0)
    with pytest.raises(ValueError, match="no runs"):
        plan([], 1.0)
    with pytest.raises(ReplayError, match="http:// or https://"):
        ReplaySettings("localhost:8080", 1.0)
    with pytest.raises(ReplayError, match="time_scale must be a positive number"):
        ReplaySettings("http://h", 1.0, time_scale=0.0)


def _runs_file(tmp_path: Path) -> tuple[Path, list[AppRun]]:
    runs = (
        generate_runs("factool_code", 2, 1)
        + generate_runs("factool_math", 2, 2)
        + generate_runs("react_fever", 2, 3)
    )
    runs[0] = replace(runs[0], deadline_s=1000.0)
    path = tmp_path / "runs.jsonl"
    write_runs(path, runs)
    return path, runs


def test_replay_through_the_emulated_gateway(tmp_path: Path) -> None:
    path, runs = _runs_file(tmp_path)
    out = tmp_path / "replay.json"
    with gateway_in_thread(emulated_default(port=0, time_scale=0.05)) as (gateway, url):
        res = CliRunner().invoke(
            app,
            [
                "replay",
                str(path),
                "--target",
                url,
                "--rate",
                "20",
                "--time-scale",
                "0.05",
                "--json",
                str(out),
            ],
        )
        assert res.exit_code == 0, res.output
        learned = {a: g.runs_seen for a, g in gateway.graphs.items()}
    assert learned == {"factool_code": 2, "factool_math": 2, "react_fever": 2}
    r = json.loads(out.read_text())
    assert (r["apps"], r["failed"], r["errors"]) == (6, 0, {})
    assert 0 < r["act_p50"] <= r["act_p95"] <= r["act_p99"]
    assert 0 < r["act_mean"] <= r["act_p99"]
    assert r["dsr"] == 1.0  # the one run with a deadline met it
    calls = sum(s.fanout for run in runs for s in run.stages if s.kind == "llm")
    tools = sum(1 for run in runs for s in run.stages if s.kind == "tool")
    assert r["requests"] == calls + 2 * tools + len(runs)
    assert set(r["by_type"]) == {"factool_code", "factool_math", "react_fever"}
    assert r["config"]["files"] == [str(path)]
    assert r["config"]["stream"] is False


def test_replay_counts_errors_and_failed_apps(tmp_path: Path) -> None:
    path, _ = _runs_file(tmp_path)
    out = tmp_path / "replay.json"
    with gateway_in_thread(emulated_default(port=0, time_scale=0.05)) as (_, url):
        args = ["replay", str(path), "--target", url, "--rate", "50", "--apps", "3"]
        res = CliRunner().invoke(app, [*args, "--model", "nope", "--json", str(out)])
    assert res.exit_code == 1
    assert "3 of 3 applications failed" in res.output
    r = json.loads(out.read_text())
    assert (r["apps"], r["failed"], r["act_mean"]) == (3, 3, None)
    # Each application stops at its first stage (404: no such model), then finish finds no
    # application there (404 again).
    assert r["errors"] == {"404": 6}


def test_replay_with_an_unreachable_target_exits_with_a_message(tmp_path: Path) -> None:
    path, _ = _runs_file(tmp_path)
    url = f"http://127.0.0.1:{free_port()}"
    res = CliRunner().invoke(app, ["replay", str(path), "--target", url, "--rate", "1"])
    assert res.exit_code == 2
    assert f"cannot reach the gateway at {url}" in res.output
    res = CliRunner().invoke(app, ["replay", str(path), "--target", "ftp://x", "--rate", "1"])
    assert res.exit_code == 2
    assert "http:// or https://" in res.output
    res = CliRunner().invoke(app, ["replay", str(path), "--target", url, "--rate", "0"])
    assert res.exit_code == 2
    assert "rate_per_s must be a positive number" in res.output
