"""Synthetic runs of six CTaskBench applications, fitted to the statistics in docs/apps.md.

What is fitted to what:

- Stage sequence and branching: the "Transitions" lines, read as aggregate frequencies (exits over
  visits across many runs). Loops stop at the observed maximum; see ``_step_exit_prob``.
- Fan-out: 1 + beta-binomial on 1..max with the table's fan-out mean and max; the spread is chosen
  so that the per-run "llm calls" p50/p95 come out close to the table's.
- Per-call prompt and completion tokens, tool seconds: a shifted lognormal (mirrored when the mean
  lies below the p50) meeting the table's p50 and p90 exactly and, after clipping to plausible
  bounds, its mean; see ``_Fitted``. Two exceptions: collapse prompts (``_PackedGroups``) and
  react_alfw prompts, which grow along the episode (``_react_alfw``).

Every template draws from the generator it is given, so one seed gives one list of runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, cached_property
from statistics import NormalDist
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from hermes.core.runs import AppRun, LLMCall, Stage, ToolCall

_NORMAL = NormalDist()
_Z90 = _NORMAL.inv_cdf(0.9)

# ---- per-call demand ----------------------------------------------------------------------------


class _CallDist(Protocol):
    def sample(self, rng: np.random.Generator, n: int) -> NDArray[np.float64]:
        """Demands of the ``n`` parallel calls of one stage, in call order."""
        ...


def _lognormal_below(x: float, sigma: float) -> tuple[float, float]:
    """P(X <= x) and E[X; X <= x] for X = exp(sigma * Z)."""
    if x <= 0:
        return 0.0, 0.0
    if math.isinf(x):
        return 1.0, math.exp(sigma * sigma / 2)
    t = math.log(x) / sigma
    return _NORMAL.cdf(t), math.exp(sigma * sigma / 2) * _NORMAL.cdf(t - sigma)


@dataclass(frozen=True)
class _Fitted:
    """Y = shift + sign * scale * exp(sigma * Z), clipped to [lo, hi].

    sign is +1 for right skew (mean > p50) and -1 for left skew. Given sigma, shift and scale put
    the p50 and the p90 exactly on the table's values (the bounds lie outside them); sigma is then
    solved so that the mean of the *clipped* variable is the table's, since the clipping that
    keeps values plausible would otherwise move the mean (most for a long mirrored lower tail).
    mean == p50 gives the normal limit.
    """

    mean: float
    p50: float
    p90: float
    lo: float
    hi: float

    def _shape(self, sign: int, sigma: float) -> tuple[float, float]:
        span = self.p90 - self.p50
        scale = span / (math.expm1(_Z90 * sigma) if sign > 0 else -math.expm1(-_Z90 * sigma))
        return self.p50 - sign * scale, scale

    def _clipped_mean(self, sign: int, sigma: float) -> float:
        shift, scale = self._shape(sign, sigma)
        x_lo, x_hi = ((y - shift) / (sign * scale) for y in (self.lo, self.hi))
        (a, y_a), (b, y_b) = sorted([(x_lo, self.lo), (x_hi, self.hi)])
        p_a, m_a = _lognormal_below(a, sigma)
        p_b, m_b = _lognormal_below(b, sigma)
        inside = shift * (p_b - p_a) + sign * scale * (m_b - m_a)
        return y_a * p_a + inside + y_b * (1 - p_b)

    @cached_property
    def _params(self) -> tuple[float, float, float]:
        """(shift, signed scale, sigma); sigma 0 means normal with sd = scale."""
        if not self.lo < self.p50 < self.p90 < self.hi:
            raise ValueError(f"need lo < p50 < p90 < hi: {self}")
        if self.mean == self.p50:
            return self.p50, (self.p90 - self.p50) / _Z90, 0.0
        sign = 1 if self.mean > self.p50 else -1
        # The skew (sign * (clipped mean - p50)) grows with sigma: bisect.
        lo_s, hi_s = 1e-6, 6.0
        if sign * (self._clipped_mean(sign, hi_s) - self.mean) < 0:
            raise ValueError(f"no lognormal reaches this skew within its bounds: {self}")
        for _ in range(80):
            mid = (lo_s + hi_s) / 2
            if sign * (self._clipped_mean(sign, mid) - self.mean) < 0:
                lo_s = mid
            else:
                hi_s = mid
        shift, scale = self._shape(sign, lo_s)
        return shift, sign * scale, lo_s

    def sample(self, rng: np.random.Generator, n: int) -> NDArray[np.float64]:
        shift, scale, sigma = self._params
        z = rng.standard_normal(n)
        y = shift + scale * (np.exp(sigma * z) if sigma > 0 else z)
        return np.clip(y, self.lo, self.hi)


@dataclass(frozen=True)
class _PackedGroups:
    """Prompts of one collapse round.

    LangChain packs the summaries greedily into groups under a token limit: every group but the
    last is nearly full, the last holds the remainder. That is why the mean (1440) lies so far
    below the p50 (1712); a single mirrored lognormal would put ~10% of the calls on its floor.
    The last call of a round is the remainder, uniform on [2 * its mean - remainder_hi,
    remainder_hi] with remainder_hi below the p50; the others are normal. A share
    1 / fanout_mean of the calls are remainders, which fixes the full groups' mean and sd from
    the p50 and p90, and the remainder's mean from the overall mean.
    """

    mean: float
    p50: float
    p90: float
    fanout_mean: float
    remainder_hi: float

    @cached_property
    def _params(self) -> tuple[float, float, float]:
        last = 1 / self.fanout_mean  # share of calls that are a round's remainder
        # Every remainder lies below the p50, so the full groups hold the p50 and p90 at these
        # quantiles of their own.
        z50 = _NORMAL.inv_cdf((0.5 - last) / (1 - last))
        z90 = _NORMAL.inv_cdf((0.9 - last) / (1 - last))
        sd = (self.p90 - self.p50) / (z90 - z50)
        full_mean = self.p50 - z50 * sd
        remainder_mean = (self.mean - (1 - last) * full_mean) / last
        remainder_lo = 2 * remainder_mean - self.remainder_hi
        if not 0 < remainder_lo < self.remainder_hi <= self.p50:
            raise ValueError(f"no remainder range fits: {self}")
        return full_mean, sd, remainder_lo

    def sample(self, rng: np.random.Generator, n: int) -> NDArray[np.float64]:
        full_mean, sd, remainder_lo = self._params
        y = np.maximum(rng.normal(full_mean, sd, n), 1.0)
        y[-1] = rng.uniform(remainder_lo, self.remainder_hi)
        return y


def _tokens(mean: float, p50: float, p90: float, lo: float = 1.0) -> _Fitted:
    # Ten p50-to-p90 spans above the median: clips well under 1% of calls, bounds the tail.
    return _Fitted(mean, p50, p90, lo=lo, hi=p50 + 10 * (p90 - p50))


def _seconds(mean: float, p50: float, p90: float, max_s: float) -> _Fitted:
    return _Fitted(mean, p50, p90, lo=0.0, hi=max_s)


@dataclass(frozen=True)
class _FanOut:
    """Calls in one stage: 1 + beta-binomial on 1..max_calls with the given mean.

    concentration sets the spread: inf is a plain binomial, small values approach uniform.
    """

    mean: float
    max_calls: int
    concentration: float = math.inf

    def sample(self, rng: np.random.Generator) -> int:
        q = (self.mean - 1) / max(self.max_calls - 1, 1)
        if q <= 0 or q >= 1:
            return round(self.mean)  # a fixed fan-out
        if math.isfinite(self.concentration):
            q = rng.beta(q * self.concentration, (1 - q) * self.concentration)
        return 1 + int(rng.binomial(self.max_calls - 1, q))


_ONE = _FanOut(1, 1)

# ---- stages -----------------------------------------------------------------------------------


def _ints(values: NDArray[np.float64]) -> list[int]:
    return [int(v) for v in np.rint(values)]


def _llm_stage(name: str, prompts: list[int], completions: list[int]) -> Stage:
    calls = tuple(LLMCall(p, c) for p, c in zip(prompts, completions, strict=True))
    return Stage(name=name, kind="llm", backend="llm", calls=calls)


@dataclass(frozen=True)
class _LLMSpec:
    name: str
    prompt: _CallDist
    completion: _CallDist
    fanout: _FanOut = _ONE
    shared_prompt: bool = False  # the calls are several samples of one prompt

    def sample(self, rng: np.random.Generator, n: int | None = None) -> Stage:
        n = self.fanout.sample(rng) if n is None else n
        prompts = _ints(self.prompt.sample(rng, 1 if self.shared_prompt else n))
        return _llm_stage(
            self.name,
            prompts * n if self.shared_prompt else prompts,
            _ints(self.completion.sample(rng, n)),
        )


@dataclass(frozen=True)
class _ToolSpec:
    name: str
    backend: str
    duration: _Fitted

    def sample(self, rng: np.random.Generator) -> Stage:
        seconds = float(self.duration.sample(rng, 1)[0])
        return Stage(name=self.name, kind="tool", backend=self.backend, calls=(ToolCall(seconds),))


# ---- loops ------------------------------------------------------------------------------------


@cache
def _step_exit_prob(exit_freq: float, cap: int) -> float:
    """Per-step exit probability of a loop of at most ``cap`` steps whose aggregate exit frequency
    (exits / steps over many runs, the forced exits at the cap included) is ``exit_freq``.

    docs/apps.md's transition probabilities are such aggregate frequencies, measured on real runs
    that stay within the cap. Exiting with probability exit_freq per step *and* stopping at the cap
    would add forced exits: react_fever would average 1.99 thoughts instead of 2.17, and its
    measured thought -> end frequency would be 0.50 instead of 0.461.
    """
    target = 1 / exit_freq  # the mean loop length, (1 - (1 - h)^cap) / h, falls as h grows
    if not 1 <= target <= cap:
        raise ValueError(f"exit frequency {exit_freq} impossible within {cap} steps")
    lo, hi = 1e-9, 1.0
    for _ in range(80):
        h = (lo + hi) / 2
        lo, hi = (h, hi) if (1 - (1 - h) ** cap) / h > target else (lo, h)
    return lo


def _loop_length(rng: np.random.Generator, exit_freq: float, cap: int) -> int:
    return min(int(rng.geometric(_step_exit_prob(exit_freq, cap))), cap)


# ---- the six applications ---------------------------------------------------------------------

_CODE_QUERIES = _LLMSpec("generate_queries", _tokens(361, 344, 434), _tokens(72.6, 67, 103))
# One prompt sampled three times: the table's CP-prefill (685 = 361 + 324) shows the largest
# of the three prompts equals their mean.
_CODE_SOLUTIONS = _LLMSpec(
    "generate_solutions",
    _tokens(324, 308, 398),
    _tokens(189, 184, 271),
    _FanOut(3, 3),
    shared_prompt=True,
)
_CODE_EXEC = _ToolSpec("code_execution", "docker", _seconds(0.3613, 0.3547, 0.3808, 0.6604))


def _factool_code(rng: np.random.Generator) -> list[Stage]:
    stages = [_CODE_QUERIES.sample(rng), _CODE_SOLUTIONS.sample(rng)]
    if rng.random() < 0.988:
        stages.append(_CODE_EXEC.sample(rng))
    return stages


_KBQA_CLAIMS = _FanOut(3.5, 13, concentration=12.0)
_KBQA_EXTRACT = _LLMSpec("extract_claims", _tokens(626, 621, 648), _tokens(74.6, 68, 126))
_KBQA_QUERIES = _LLMSpec("generate_queries", _tokens(290, 289, 294), _tokens(17.3, 17, 23))
_KBQA_SEARCH = _ToolSpec("search", "search", _seconds(1.29, 1.089, 1.884, 4.903))
_KBQA_VERIFY = _LLMSpec("verifies", _tokens(508, 482, 647), _tokens(148, 142, 200))


def _factool_kbqa(rng: np.random.Generator) -> list[Stage]:
    claims = _KBQA_CLAIMS.sample(rng)  # one query and one verification per claim
    return [
        _KBQA_EXTRACT.sample(rng),
        _KBQA_QUERIES.sample(rng, claims),
        _KBQA_SEARCH.sample(rng),
        _KBQA_VERIFY.sample(rng, claims),
    ]


_MATH_EXTRACT = _LLMSpec("extract_claims", _tokens(838, 829, 931), _tokens(97.4, 81, 151))
_MATH_QUERIES = _LLMSpec(
    "generate_queries",
    _tokens(267, 268, 277),
    _tokens(30.3, 32, 37),
    _FanOut(2.85, 9, concentration=20.0),
)
_MATH_EXEC = _ToolSpec(
    "code_execution", "docker", _seconds(0.0002569, 0.000243, 0.0003612, 0.000619)
)


def _factool_math(rng: np.random.Generator) -> list[Stage]:
    return [_MATH_EXTRACT.sample(rng), _MATH_QUERIES.sample(rng), _MATH_EXEC.sample(rng)]


_FEVER_THOUGHT = _LLMSpec("thought", _tokens(1160, 1108, 1346), _tokens(37.1, 36, 44))
_FEVER_SEARCH = _ToolSpec("search", "search", _seconds(2.089, 1.872, 3.311, 7.208))
_FEVER_NEXT = {"search": 0.535, "end": 0.461, "thought": 0.005}  # after a thought; sums to 1.001
_FEVER_MAX_THOUGHTS = 4


def _react_fever(rng: np.random.Generator) -> list[Stage]:
    total = sum(_FEVER_NEXT.values())
    thoughts = _loop_length(rng, _FEVER_NEXT["end"] / total, _FEVER_MAX_THOUGHTS)
    p_search = _FEVER_NEXT["search"] / (_FEVER_NEXT["search"] + _FEVER_NEXT["thought"])
    stages = [_FEVER_THOUGHT.sample(rng)]
    for _ in range(thoughts - 1):  # a thought that does not end searches, or rarely retries
        if rng.random() < p_search:
            stages.append(_FEVER_SEARCH.sample(rng))
        stages.append(_FEVER_THOUGHT.sample(rng))
    return stages


_ALFW_COMPLETION = _tokens(14.9, 7, 31)
_ALFW_ACT = _ToolSpec("act", "env", _seconds(0.1655, 0.1708, 0.2062, 0.5025))
_ALFW_END_AFTER_ACT = 0.064
_ALFW_MAX_THOUGHTS = 43
_ALFW_PROMPT_MEAN = 2023
# Conflict: a Markov loop's length is geometric, wider than the table's per-run counts (p50 12,
# p95 43 thoughts against 15 and 25); the transition line and the per-call statistics win.
# The prompt resends the history: a per-episode base (the task's few-shot examples) plus a fixed
# growth per step. Growth and base sd are set, by simulating this loop, so that the per-call
# p50 and p90 (2017, 2380) come out within 1%; faster growth would widen the p90.
_ALFW_GROWTH_PER_STEP = 15.0
_ALFW_BASE_SD = 220.0


@cache
def _alfw_base_mean() -> float:
    """Base prompt that makes the per-call mean the table's, given how steps are distributed."""
    h = _step_exit_prob(_ALFW_END_AFTER_ACT, _ALFW_MAX_THOUGHTS)
    reach = (1 - h) ** np.arange(_ALFW_MAX_THOUGHTS)  # P(the episode has a step k), k = 0, 1, ...
    mean_step = float(np.dot(np.arange(_ALFW_MAX_THOUGHTS), reach) / reach.sum())
    return _ALFW_PROMPT_MEAN - _ALFW_GROWTH_PER_STEP * mean_step


def _react_alfw(rng: np.random.Generator) -> list[Stage]:
    steps = _loop_length(rng, _ALFW_END_AFTER_ACT, _ALFW_MAX_THOUGHTS)
    base = rng.normal(_alfw_base_mean(), _ALFW_BASE_SD)
    prompts = _ints(np.maximum(base + _ALFW_GROWTH_PER_STEP * np.arange(steps), 1.0))
    completions = _ints(_ALFW_COMPLETION.sample(rng, steps))
    stages: list[Stage] = []
    for prompt, completion in zip(prompts, completions, strict=True):
        stages += [_llm_stage("thought", [prompt], [completion]), _ALFW_ACT.sample(rng)]
    return stages


_MR_MAP = _LLMSpec(
    "generate_summary",
    _tokens(426, 470, 572, lo=32),  # mirrored: its long lower tail stops at the instructions
    _tokens(179, 161, 262),
    _FanOut(20.99, 44, concentration=2.5),
)
_MR_COLLAPSE_FANOUT = _FanOut(2.63, 5)
_MR_COLLAPSE = _LLMSpec(
    "collapse_summaries",
    _PackedGroups(1440, 1712, 1881, _MR_COLLAPSE_FANOUT.mean, 1600),
    _tokens(581, 559, 828),
    _MR_COLLAPSE_FANOUT,
)
_MR_FINAL = _LLMSpec("generate_final_summary", _tokens(1449, 1357, 1982), _tokens(711, 648, 1029))
_MR_P_COLLAPSE = 0.863  # generate_summary -> collapse_summaries
_MR_COLLAPSE_EXIT = 0.842  # collapse_summaries -> generate_final_summary
_MR_MAX_COLLAPSES = 4


def _langchain_mapreduce(rng: np.random.Generator) -> list[Stage]:
    stages = [_MR_MAP.sample(rng)]
    if rng.random() < _MR_P_COLLAPSE:
        rounds = _loop_length(rng, _MR_COLLAPSE_EXIT, _MR_MAX_COLLAPSES)
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
