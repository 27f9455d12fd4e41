"""The simulator gives application calls their content (`workloads.call_content`): template
runs carry it, runs without the sharing fields give the results they gave before."""

from __future__ import annotations

import dataclasses

import pytest

from hermes.core.runs import AppRun, LLMCall
from hermes.engine.engine_config import EngineConfig
from hermes.policies.fcfs import FCFS
from hermes.profiles import load_profile
from hermes.sim import simulation
from hermes.sim.simulation import Simulation
from hermes.workloads.call_content import call_content
from hermes.workloads.templates import generate_runs

MODEL = load_profile("llama-2-7b@a100")


def plain(run: AppRun) -> AppRun:
    """The run as a v1 file without the sharing fields has it."""
    stages = tuple(
        dataclasses.replace(
            s, calls=tuple(LLMCall(c.prompt_tokens, c.completion_tokens) for c in s.llm_calls())
        )
        if s.kind == "llm"
        else s
        for s in run.stages
    )
    return dataclasses.replace(run, stages=stages)


def workload() -> list[tuple[float, AppRun]]:
    runs = [
        *generate_runs("react_alfw", 6, seed=1),
        *generate_runs("factool_kbqa", 6, seed=2),
        *generate_runs("react_fever", 6, seed=3),
    ]
    return [(0.4 * i, run) for i, run in enumerate(runs)]


def simulate(runs: list[tuple[float, AppRun]]) -> Simulation:
    sim = Simulation(FCFS())
    sim.add_model("llama-2-7b", MODEL, EngineConfig(max_model_len=8192), replicas=2)
    sim.add_apps(runs)
    sim.run()
    return sim


def _without_wall_clock(results: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in results.items() if k != "wall_s"}


def test_template_calls_carry_their_content() -> None:
    sim = simulate(workload())
    calls = [r for r in sim.requests if isinstance(r.id, tuple) and r.id[0] == "app"]
    assert calls
    assert all(r.content is not None for r in calls)
    for r in calls:
        assert isinstance(r.id, tuple)
        _, app_id, stage, k = r.id
        assert r.content == call_content(sim.apps[app_id].run, app_id, stage, k)


def test_runs_without_the_fields_give_the_results_they_gave_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runs = [(t, plain(run)) for t, run in workload()]
    now = simulate(runs)
    assert all(r.content is None for r in now.requests)
    # Before the simulator gave calls content, every call had none.
    monkeypatch.setattr(simulation, "call_content", lambda *args: None)
    before = simulate(runs)
    assert _without_wall_clock(now.results()) == _without_wall_clock(before.results())
