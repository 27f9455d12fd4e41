"""PDGraph: learning, sampling, online update and refinement, persistence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hermes import AppRun, LLMCall, Stage, ToolCall
from hermes.core.demand_cost import LinearCost
from hermes.core.demand_sampler import DemandModel, Progress
from hermes.core.pdgraph import END, START, PDGraph, PDGraphFormatError, learn
from hermes.workloads.pdgraph_files import load_pdgraphs, save_pdgraphs

COST = LinearCost(prefill_s_per_token=0.001, decode_s_per_token=0.01, tool_weight=1.0)


def llm(name: str, *calls: tuple[int, int]) -> Stage:
    return Stage(name, "llm", "llm", tuple(LLMCall(p, c) for p, c in calls))


def tool(name: str, *durations: float, backend: str = "search") -> Stage:
    return Stage(name, "tool", backend, tuple(ToolCall(d) for d in durations))


def claims_runs(n: int, seed: int = 0) -> list[AppRun]:
    """kbqa-like runs: the fan-out of `verify` equals that of `query` (the number of claims)."""
    rng = np.random.default_rng(seed)
    runs = []
    for i in range(n):
        k = int(rng.integers(1, 9))
        runs.append(
            AppRun("claims", f"c-{i}", (
                llm("extract", (600, 70)),
                llm("query", *[(290, 17)] * k),
                tool("search", 1.0),
                llm("verify", *[(500, int(rng.integers(100, 200))) for _ in range(k)]),
            ))
        )  # fmt: skip
    return runs


def test_learns_nodes_edges_and_probabilities() -> None:
    runs = [
        AppRun("a", "1", (llm("x", (1, 1)), tool("t", 1.0), llm("x", (1, 1)))),
        AppRun("a", "2", (llm("x", (1, 1)), tool("t", 1.0))),
        AppRun("a", "3", (llm("x", (1, 1)),)),
        AppRun("a", "4", (llm("x", (1, 1)),)),
    ]
    g = learn(runs)["a"]
    assert set(g.nodes) == {"x", "t"}
    assert (g.nodes["t"].kind, g.nodes["t"].backend) == ("tool", "search")
    # x is left 5 times: to t twice, to the end three times; t goes to x once and ends once.
    assert g.transition_probabilities(START) == {"x": 1.0}
    assert g.transition_probabilities("x") == pytest.approx({"t": 0.4, END: 0.6})
    assert g.transition_probabilities("t") == pytest.approx({"x": 0.5, END: 0.5})
    assert g.runs_seen == 4


def test_one_graph_per_app_and_wrong_app_rejected() -> None:
    graphs = learn([*claims_runs(3), AppRun("other", "o", (llm("y", (1, 2)),))])
    assert set(graphs) == {"claims", "other"}
    with pytest.raises(ValueError, match="is of app 'other', not 'claims'"):
        graphs["claims"].observe(AppRun("other", "o2", (llm("y", (1, 2)),)))


def test_a_stage_cannot_change_kind() -> None:
    g = learn([AppRun("a", "1", (llm("x", (1, 1)),))])["a"]
    with pytest.raises(ValueError, match="stage 'x' is 'tool' here but 'llm'"):
        g.observe(AppRun("a", "2", (tool("x", 1.0),)))


def test_sliding_windows_keep_the_latest() -> None:
    g = PDGraph("a", window=3)
    for i in range(5):
        g.observe(AppRun("a", str(i), (llm("x", (i, i)),)))
    assert [f for _, f in g.nodes["x"].fanouts] == [1, 1, 1]
    assert [p for _, p, _ in g.nodes["x"].calls] == [2.0, 3.0, 4.0]
    assert [r.seq for r in g.runs] == [2, 3, 4]


def test_deterministic_app_has_exact_demand() -> None:
    run = AppRun("d", "1", (llm("a", (100, 10), (100, 10)), tool("t", 2.0), llm("b", (50, 5))))
    model = DemandModel(learn([run])["d"], COST)
    per_call = 100 * 0.001 + 10 * 0.01
    total = model.total(200, np.random.default_rng(0))
    assert total == pytest.approx(np.full(200, 2 * per_call + 2.0 + 0.1))
    # In stage `a` with one call left: that call, the tool and stage b remain.
    rest = model.remaining(Progress("a", unfinished_calls=1), 50, np.random.default_rng(0))
    assert rest == pytest.approx(np.full(50, per_call + 2.0 + 0.1))
    left = model.remaining_given_attained(Progress("b", 1), 0.04, 20, np.random.default_rng(0))
    assert left == pytest.approx(np.full(20, 0.1 - 0.04))
    assert (
        model.remaining_given_attained(Progress("b", 1), 0.2, 5, np.random.default_rng(0)).size == 0
    )
    done = model.remaining(Progress("b", unfinished_calls=0), 10, np.random.default_rng(0))
    assert done == pytest.approx(np.zeros(10))


def test_loop_visits_follow_the_learned_probability() -> None:
    # A loop that repeats with probability 3/4: mean visits 4.
    runs = [AppRun("l", str(i), tuple(llm("x", (0, 1)) for _ in range(1 + i))) for i in range(7)]
    g = learn(runs)["l"]
    p_repeat = g.transition_probabilities("x")["x"]
    assert p_repeat == pytest.approx(21 / 28)
    demand = DemandModel(g, COST).total(20000, np.random.default_rng(1))
    visits = demand / 0.01
    assert visits.mean() == pytest.approx(1 / (1 - p_repeat), rel=0.03)


def test_cost_function_is_pluggable() -> None:
    g = learn(claims_runs(50))["claims"]
    base = DemandModel(g, LinearCost(1e-3, 1e-2)).total(500, np.random.default_rng(2))
    double = DemandModel(g, LinearCost(2e-3, 2e-2)).total(500, np.random.default_rng(2))
    assert double == pytest.approx(2 * base)


def test_online_update_moves_the_distribution() -> None:
    g = learn([AppRun("u", "0", (llm("x", (0, 10)),))])["u"]
    model = DemandModel(g, COST)
    before = model.total(100, np.random.default_rng(0))
    version = g.version
    g.observe(AppRun("u", "1", (llm("x", (0, 1000)),)))
    assert g.version > version
    after = model.total(1000, np.random.default_rng(0))
    assert before.max() == pytest.approx(0.1)
    assert set(np.round(after, 6)) == {0.1, 10.0}


def test_refinement_conditions_on_correlated_earlier_stage() -> None:
    runs = claims_runs(400)
    model = DemandModel(learn(runs)["claims"], COST)
    corr = model.correlations["verify"][0]
    assert corr.source == "query"
    assert corr.rho == pytest.approx(1.0)
    # Finished extract and a 6-call query: verify must have 6 calls in every sample.
    finished = (llm("extract", (600, 70)), llm("query", *[(290, 17)] * 6))
    progress = Progress("search", unfinished_calls=1, finished=finished)
    refined = model.remaining(progress, 2000, np.random.default_rng(3))
    plain = model.remaining(progress, 2000, np.random.default_rng(3), refine=False)
    search_s = 1.0
    per_verify = (refined - search_s - 6 * 500 * 0.001) / 0.01  # completion tokens
    # Six calls of 100..199 completion tokens each.
    assert per_verify.min() >= 6 * 100 - 1e-6
    assert per_verify.max() <= 6 * 199 + 1e-6
    assert refined.std() < plain.std() / 2
    assert model.conditioning(progress, refine=False) == {}


def test_no_refinement_without_correlation() -> None:
    rng = np.random.default_rng(5)
    runs = [
        AppRun("i", str(i), (
            llm("a", *[(10, 10)] * int(rng.integers(1, 6))),
            llm("b", *[(10, 10)] * int(rng.integers(1, 6))),
        ))
        for i in range(300)
    ]  # fmt: skip
    model = DemandModel(learn(runs)["i"], COST)
    assert model.correlations == {}
    assert model.conditioning(Progress("b", finished=(runs[0].stages[0],))) == {}


def test_unknown_stage_and_empty_graph() -> None:
    model = DemandModel(learn(claims_runs(5))["claims"], COST)
    with pytest.raises(ValueError, match="has no stage 'nope'"):
        model.remaining(Progress("nope"), 10, np.random.default_rng(0))
    with pytest.raises(ValueError, match="learned no runs"):
        DemandModel(PDGraph("empty")).total(10, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unfinished_calls"):
        Progress("x", unfinished_calls=-1)


def test_same_seed_same_samples() -> None:
    model = DemandModel(learn(claims_runs(100))["claims"], COST)
    a = model.total(300, np.random.default_rng(9))
    b = model.total(300, np.random.default_rng(9))
    c = model.total(300, np.random.default_rng(10))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_persistence_round_trip(tmp_path: Path) -> None:
    graphs = learn([*claims_runs(120), AppRun("solo", "s", (llm("x", (3, 4)),))], window=50)
    path = tmp_path / "g.json"
    save_pdgraphs(path, graphs)
    loaded = load_pdgraphs(path)
    assert set(loaded) == {"claims", "solo"}
    for app, g in graphs.items():
        h = loaded[app]
        assert h.to_dict() == g.to_dict()
        finished = (llm("extract", (600, 70)), llm("query", *[(290, 17)] * 3))
        p = Progress("search", 1, finished) if app == "claims" else Progress()
        x = DemandModel(g, COST).remaining(p, 400, np.random.default_rng(4))
        y = DemandModel(h, COST).remaining(p, 400, np.random.default_rng(4))
        assert np.array_equal(x, y)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ('{"format": "x", "apps": {}}', "pdgraphs.format: expected 'hermes-pdgraph/1'"),
        ('{"format": "hermes-pdgraph/1", "apps": []}', "pdgraphs.apps: expected an object"),
        ('{"format": "hermes-pdgraph/1", "apps": {"a": {"app": "a"}}}', "pdgraphs.apps.a.window"),
    ],
)
def test_damaged_files_are_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(PDGraphFormatError, match=message) as info:
        load_pdgraphs(path)
    assert str(info.value).startswith(str(path))


def test_damaged_node_is_named(tmp_path: Path) -> None:
    d = json.loads(
        json.dumps(
            {"format": "hermes-pdgraph/1", "apps": {"c": learn(claims_runs(3))["claims"].to_dict()}}
        )
    )
    d["apps"]["c"]["nodes"]["query"]["calls"][1] = [1, "x", 2]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(PDGraphFormatError, match=r"pdgraphs\.apps\.c\.nodes\.query\.calls\[1\]"):
        load_pdgraphs(path)
