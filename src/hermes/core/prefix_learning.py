"""What a PDGraph learns about prefixes where runs do not record them.

History resend: an agent that resends its history sends, at each step, the previous prompt,
the previous completion and something new, so ``prompt_k >= prompt_{k-1} + completion_{k-1}``.
A call is checked against the single call of the run's previous LLM stage (a fan-out stage
has no single predecessor, so the call after it is not checked). A stage resends when nearly
all of its checks pass *and* its prompts track what they would resend: a prompt that is merely
longer than the previous call (FacTool's verification after a one-claim query) passes the
inequality by chance, but its slack (prompt minus what it would resend) then varies as much as
the prompt itself, while a resent history carries the previous call's variation along: what
it would resend must explain at least half of the prompts' variance. The
shared prefix of a stage is bounded by its smallest prompt: every call sends the prefix, so
none is shorter than it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from hermes.core.runs import AppRun, LLMCall

# Relative slack on the expected length: tokenizers join words differently at the seams, and
# templates strip whitespace.
RESEND_TOLERANCE = 0.02
# A stage resends when at least this share of its checks pass, over at least MIN_CHECKS.
RESEND_SHARE = 0.9
MIN_CHECKS = 3
# The slack's variance must stay under this share of the prompts' variance.
RESEND_SLACK_VARIANCE = 0.5


@dataclass(frozen=True, slots=True)
class StagePrefix:
    """What a stage's calls share, as learned: the leading tokens every call of the stage
    sends alike, and whether each call resends the run's context so far."""

    shared_prefix_tokens: int
    history_resend: bool


def resend_checks(run: AppRun) -> Iterator[tuple[str, int, int]]:
    """(stage name, previous prompt + completion, prompt) per LLM call whose run's previous
    LLM stage had a single call."""
    previous: LLMCall | None = None
    for stage in run.stages:
        calls = stage.llm_calls()
        if stage.kind != "llm" or not calls:
            continue
        if previous is not None:
            resent = previous.prompt_tokens + previous.completion_tokens
            for call in calls:
                yield stage.name, resent, call.prompt_tokens
        previous = calls[0] if len(calls) == 1 else None


def passed(checks: Sequence[tuple[float, float]], tolerance: float = RESEND_TOLERANCE) -> int:
    """How many (what it would resend, prompt) checks hold the resent tokens."""
    return sum(prompt >= resent * (1.0 - tolerance) for resent, prompt in checks)


def detected(checks: Sequence[tuple[float, float]]) -> bool:
    """Whether (what it would resend, prompt) pairs show a stage that resends its history."""
    if len(checks) < MIN_CHECKS or passed(checks) < RESEND_SHARE * len(checks):
        return False
    resent, prompt = np.array(checks, dtype=np.float64).T
    return float(np.var(prompt - resent)) < RESEND_SLACK_VARIANCE * float(np.var(prompt))
