"""Synthetic runs of six CTaskBench applications, fitted to the statistics in docs/apps.md.

What is fitted to what:

- Stage sequence and branching: the "Transitions" lines, read as aggregate frequencies (exits over
  visits across many runs). Loops stop at the observed maximum; see ``step_exit_prob``. The
  ALFWorld agent's loop is as long as its runs' per-run llm calls say (mean, p50, p95, max),
  which the aggregate frequency (1 / mean) also meets; see ``LoopLength``.
- Fan-out: 1 + beta-binomial on 1..max with the table's fan-out mean and max; the spread is chosen
  so that the per-run "llm calls" p50/p95 come out close to the table's.
- Per-call prompt and completion tokens, tool seconds: a shifted lognormal (mirrored when the mean
  lies below the p50) meeting the table's p50 and p90 exactly and, after clipping to plausible
  bounds, its mean; see ``_Fitted``. Two exceptions: collapse prompts (``_PackedGroups``) and
  react_alfw prompts, which grow along the episode (``_react_alfw``).

Every template draws from the generator it is given, so one seed gives one list of runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
from numpy.typing import NDArray

from hermes.core.runs import AppRun, LLMCall, Stage, ToolCall
from hermes.workloads.template_dists import (
    ONE,
    CallDist,
    FanOut,
    Fitted,
    LoopLength,
    PackedGroups,
    loop_length,
    seconds,
    tokens,
)

# ---- stages -----------------------------------------------------------------------------------


def _ints(values: NDArray[np.float64]) -> list[int]:
    return [int(v) for v in np.rint(values)]


def _llm_stage(
    name: str,
    prompts: list[int],
    completions: list[int],
    prefix: int = 0,
    history: int = 0,
    prefix_id: str | None = None,
) -> Stage:
    """Calls whose first `prefix` prompt tokens are the stage's template and the next
    `history` the run's context (both clipped to the prompt)."""
    calls = []
    for p, c in zip(prompts, completions, strict=True):
        shared = min(prefix, p)
        calls.append(LLMCall(p, c, shared, min(history, p - shared), prefix_id))
    return Stage(name=name, kind="llm", backend="llm", calls=tuple(calls))


@dataclass(frozen=True)
class _LLMSpec:
    name: str
    prompt: CallDist
    completion: CallDist
    fanout: FanOut = ONE
    shared_prompt: bool = False  # the calls are several samples of one prompt
    prefix: int = 0  # leading tokens of the stage's prompt template, the same in every run

    def sample(self, rng: np.random.Generator, n: int | None = None) -> Stage:
        n = self.fanout.sample(rng) if n is None else n
        prompts = _ints(self.prompt.sample(rng, 1 if self.shared_prompt else n))
        return _llm_stage(
            self.name,
            prompts * n if self.shared_prompt else prompts,
            _ints(self.completion.sample(rng, n)),
            self.prefix,
        )


@dataclass(frozen=True)
class _ToolSpec:
    name: str
    backend: str
    duration: Fitted

    def sample(self, rng: np.random.Generator) -> Stage:
        duration_s = float(self.duration.sample(rng, 1)[0])
        return Stage(self.name, "tool", self.backend, (ToolCall(duration_s),))


def _resending(
    name: str,
    prefix: int,
    first_prompt: int,
    completions: list[int],
    added: list[int],
    prefix_id: str | None = None,
) -> list[Stage]:
    """An agent's steps, each a single call that resends the previous prompt and completion
    and adds `added[k]` tokens (the observation before step k + 1) after them."""
    stages = []
    prompt, history = first_prompt, 0
    for k, completion in enumerate(completions):
        stages.append(_llm_stage(name, [prompt], [completion], prefix, history, prefix_id))
        if k < len(added):
            history = prompt - min(prefix, prompt) + completion
            prompt += completion + added[k]
    return stages


# ---- the six applications ---------------------------------------------------------------------

# Shared prefixes: each stage's prompt template up to its first variable part, the system
# message included (FacTool's prompts/*.yaml; LangChain's default summarize prompt), at 4.4
# characters per token, the rate at which FacTool kbqa's query template (1,190 characters
# before the claim) meets that stage's measured prompts (p50 289, about 15 of them the claim).

_CODE_QUERIES = _LLMSpec(
    "generate_queries", tokens(361, 344, 434), tokens(72.6, 67, 103), prefix=33
)
# One prompt sampled three times: the table's CP-prefill (685 = 361 + 324) shows the largest
# of the three prompts equals their mean.
_CODE_SOLUTIONS = _LLMSpec(
    "generate_solutions",
    tokens(324, 308, 398),
    tokens(189, 184, 271),
    FanOut(3, 3),
    shared_prompt=True,
    prefix=75,
)
_CODE_EXEC = _ToolSpec("code_execution", "docker", seconds(0.3613, 0.3547, 0.3808, 0.6604))


def _factool_code(rng: np.random.Generator) -> list[Stage]:
    stages = [_CODE_QUERIES.sample(rng), _CODE_SOLUTIONS.sample(rng)]
    if rng.random() < 0.988:
        stages.append(_CODE_EXEC.sample(rng))
    return stages


_KBQA_CLAIMS = FanOut(3.5, 13, concentration=12.0)
_KBQA_EXTRACT = _LLMSpec("extract_claims", tokens(626, 621, 648), tokens(74.6, 68, 126), prefix=520)
_KBQA_QUERIES = _LLMSpec(
    "generate_queries", tokens(290, 289, 294), tokens(17.3, 17, 23), prefix=270
)
_KBQA_SEARCH = _ToolSpec("search", "search", seconds(1.29, 1.089, 1.884, 4.903))
_KBQA_VERIFY = _LLMSpec("verifies", tokens(508, 482, 647), tokens(148, 142, 200), prefix=167)


def _factool_kbqa(rng: np.random.Generator) -> list[Stage]:
    claims = _KBQA_CLAIMS.sample(rng)  # one query and one verification per claim
    return [
        _KBQA_EXTRACT.sample(rng),
        _KBQA_QUERIES.sample(rng, claims),
        _KBQA_SEARCH.sample(rng),
        _KBQA_VERIFY.sample(rng, claims),
    ]


_MATH_EXTRACT = _LLMSpec("extract_claims", tokens(838, 829, 931), tokens(97.4, 81, 151), prefix=472)
_MATH_QUERIES = _LLMSpec(
    "generate_queries",
    tokens(267, 268, 277),
    tokens(30.3, 32, 37),
    FanOut(2.85, 9, concentration=20.0),
    prefix=107,
)
_MATH_EXEC = _ToolSpec(
    "code_execution", "docker", seconds(0.0002569, 0.000243, 0.0003612, 0.000619)
)


def _factool_math(rng: np.random.Generator) -> list[Stage]:
    return [_MATH_EXTRACT.sample(rng), _MATH_QUERIES.sample(rng), _MATH_EXEC.sample(rng)]


# ReAct's FEVER agent resends its whole trajectory each thought: the few-shot prompt
# (webthink_simple3), the claim, then every earlier thought, action and observation. The
# prefix, claim and observation sizes are set, by simulating this loop, so that the per-call
# prompt mean, p50 and p90 (1160, 1108, 1346) come out within 1.5%.
_FEVER_FEW_SHOT = 1020
_FEVER_CLAIM = tokens(25, 22, 40)
_FEVER_OBSERVATION = tokens(85, 60, 170)  # a search's result: a paragraph, or a miss
_FEVER_RETRY_TOKENS = 10  # the observation of a thought retried without a search
_FEVER_COMPLETION = tokens(37.1, 36, 44)
_FEVER_SEARCH = _ToolSpec("search", "search", seconds(2.089, 1.872, 3.311, 7.208))
_FEVER_NEXT = {"search": 0.535, "end": 0.461, "thought": 0.005}  # after a thought; sums to 1.001
_FEVER_MAX_THOUGHTS = 4
# Open: the table's per-run llm calls (p95 3) say this loop is narrower too than one that
# exits with the same probability after every thought (p95 4, 22 % of runs at the cap), but a
# LoopLength(2.17, 2, 3, 4) leaves too few late calls for `hermes learn` to detect the history
# resend from token counts (the resent part must explain half the prompts' variance); its
# search is unlimited, so no tool queue depends on it.


def _react_fever(rng: np.random.Generator) -> list[Stage]:
    total = sum(_FEVER_NEXT.values())
    thoughts = loop_length(rng, _FEVER_NEXT["end"] / total, _FEVER_MAX_THOUGHTS)
    p_search = _FEVER_NEXT["search"] / (_FEVER_NEXT["search"] + _FEVER_NEXT["thought"])
    first = _FEVER_FEW_SHOT + _ints(_FEVER_CLAIM.sample(rng, 1))[0]
    completions = _ints(_FEVER_COMPLETION.sample(rng, thoughts))
    searches: list[Stage | None] = []
    added: list[int] = []
    for _ in range(thoughts - 1):  # a thought that does not end searches, or rarely retries
        searched = rng.random() < p_search
        searches.append(_FEVER_SEARCH.sample(rng) if searched else None)
        added.append(
            _ints(_FEVER_OBSERVATION.sample(rng, 1))[0] if searched else _FEVER_RETRY_TOKENS
        )
    steps = _resending("thought", _FEVER_FEW_SHOT, first, completions, added)
    stages = [steps[0]]
    for search, step in zip(searches, steps[1:], strict=True):
        stages += [step] if search is None else [search, step]
    return stages


_ALFW_COMPLETION = tokens(14.9, 7, 31)
_ALFW_ACT = _ToolSpec("act", "env", seconds(0.1655, 0.1708, 0.2062, 0.5025))
# Steps (thought, act) per run: the table's per-run llm calls, mean 15.7, p50 15, p95 25, max 43
# (one call per thought). Its act -> end frequency, 0.064, is 1 / 15.7: an aggregate that any
# length with this mean meets. A Markov loop with that exit probability after every step would
# be geometric, p50 11 and p95 43: far wider than the runs.
_ALFW_STEPS = LoopLength(mean=15.7, p50=15, p95=25, cap=43)
_ALFW_PROMPT_MEAN = 2023
# The prompt resends the history: the few-shot examples of the episode's task kind (ReAct's
# alfworld_3prompts, two examples per kind; their sizes in characters below), the task, then
# each step's action (the completion) and observation. The few-shot prefixes keep the kinds'
# relative sizes and are scaled so that the per-call mean is the table's; the task and
# observation sizes are set, by simulating this loop, so that the per-call p50 and p90 (2017,
# 2380) come out within 2%: the measured prompts grow by little more than the completion.
_ALFW_FEW_SHOT_CHARS = {
    "put": 3284,
    "clean": 4413,
    "heat": 3922,
    "cool": 4488,
    "examine": 3823,
    "puttwo": 4371,
}
_ALFW_TASK = tokens(175, 170, 240)
_ALFW_OBSERVATION = tokens(12, 8, 24)


@cache
def _alfw_few_shot() -> dict[str, int]:
    """Each task kind's prefix in tokens, scaled to make the per-call mean the table's."""
    reach = _ALFW_STEPS.survival()  # P(the episode has a step k), k = 0, 1, ...
    mean_step = float(np.dot(np.arange(reach.size), reach) / reach.sum())
    growth = _ALFW_COMPLETION.mean + _ALFW_OBSERVATION.mean
    prefix_mean = _ALFW_PROMPT_MEAN - _ALFW_TASK.mean - growth * mean_step
    scale = prefix_mean / float(np.mean(list(_ALFW_FEW_SHOT_CHARS.values())))
    return {kind: round(chars * scale) for kind, chars in _ALFW_FEW_SHOT_CHARS.items()}


def _react_alfw(rng: np.random.Generator) -> list[Stage]:
    steps = _ALFW_STEPS.sample(rng)
    kind = list(_ALFW_FEW_SHOT_CHARS)[int(rng.integers(len(_ALFW_FEW_SHOT_CHARS)))]
    prefix = _alfw_few_shot()[kind]
    first = prefix + _ints(_ALFW_TASK.sample(rng, 1))[0]
    completions = _ints(_ALFW_COMPLETION.sample(rng, steps))
    added = _ints(_ALFW_OBSERVATION.sample(rng, steps - 1))
    stages: list[Stage] = []
    for step in _resending("thought", prefix, first, completions, added, f"alfw-{kind}"):
        stages += [step, _ALFW_ACT.sample(rng)]
    return stages


_MR_PROMPT = 10  # LangChain's 'Write a concise summary of the following:' before the text
_MR_MAP = _LLMSpec(
    "generate_summary",
    tokens(426, 470, 572, lo=32),  # mirrored: its long lower tail stops at the instructions
    tokens(179, 161, 262),
    FanOut(20.99, 44, concentration=2.5),
    prefix=_MR_PROMPT,
)
_MR_COLLAPSE_FANOUT = FanOut(2.63, 5)
_MR_COLLAPSE = _LLMSpec(
    "collapse_summaries",
    PackedGroups(1440, 1712, 1881, _MR_COLLAPSE_FANOUT.mean, 1600),
    tokens(581, 559, 828),
    _MR_COLLAPSE_FANOUT,
    prefix=_MR_PROMPT,
)
_MR_FINAL = _LLMSpec(
    "generate_final_summary",
    tokens(1449, 1357, 1982),
    tokens(711, 648, 1029),
    prefix=_MR_PROMPT,
)
_MR_P_COLLAPSE = 0.863  # generate_summary -> collapse_summaries
_MR_COLLAPSE_EXIT = 0.842  # collapse_summaries -> generate_final_summary
_MR_MAX_COLLAPSES = 4


def _langchain_mapreduce(rng: np.random.Generator) -> list[Stage]:
    stages = [_MR_MAP.sample(rng)]
    if rng.random() < _MR_P_COLLAPSE:
        rounds = loop_length(rng, _MR_COLLAPSE_EXIT, _MR_MAX_COLLAPSES)
        stages += [_MR_COLLAPSE.sample(rng) for _ in range(rounds)]
    stages.append(_MR_FINAL.sample(rng))
    return stages


_TEMPLATES: dict[str, Callable[[np.random.Generator], list[Stage]]] = {
    "factool_code": _factool_code,
    "factool_kbqa": _factool_kbqa,
    "factool_math": _factool_math,
    "react_fever": _react_fever,
    "react_alfw": _react_alfw,
    "langchain_mapreduce": _langchain_mapreduce,
}
TEMPLATE_NAMES: tuple[str, ...] = tuple(_TEMPLATES)


def generate_runs(app: str, n: int, seed: int) -> list[AppRun]:
    """``n`` synthetic runs of ``app``, the same for the same seed.

    Run i draws from its own generator spawned from ``seed``, so the first k runs do not depend
    on ``n``.
    """
    template = _TEMPLATES.get(app)
    if template is None:
        raise ValueError(f"unknown application {app!r}; known: {', '.join(TEMPLATE_NAMES)}")
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    rngs = np.random.default_rng(seed).spawn(n)
    return [
        AppRun(app=app, run_id=f"{app}-{i}", stages=tuple(template(rng)))
        for i, rng in enumerate(rngs)
    ]
