"""`hermes learn` on generated runs recovers each application's structure (docs/apps.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hermes.cli import app
from hermes.core.pdgraph import END, START, PDGraph
from hermes.workloads.pdgraph_files import load_pdgraphs

# Stage kinds and backends, and the transition probabilities, as docs/apps.md states them.
S, E = START, END
STRUCTURE: dict[str, dict[str, tuple[str, str]]] = {
    "factool_code": {"generate_queries": ("llm", "llm"), "generate_solutions": ("llm", "llm"),
                     "code_execution": ("tool", "docker")},
    "factool_kbqa": {"extract_claims": ("llm", "llm"), "generate_queries": ("llm", "llm"),
                     "search": ("tool", "search"), "verifies": ("llm", "llm")},
    "factool_math": {"extract_claims": ("llm", "llm"), "generate_queries": ("llm", "llm"),
                     "code_execution": ("tool", "docker")},
    "react_fever": {"thought": ("llm", "llm"), "search": ("tool", "search")},
    "react_alfw": {"thought": ("llm", "llm"), "act": ("tool", "env")},
    "langchain_mapreduce": {"generate_summary": ("llm", "llm"),
                            "collapse_summaries": ("llm", "llm"),
                            "generate_final_summary": ("llm", "llm")},
}  # fmt: skip
TRANSITIONS: dict[str, dict[str, dict[str, float]]] = {
    "factool_code": {S: {"generate_queries": 1.0}, "generate_queries": {"generate_solutions": 1.0},
                     "generate_solutions": {"code_execution": 0.988, E: 0.012},
                     "code_execution": {E: 1.0}},
    "factool_kbqa": {S: {"extract_claims": 1.0}, "extract_claims": {"generate_queries": 1.0},
                     "generate_queries": {"search": 1.0}, "search": {"verifies": 1.0},
                     "verifies": {E: 1.0}},
    "factool_math": {S: {"extract_claims": 1.0}, "extract_claims": {"generate_queries": 1.0},
                     "generate_queries": {"code_execution": 1.0}, "code_execution": {E: 1.0}},
    "react_fever": {S: {"thought": 1.0},
                    "thought": {"search": 0.535, E: 0.461, "thought": 0.005},
                    "search": {"thought": 1.0}},
    "react_alfw": {S: {"thought": 1.0}, "thought": {"act": 1.0},
                   "act": {"thought": 0.936, E: 0.064}},
    "langchain_mapreduce": {
        S: {"generate_summary": 1.0},
        "generate_summary": {"collapse_summaries": 0.863, "generate_final_summary": 0.137},
        "collapse_summaries": {"collapse_summaries": 0.158, "generate_final_summary": 0.842},
        "generate_final_summary": {E: 1.0}},
}  # fmt: skip
RUNS = 1500


@pytest.fixture(scope="module")
def graphs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, PDGraph]:
    tmp: Path = tmp_path_factory.mktemp("learn")
    runner = CliRunner()
    files = []
    for i, name in enumerate(STRUCTURE):
        path = tmp / f"{name}.jsonl"
        res = runner.invoke(app, ["generate", name, "--runs", str(RUNS), "--seed", str(i),
                                  "-o", str(path)])  # fmt: skip
        assert res.exit_code == 0, res.output
        files.append(str(path))
    out = tmp / "pdgraphs.json"
    res = runner.invoke(app, ["learn", *files, "-o", str(out)])
    assert res.exit_code == 0, res.output
    return load_pdgraphs(out)


@pytest.mark.parametrize("name", list(STRUCTURE))
def test_learned_structure_matches_apps_md(graphs: dict[str, PDGraph], name: str) -> None:
    g = graphs[name]
    assert g.runs_seen == RUNS
    assert {n: (v.kind, v.backend) for n, v in g.nodes.items()} == STRUCTURE[name]
    assert set(g.edges) == set(TRANSITIONS[name])
    for src, expected in TRANSITIONS[name].items():
        learned = g.transition_probabilities(src)
        visits = sum(g.edges[src].values())
        assert set(learned) <= set(expected), f"{src}: an edge docs/apps.md does not list"
        for dst, p in expected.items():
            # four binomial standard errors, with a floor for probabilities near 0 or 1
            tolerance = 4 * math.sqrt(max(p * (1 - p), 0.005) / visits)
            got = learned.get(dst, 0.0)
            assert abs(got - p) <= tolerance, f"{src}->{dst}: {got:.4f} vs {p} (±{tolerance:.4f})"


# Where the templates resend history (the ReAct agents): every other stage sends a fresh prompt.
RESENDING = {("react_fever", "thought"), ("react_alfw", "thought")}


@pytest.mark.parametrize("name", list(STRUCTURE))
def test_learn_detects_history_resend_where_the_templates_resend(
    graphs: dict[str, PDGraph], name: str
) -> None:
    g = graphs[name]
    for stage, node in g.nodes.items():
        if node.kind != "llm":
            continue
        assert node.history_resend == ((name, stage) in RESENDING), stage
        prefix = g.learned_prefix(stage)
        assert prefix is not None
        assert 0 < prefix.shared_prefix_tokens <= node.smallest_prompt  # type: ignore[operator]


def test_inspect_shows_what_was_learned(graphs: dict[str, PDGraph], tmp_path: Path) -> None:
    from hermes.workloads.pdgraph_files import save_pdgraphs

    path = tmp_path / "g.json"
    save_pdgraphs(path, graphs)
    res = CliRunner().invoke(app, ["inspect", str(path), "--json"])
    assert res.exit_code == 0, res.output
    thought = json.loads(res.output)["react_alfw"]["nodes"]["thought"]["prefix"]
    assert thought["history_resend"] is True
    assert thought["resend_share"] == 1.0
    assert thought["resend_checks"] == graphs["react_alfw"].window  # a full window
    assert thought["shared_prefix_tokens"] == graphs["react_alfw"].nodes["thought"].smallest_prompt
