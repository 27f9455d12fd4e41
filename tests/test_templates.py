"""Synthetic application templates against the measured statistics in docs/apps.md."""

from __future__ import annotations

import json
import math
from collections import Counter
from functools import cache
from itertools import pairwise

import numpy as np
import pytest

from hermes.core.runs import AppRun, run_from_dict, run_to_dict
from hermes.workloads.templates import TEMPLATE_NAMES, generate_runs

RUNS = 2000
SEED = 20250614

# docs/apps.md, per application: stage -> (kind, backend).
STAGES: dict[str, dict[str, tuple[str, str]]] = {
    "factool_code": {
        "generate_queries": ("llm", "llm"),
        "generate_solutions": ("llm", "llm"),
        "code_execution": ("tool", "docker"),
    },
    "factool_kbqa": {
        "extract_claims": ("llm", "llm"),
        "generate_queries": ("llm", "llm"),
        "search": ("tool", "search"),
        "verifies": ("llm", "llm"),
    },
    "factool_math": {
        "extract_claims": ("llm", "llm"),
        "generate_queries": ("llm", "llm"),
        "code_execution": ("tool", "docker"),
    },
    "react_fever": {"thought": ("llm", "llm"), "search": ("tool", "search")},
    "react_alfw": {"thought": ("llm", "llm"), "act": ("tool", "env")},
    "langchain_mapreduce": {
        "generate_summary": ("llm", "llm"),
        "collapse_summaries": ("llm", "llm"),
        "generate_final_summary": ("llm", "llm"),
    },
}

# docs/apps.md "Transitions" lines; react_fever's thought branches (sum 1.001) normalised.
_FEVER = 0.535 + 0.461 + 0.005
TRANSITIONS: dict[str, dict[tuple[str, str], float]] = {
    "factool_code": {
        ("start", "generate_queries"): 1.0,
        ("generate_queries", "generate_solutions"): 1.0,
        ("generate_solutions", "code_execution"): 0.988,
        ("generate_solutions", "end"): 0.012,
        ("code_execution", "end"): 1.0,
    },
    "factool_kbqa": {
        ("start", "extract_claims"): 1.0,
        ("extract_claims", "generate_queries"): 1.0,
        ("generate_queries", "search"): 1.0,
        ("search", "verifies"): 1.0,
        ("verifies", "end"): 1.0,
    },
    "factool_math": {
        ("start", "extract_claims"): 1.0,
        ("extract_claims", "generate_queries"): 1.0,
        ("generate_queries", "code_execution"): 1.0,
        ("code_execution", "end"): 1.0,
    },
    "react_fever": {
        ("start", "thought"): 1.0,
        ("thought", "search"): 0.535 / _FEVER,
        ("thought", "end"): 0.461 / _FEVER,
        ("thought", "thought"): 0.005 / _FEVER,
        ("search", "thought"): 1.0,
    },
    "react_alfw": {
        ("start", "thought"): 1.0,
        ("thought", "act"): 1.0,
        ("act", "thought"): 0.936,
        ("act", "end"): 0.064,
    },
    "langchain_mapreduce": {
        ("start", "generate_summary"): 1.0,
        ("generate_summary", "collapse_summaries"): 0.863,
        ("generate_summary", "generate_final_summary"): 0.137,
        ("collapse_summaries", "collapse_summaries"): 0.158,
        ("collapse_summaries", "generate_final_summary"): 0.842,
        ("generate_final_summary", "end"): 1.0,
    },
}

# docs/apps.md per-call (mean, p50): (stage, "prompt" | "completion" | "seconds") -> (mean, p50).
PER_CALL: dict[str, dict[tuple[str, str], tuple[float, float]]] = {
    "factool_code": {
        ("generate_queries", "prompt"): (361, 344),
        ("generate_queries", "completion"): (72.6, 67),
        ("generate_solutions", "prompt"): (324, 308),
        ("generate_solutions", "completion"): (189, 184),
        ("code_execution", "seconds"): (0.3613, 0.3547),
    },
    "factool_kbqa": {
        ("extract_claims", "prompt"): (626, 621),
        ("extract_claims", "completion"): (74.6, 68),
        ("generate_queries", "prompt"): (290, 289),
        ("generate_queries", "completion"): (17.3, 17),
        ("search", "seconds"): (1.29, 1.089),
        ("verifies", "prompt"): (508, 482),
        ("verifies", "completion"): (148, 142),
    },
    "factool_math": {
        ("extract_claims", "prompt"): (838, 829),
        ("extract_claims", "completion"): (97.4, 81),
        ("generate_queries", "prompt"): (267, 268),
        ("generate_queries", "completion"): (30.3, 32),
        ("code_execution", "seconds"): (0.0002569, 0.000243),
    },
    "react_fever": {
        ("thought", "prompt"): (1160, 1108),
        ("thought", "completion"): (37.1, 36),
        ("search", "seconds"): (2.089, 1.872),
    },
    "react_alfw": {
        ("thought", "prompt"): (2023, 2017),
        ("thought", "completion"): (14.9, 7),
        ("act", "seconds"): (0.1655, 0.1708),
    },
    "langchain_mapreduce": {
        ("generate_summary", "prompt"): (426, 470),
        ("generate_summary", "completion"): (179, 161),
        ("collapse_summaries", "prompt"): (1440, 1712),
        ("collapse_summaries", "completion"): (581, 559),
        ("generate_final_summary", "prompt"): (1449, 1357),
        ("generate_final_summary", "completion"): (711, 648),
    },
}

# docs/apps.md fan-out means of the stages whose fan-out varies (the others must be 1, or 3).
FANOUT: dict[str, dict[str, float]] = {
    "factool_code": {"generate_queries": 1, "generate_solutions": 3, "code_execution": 1},
    "factool_kbqa": {"extract_claims": 1, "generate_queries": 3.5, "search": 1, "verifies": 3.5},
    "factool_math": {"extract_claims": 1, "generate_queries": 2.85, "code_execution": 1},
    "react_fever": {"thought": 1, "search": 1},
    "react_alfw": {"thought": 1, "act": 1},
    "langchain_mapreduce": {
        "generate_summary": 20.99,
        "collapse_summaries": 2.63,
        "generate_final_summary": 1,
    },
}

# docs/apps.md per run: (total tokens mean, llm calls mean, stages mean).
PER_RUN: dict[str, tuple[float, float, float]] = {
    "factool_code": (1972, 4.0, 3.0),
    "factool_kbqa": (4076, 8.0, 4.0),
    "factool_math": (1783, 3.9, 3.0),
    "react_fever": (2597, 2.2, 3.3),
    "react_alfw": (31987, 15.7, 31.4),
    "langchain_mapreduce": (20302, 24.7, 3.0),
}

CALL_TOLERANCE = 0.05  # relative, per-call means and p50s over ~2000 runs
FANOUT_TOLERANCE = 0.05


@cache
def runs_of(app: str) -> tuple[AppRun, ...]:
    return tuple(generate_runs(app, RUNS, SEED))


def call_values(app: str, stage: str, field: str) -> list[float]:
    values: list[float] = []
    for run in runs_of(app):
        for s in run.stages:
            if s.name != stage:
                continue
            if field == "seconds":
                values += [c.duration_s for c in s.tool_calls()]
            else:
                values += [getattr(c, f"{field}_tokens") for c in s.llm_calls()]
    return values


def test_names_cover_the_six_applications() -> None:
    assert set(TEMPLATE_NAMES) == set(STAGES)
    assert TEMPLATE_NAMES[0] == "factool_code"


@pytest.mark.parametrize("app", TEMPLATE_NAMES)
def test_stages_have_the_documented_kinds_and_backends(app: str) -> None:
    seen = {(s.name, s.kind, s.backend) for run in runs_of(app) for s in run.stages}
    assert seen == {(name, kind, backend) for name, (kind, backend) in STAGES[app].items()}
    assert all(run.run_id == f"{app}-{i}" and run.app == app for i, run in enumerate(runs_of(app)))
    assert all(run.arrival_s is None and run.deadline_s is None for run in runs_of(app))


@pytest.mark.parametrize("app", TEMPLATE_NAMES)
def test_transition_frequencies_match_within_sampling_error(app: str) -> None:
    moves: Counter[tuple[str, str]] = Counter()
    for run in runs_of(app):
        path = ["start", *(s.name for s in run.stages), "end"]
        moves.update(pairwise(path))
    expected = TRANSITIONS[app]
    assert set(moves) <= set(expected), "a transition docs/apps.md does not list"
    leaving: Counter[str] = Counter()
    for (src, _), count in moves.items():
        leaving[src] += count
    for (src, dst), p in expected.items():
        n = leaving[src]
        observed = moves[(src, dst)] / n
        binomial_se = math.sqrt(p * (1 - p) / n)
        assert abs(observed - p) <= 4 * binomial_se + 1e-12, (src, dst, observed, p)


@pytest.mark.parametrize("app", TEMPLATE_NAMES)
def test_per_call_means_and_medians_match(app: str) -> None:
    for (stage, field), (mean, p50) in PER_CALL[app].items():
        values = np.asarray(call_values(app, stage, field), dtype=np.float64)
        assert values.min() >= 0
        assert float(values.mean()) == pytest.approx(mean, rel=CALL_TOLERANCE), (stage, field)
        assert float(np.median(values)) == pytest.approx(p50, rel=CALL_TOLERANCE), (stage, field)


@pytest.mark.parametrize("app", TEMPLATE_NAMES)
def test_fanout_means_match(app: str) -> None:
    for stage, mean in FANOUT[app].items():
        fanouts = [s.fanout for run in runs_of(app) for s in run.stages if s.name == stage]
        assert float(np.mean(fanouts)) == pytest.approx(mean, rel=FANOUT_TOLERANCE), stage


def test_fanout_maxima_are_respected() -> None:
    maxima = {
        ("factool_kbqa", "generate_queries"): 13,
        ("factool_math", "generate_queries"): 9,
        ("langchain_mapreduce", "generate_summary"): 44,
        ("langchain_mapreduce", "collapse_summaries"): 5,
    }
    for (app, stage), most in maxima.items():
        assert max(s.fanout for run in runs_of(app) for s in run.stages if s.name == stage) <= most


@pytest.mark.parametrize("app", TEMPLATE_NAMES)
def test_per_run_means_match(app: str) -> None:
    tokens, calls, stages = PER_RUN[app]
    runs = runs_of(app)
    assert np.mean([r.total_tokens for r in runs]) == pytest.approx(tokens, rel=0.15)
    assert np.mean([r.llm_call_count for r in runs]) == pytest.approx(calls, rel=0.10)
    assert np.mean([len(r.stages) for r in runs]) == pytest.approx(stages, rel=0.10)


def test_loops_stop_at_the_observed_maxima() -> None:
    def most(app: str, stage: str) -> int:
        return max(sum(s.name == stage for s in run.stages) for run in runs_of(app))

    assert most("react_fever", "thought") <= 4
    assert most("react_alfw", "thought") <= 43
    assert most("langchain_mapreduce", "collapse_summaries") <= 4


def test_react_alfw_prompts_grow_along_the_episode() -> None:
    for run in runs_of("react_alfw")[:200]:
        prompts = [c.prompt_tokens for s in run.stages for c in s.llm_calls()]
        assert prompts == sorted(prompts)
    long_runs = [r for r in runs_of("react_alfw") if r.llm_call_count >= 20]
    first = np.mean([r.stages[0].llm_calls()[0].prompt_tokens for r in long_runs])
    twentieth = np.mean([r.stages[38].llm_calls()[0].prompt_tokens for r in long_runs])
    assert twentieth > first + 200


def test_kbqa_queries_and_verifications_share_the_claim_count() -> None:
    for run in runs_of("factool_kbqa"):
        fanout = {s.name: s.fanout for s in run.stages}
        assert fanout["generate_queries"] == fanout["verifies"]


@pytest.mark.parametrize("app", TEMPLATE_NAMES)
def test_same_seed_same_runs_other_seed_other_runs(app: str) -> None:
    runs = generate_runs(app, 30, seed=7)
    assert generate_runs(app, 30, seed=7) == runs
    assert generate_runs(app, 30, seed=8) != runs
    assert generate_runs(app, 10, seed=7) == runs[:10]  # a run does not depend on n


def test_unknown_application_is_refused_with_the_known_names() -> None:
    with pytest.raises(ValueError, match="unknown application 'nope'") as info:
        generate_runs("nope", 1, seed=0)
    assert all(name in str(info.value) for name in TEMPLATE_NAMES)


def test_run_count_must_not_be_negative() -> None:
    assert generate_runs("factool_code", 0, seed=0) == []
    with pytest.raises(ValueError, match="non-negative"):
        generate_runs("factool_code", -1, seed=0)


@pytest.mark.parametrize("app", TEMPLATE_NAMES)
def test_runs_survive_the_format_v1_round_trip(app: str) -> None:
    for run in runs_of(app):
        assert run_from_dict(run_to_dict(run)) == run
        assert run_from_dict(json.loads(json.dumps(run_to_dict(run)))) == run


# ---- what calls share (docs/app-trace-format.md) ------------------------------------------------

# Each stage's template prefix in tokens (the agents' are checked for consistency instead).
PREFIXES: dict[str, dict[str, int]] = {
    "factool_code": {"generate_queries": 33, "generate_solutions": 75},
    "factool_kbqa": {"extract_claims": 520, "generate_queries": 270, "verifies": 167},
    "factool_math": {"extract_claims": 472, "generate_queries": 107},
    "langchain_mapreduce": {
        "generate_summary": 10,
        "collapse_summaries": 10,
        "generate_final_summary": 10,
    },
    "react_fever": {"thought": 1020},
}


@pytest.mark.parametrize("app", TEMPLATE_NAMES)
def test_every_call_says_what_it_shares(app: str) -> None:
    calls = [
        ((stage.name, call.shared_prefix_id), call)
        for run in runs_of(app)[:300]
        for stage in run.stages
        for call in stage.llm_calls()
    ]
    prefix_of: dict[tuple[str, str | None], int] = {}
    for key, call in calls:
        assert call.shared_prefix_tokens is not None
        assert call.history_tokens is not None
        assert call.shared_prefix_tokens + call.history_tokens <= call.prompt_tokens
        prefix_of[key] = max(prefix_of.get(key, 0), call.shared_prefix_tokens)
    # One prefix per stage (or id), the same in every run; a shorter prompt holds its start.
    for key, call in calls:
        assert call.shared_prefix_tokens == min(prefix_of[key], call.prompt_tokens)
    if app in PREFIXES:
        assert {name: n for (name, _), n in prefix_of.items()} == PREFIXES[app]
    if app == "react_alfw":  # one few-shot prefix per ALFWorld task kind
        assert {pid for _, pid in prefix_of} == {
            f"alfw-{k}" for k in ("put", "clean", "heat", "cool", "examine", "puttwo")
        }


@pytest.mark.parametrize("app", TEMPLATE_NAMES)
def test_agents_resend_their_history_and_the_others_do_not(app: str) -> None:
    for run in runs_of(app)[:300]:
        calls = [c for s in run.stages for c in s.llm_calls()]
        if app not in ("react_fever", "react_alfw"):
            assert all(c.history_tokens == 0 for c in calls)
            continue
        assert calls[0].history_tokens == 0
        for before, call in pairwise(calls):
            assert before.shared_prefix_tokens is not None
            # The previous prompt after its prefix, and its completion, then something new.
            resent = before.prompt_tokens - before.shared_prefix_tokens + before.completion_tokens
            assert call.history_tokens == resent
            assert call.prompt_tokens >= before.prompt_tokens + before.completion_tokens
