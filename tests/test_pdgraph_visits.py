"""A PDGraph that counts a loop's iterations: hazards per visit number, the remainder sampled
from an application's own visit count, persistence of the counts and files without them."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hermes import AppRun, LLMCall, Stage, ToolCall
from hermes.core.demand_cost import LinearCost
from hermes.core.demand_sampler import DemandModel, Progress
from hermes.core.pdgraph import END, PDGraph, PDGraphFormatError, learn
from hermes.core.pdgraph_summary import summarize
from hermes.core.visit_hazards import MIN_VISIT_OBSERVATIONS, visit_table
from hermes.gateway.apps import AppTracker
from hermes.gateway.context import parse_context
from hermes.policies.base import PolicyContext
from hermes.policies.registry import make_policy
from hermes.workloads.templates import generate_runs

# Every thought costs 1 s of service (1000 prompt tokens at 1 ms), an act nothing: a sampled
# remainder in seconds is the number of thoughts still to come.
COST = LinearCost(prefill_s_per_token=0.001, decode_s_per_token=0.0, tool_weight=0.0)
THOUGHT = Stage("thought", "llm", "llm", (LLMCall(1000, 1),))
ACT = Stage("act", "tool", "env", (ToolCall(0.2),))


def episode(steps: int, i: int = 0) -> AppRun:
    """A ReAct episode: thought, act, ... thought, act (``steps`` of each)."""
    return AppRun("agent", f"r{i}", (THOUGHT, ACT) * steps)


def at_act(step: int) -> Progress:
    """An application whose ``step``-th act is running: ``step`` thoughts done."""
    return Progress("act", 1, (THOUGHT, ACT) * (step - 1) + (THOUGHT,))


def graph_of(lengths: list[int]) -> PDGraph:
    return learn(episode(k, i) for i, k in enumerate(lengths))["agent"]


def thoughts_left(g: PDGraph, progress: Progress, n: int = 4000, seed: int = 0) -> np.ndarray:
    return DemandModel(g, COST).remaining(progress, n, np.random.default_rng(seed))


# ---- hazards from counts --------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=200))
def test_rows_are_the_exit_frequencies_of_each_visit_and_the_pooled_tail(
    lengths: list[int],
) -> None:
    table = graph_of(lengths).visit_table("act")
    longest = max(lengths)
    # Departures from act after its v-th visit, and the episodes that ended there.
    reached = [sum(k >= v for k in lengths) for v in range(1, longest + 1)]
    ended = Counter(lengths)
    assert np.allclose(table.rows.sum(axis=1), 1.0)

    def p_end(visit: int) -> float:
        return table.probabilities(visit).get(END, 0.0)

    if sum(reached) < MIN_VISIT_OBSERVATIONS:
        # Too few departures to count by visit: the aggregate, as a Markov graph has it.
        assert table.depth == 1
        assert p_end(1) == pytest.approx(len(lengths) / sum(lengths))
        return
    # Visits with enough departures have their own exit frequency; from the first sparse one
    # (or the latest earlier visit whose tail holds enough) on, one pooled row whose exit
    # hazard is runs / departures.
    sparse = [v for v in range(1, longest + 1) if reached[v - 1] < MIN_VISIT_OBSERVATIONS]
    first = sparse[0] if sparse else longest + 1
    tails = [sum(reached[v - 1 :]) for v in range(1, longest + 1)]
    start = max(
        v for v in range(1, min(first, longest) + 1) if tails[v - 1] >= MIN_VISIT_OBSERVATIONS
    )
    for visit in range(1, longest + 3):
        if visit < start or not sparse:
            v = min(visit, longest)
            assert p_end(visit) == pytest.approx(ended[v] / reached[v - 1]), visit
        else:
            assert p_end(visit) == pytest.approx(reached[start - 1] / tails[start - 1]), visit


@settings(max_examples=50, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["a", "b", END]), st.integers(1, 50), min_size=1),
    st.integers(1, 60),
)
def test_without_visit_counts_every_visit_uses_the_aggregate(
    aggregate: dict[str, int], visit: int
) -> None:
    # What a graph read from a file written before visits were counted has.
    dsts = sorted(aggregate)
    table = visit_table(dsts, aggregate, {})
    total = sum(aggregate.values())
    assert table.probabilities(visit) == pytest.approx({d: n / total for d, n in aggregate.items()})


def test_visit_numbers_start_at_one() -> None:
    with pytest.raises(ValueError, match="start at 1"):
        visit_table(["x"], {"x": 30}, {0: {"x": 30}, 1: {"x": 1}})
    with pytest.raises(ValueError, match="visit must be >= 1"):
        graph_of([3] * 30).visit_table("act").row(0)


# ---- the remainder from the application's own visit count ---------------------------------


@settings(max_examples=25, deadline=None)
@given(k=st.integers(1, 30), j=st.integers(1, 30))
def test_a_deterministic_loop_of_k_steps_has_exactly_k_minus_j_left_after_step_j(
    k: int, j: int
) -> None:
    g = graph_of([k] * MIN_VISIT_OBSERVATIONS)
    if j > k:
        return
    left = thoughts_left(g, at_act(j), n=200, seed=j)
    assert left == pytest.approx(np.full(200, float(k - j)))


@settings(max_examples=4, deadline=None)
@given(p_end=st.sampled_from([0.1, 0.2, 0.35]), seed=st.integers(0, 2**16))
def test_with_geometric_episodes_the_remainder_does_not_depend_on_the_step(
    p_end: float, seed: int
) -> None:
    lengths = np.random.default_rng(seed).geometric(p_end, 3000)
    g = graph_of(lengths.tolist())
    truth = (1 - p_end) / p_end  # a geometric loop's remainder, the same at every step
    for step in (1, 3, 6):
        left = thoughts_left(g, at_act(step), n=6000, seed=step)
        # What the runs that got this far had left: the walk reproduces it, up to its own
        # sampling error and a little for the pooled tail of rarely reached visits.
        reached = lengths[lengths >= step] - step
        mc = left.std() / np.sqrt(left.size)
        assert abs(left.mean() - reached.mean()) <= 4 * mc + 0.03 * reached.mean(), (
            step,
            left.mean(),
            reached.mean(),
        )
        # And that is the geometric remainder, within what the runs that reached the step
        # (fewer for later steps: 344 of 3,000 reach step 6 at p_end 0.35) can tell.
        data = reached.std() / np.sqrt(reached.size)
        assert abs(left.mean() - truth) <= 4 * (data + mc) + 0.03 * truth, (step, left.mean())


def test_narrow_episodes_give_a_later_step_a_shorter_remainder() -> None:
    """react_alfw, learned from its template: an agent on its 20th step has fewer steps left
    than one on its 2nd, and each remainder is what the runs that got that far had left."""
    runs = generate_runs("react_alfw", 600, seed=5)
    lengths = np.array([r.llm_call_count for r in runs])
    steps = [Stage("thought", "llm", "llm", (LLMCall(1000, 1),)), ACT]
    g = learn(
        AppRun("agent", r.run_id, tuple(steps) * int(n)) for r, n in zip(runs, lengths, strict=True)
    )
    graph = g["agent"]
    early = thoughts_left(graph, at_act(2))
    late = thoughts_left(graph, at_act(20))
    assert late.mean() < early.mean() - 5
    for step, left in ((2, early), (20, late)):
        truth = lengths[lengths >= step] - step
        se = truth.std() / np.sqrt(truth.size) + left.std() / np.sqrt(left.size)
        assert abs(left.mean() - truth.mean()) <= 4 * se + 0.25, step
    # The fresh application's total: the episodes' lengths again (learn -> sample).
    total = DemandModel(graph, COST).total(6000, np.random.default_rng(1))
    assert total.mean() == pytest.approx(lengths.mean(), rel=0.03)
    assert np.percentile(total, 95) == pytest.approx(np.percentile(lengths, 95), abs=1.5)


def test_states_differ_by_visit_count_only_where_it_matters() -> None:
    g = graph_of([15] * 30 + [25] * 30)
    model = DemandModel(g, COST)
    s2, s20 = model.state(at_act(2)), model.state(at_act(20))
    assert s2 != s20
    assert s2.label() != s20.label()
    assert dict(s2.visits)["act"] == 2
    # Beyond the last row of a stage the visit number changes nothing: one state.
    depth = g.visit_table("act").depth
    assert model.state(at_act(depth + 1)) == model.state(at_act(depth + 3))
    # A graph without loops keys its states as before.
    flat = learn(AppRun("f", str(i), (THOUGHT, ACT)) for i in range(30))["f"]
    assert DemandModel(flat, COST).state(Progress("act", 1, (THOUGHT,))).visits == ()


# ---- persistence ------------------------------------------------------------------------------


def test_visit_counts_survive_the_round_trip() -> None:
    g = graph_of([3, 5, 5, 8] * 10)
    back = PDGraph.from_dict(json.loads(json.dumps(g.to_dict())))
    assert back.visit_edges == g.visit_edges
    assert np.array_equal(back.visit_table("act").rows, g.visit_table("act").rows)


def test_a_file_without_visit_counts_loads_and_samples_as_a_markov_graph() -> None:
    g = graph_of([15] * 30 + [25] * 30)
    old = g.to_dict()
    del old["visit_edges"]
    old["written_by"] = "a later version"  # unknown keys are ignored
    back = PDGraph.from_dict(json.loads(json.dumps(old)))
    assert back.visit_edges == {}
    table = back.visit_table("act")
    assert table.depth == 1
    assert table.probabilities(7) == pytest.approx(g.transition_probabilities("act"))
    early, late = thoughts_left(back, at_act(2)), thoughts_left(back, at_act(20))
    assert abs(early.mean() - late.mean()) < 0.5  # no visit counts: the same remainder
    # Learning goes on from the old file, counting visits from then on.
    back.observe(episode(4, 99))
    assert back.visit_edges["act"][4] == Counter({END: 1})


@pytest.mark.parametrize(
    ("visit_edges", "message"),
    [
        ({"act": {"0": {"thought": 1}}}, r"visit_edges\.act\.0: expected a visit number"),
        ({"act": {"999": {"thought": 1}}}, r"visit_edges\.act\.999: expected a visit number"),
        ({"act": {"1": {"nowhere": 1}}}, r"visit_edges\.act\.1\.nowhere: no such node"),
        ({"act": {"1": {"thought": -1}}}, r"visit_edges\.act\.1\.thought: expected a count"),
        ({"ghost": {"1": {"act": 1}}}, r"visit_edges\.ghost: no such node"),
        ({"act": []}, r"visit_edges\.act: expected an object"),
    ],
)
def test_bad_visit_counts_are_refused_with_where(visit_edges: object, message: str) -> None:
    d = graph_of([3] * 5).to_dict()
    d["visit_edges"] = visit_edges
    with pytest.raises(PDGraphFormatError, match=message):
        PDGraph.from_dict(d, "g")


def test_inspect_shows_the_loop_by_visit() -> None:
    g = graph_of([2] * 30 + [3] * 30)
    rows = summarize(DemandModel(g, COST), samples=50)["edges_by_visit"]
    assert set(rows) == {"act"}  # thought -> act is the same on every visit
    assert rows["act"][0] == {"thought": 1.0}
    assert rows["act"][1] == pytest.approx({"thought": 0.5, END: 0.5})
    assert rows["act"][2] == {END: 1.0}


def test_the_gateway_ranks_an_agent_near_its_end_ahead_of_one_near_its_start() -> None:
    """Through the gateway's tracker: two agents waiting at their act (a tool stage), one on
    its 2nd step, one on its 14th; episodes last 15 or 16 steps. A Markov graph could not tell
    them apart; counting visits, gittins puts the one with one step or two left first."""
    g = graph_of([15] * 30 + [16] * 30)
    policy = make_policy("gittins", PolicyContext(models={"agent": DemandModel(g, COST)}))
    tracker = AppTracker(cost=COST)
    views = []
    for app_id, steps in (("early", 2), ("late", 14)):
        ctx = parse_context(
            {"x-hermes-app-id": app_id, "x-hermes-app-type": "agent", "x-hermes-stage": "thought"}
        )
        app, _ = tracker.app_for(ctx, 0.0)
        for step in range(steps):
            ticket = tracker.start_call(app, "thought", 1000, float(step))
            tracker.end_call(ticket, 1000, 1, step + 0.5)
            tracker.tool_started(app, "act", "env", step + 0.5)
            if step < steps - 1:
                assert tracker.tool_finished(app, "act", step + 0.9)
        assert app.view.stage is not None
        assert app.view.stage.name == "act"
        # What the visit count comes from: the stages finished, in the tracker's view.
        now = Progress("act", 1, tuple(app.view.finished))
        assert now.visits()["act"] == steps
        views.append(app.view)
    ranks = policy.rank_apps(views, 20.0)
    assert ranks is not None
    early, late = ranks
    assert late < early
    assert late == pytest.approx(1.5, abs=0.5)  # one or two thoughts (1 s each) left
    assert early == pytest.approx(13.5, abs=0.5)
