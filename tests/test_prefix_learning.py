"""What `hermes learn` records about prefixes where runs say nothing: history resend per
stage and the bound on its shared prefix, kept in the PDGraph and its file."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hermes.core.demand_sampler import DemandModel
from hermes.core.pdgraph import PDGraph, PDGraphFormatError, learn
from hermes.core.pdgraph_summary import summarize
from hermes.core.prefix_learning import StagePrefix, detected, resend_checks
from hermes.core.runs import AppRun, LLMCall, Stage, ToolCall
from hermes.workloads.pdgraph_files import load_pdgraphs, save_pdgraphs


def llm(name: str, *calls: tuple[int, int]) -> Stage:
    return Stage(name, "llm", "llm", tuple(LLMCall(p, c) for p, c in calls))


def tool() -> Stage:
    return Stage("act", "tool", "env", (ToolCall(0.2),))


def agent_runs(n: int, *, resend: bool, slack: float = 1.0, seed: int = 0) -> list[AppRun]:
    """Agents of 2 to 6 thoughts; with `resend` each prompt is the previous prompt and
    completion (times `slack`) plus an observation, else a fresh prompt of similar size."""
    rng = np.random.default_rng(seed)
    runs = []
    for i in range(n):
        prompt = int(rng.integers(800, 1200))
        stages: list[Stage] = []
        for _ in range(int(rng.integers(2, 7))):
            completion = int(rng.integers(5, 60))
            stages += [llm("thought", (prompt, completion)), tool()]
            observation = int(rng.integers(0, 80))
            if resend:
                prompt = int((prompt + completion) * slack) + observation
            else:
                prompt = int(rng.integers(800, 1400))
        runs.append(AppRun("agent", f"a-{i}", tuple(stages)))
    return runs


def test_resend_is_detected_in_agents_that_resend() -> None:
    g = learn(agent_runs(50, resend=True))["agent"]
    node = g.nodes["thought"]
    assert node.history_resend
    assert node.resend_share == 1.0
    assert g.learned_prefix("thought") == StagePrefix(node.smallest_prompt or 0, True)


def test_no_resend_in_agents_that_send_fresh_prompts() -> None:
    node = learn(agent_runs(50, resend=False))["agent"].nodes["thought"]
    assert not node.history_resend
    assert node.resend_share is not None
    assert node.resend_share < 0.9


def test_the_tolerance_forgives_a_few_tokens_but_not_a_truncated_history() -> None:
    assert learn(agent_runs(50, resend=True, slack=0.99))["agent"].nodes["thought"].history_resend
    truncated = learn(agent_runs(50, resend=True, slack=0.9))["agent"].nodes["thought"]
    assert not truncated.history_resend


def test_a_prompt_that_is_merely_longer_is_not_a_resend() -> None:
    """FacTool-like: a verification after a one-claim query is longer than the query and its
    answer, but does not track them."""
    rng = np.random.default_rng(1)
    runs = [
        AppRun("claims", f"c-{i}", (
            llm("query", (int(rng.integers(285, 295)), int(rng.integers(12, 22)))),
            llm("verify", (int(rng.integers(350, 700)), 140)),
        ))
        for i in range(200)
    ]  # fmt: skip
    node = learn(runs)["claims"].nodes["verify"]
    assert node.resend_share == 1.0  # the inequality alone would call it a resend
    assert not node.history_resend


def test_a_call_after_a_fan_out_is_not_checked() -> None:
    run = AppRun("m", "r", (llm("map", (400, 100), (400, 120)), llm("reduce", (900, 50)),
                            llm("final", (1000, 10))))  # fmt: skip
    assert list(resend_checks(run)) == [("final", 950, 1000)]


def test_too_few_checks_learn_nothing() -> None:
    assert not detected([(100, 150), (200, 260)])
    assert detected([(100, 150), (200, 260), (300, 340)])


def test_the_shared_prefix_is_a_fraction_of_the_smallest_prompt() -> None:
    runs = agent_runs(40, resend=True)
    smallest = min(c.prompt_tokens for r in runs for s in r.stages for c in s.llm_calls())
    assert learn(runs)["agent"].learned_prefix("thought") == StagePrefix(smallest, True)
    half = learn(runs, prefix_fraction=0.5)["agent"]
    assert half.learned_prefix("thought") == StagePrefix(smallest // 2, True)
    assert half.learned_prefix("act") is None  # a tool stage has no prompt
    assert set(half.learned_prefixes()) == {"thought"}
    with pytest.raises(ValueError, match="prefix_fraction"):
        PDGraph("x", prefix_fraction=1.5)


def test_what_was_learned_survives_the_file(tmp_path: Path) -> None:
    graphs = learn(agent_runs(30, resend=True), prefix_fraction=0.8)
    path = tmp_path / "g.json"
    save_pdgraphs(path, graphs)
    loaded = load_pdgraphs(path)["agent"]
    assert loaded.to_dict() == graphs["agent"].to_dict()
    assert loaded.learned_prefixes() == graphs["agent"].learned_prefixes()
    assert loaded.nodes["thought"].history_resend


def test_a_file_from_before_loads_with_nothing_learned(tmp_path: Path) -> None:
    graphs = learn(agent_runs(30, resend=True))
    d = json.loads(
        json.dumps({"format": "hermes-pdgraph/1", "apps": {"agent": graphs["agent"].to_dict()}})
    )
    del d["apps"]["agent"]["prefix_fraction"]
    for node in d["apps"]["agent"]["nodes"].values():
        del node["resends"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(d))
    old = load_pdgraphs(path)["agent"]
    assert old.prefix_fraction == 1.0
    assert not old.nodes["thought"].history_resend
    assert old.nodes["thought"].resend_share is None


APP = r"pdgraphs\.apps\.agent"
THOUGHT = APP + r"\.nodes\.thought"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda g: g.update(prefix_fraction=2), APP + r"\.prefix_fraction: expected a number in"),
        (lambda g: g.update(prefix_fraction="all"), APP + r"\.prefix_fraction: expected a number"),
        (lambda g: g["nodes"]["thought"].update(resends=[[0, 1]]),
         THOUGHT + r"\.resends\[0\]: expected a list of 3"),
        (lambda g: g["nodes"]["thought"].update(resends={}), THOUGHT + r"\.resends: expected a"),
    ],
)  # fmt: skip
def test_a_damaged_learned_field_is_named(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], message: str
) -> None:
    d: dict[str, Any] = {
        "format": "hermes-pdgraph/1",
        "apps": {"agent": learn(agent_runs(5, resend=True))["agent"].to_dict()},
    }
    change(d["apps"]["agent"])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(PDGraphFormatError, match=message):
        load_pdgraphs(path)


def test_the_summary_shows_what_was_learned() -> None:
    g = learn(agent_runs(30, resend=True))["agent"]
    s = summarize(DemandModel(g), samples=50)
    assert s["prefix_fraction"] == 1.0
    prefix = s["nodes"]["thought"]["prefix"]
    assert prefix["history_resend"] is True
    assert prefix["resend_share"] == 1.0
    assert prefix["resend_checks"] == len(g.nodes["thought"].resends)
    assert prefix["shared_prefix_tokens"] == g.nodes["thought"].smallest_prompt
    assert "prefix" not in s["nodes"]["act"]
