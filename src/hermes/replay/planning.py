"""Recorded runs as the requests an application would send a gateway: `hermes replay`'s core.

Pure: no I/O, no clock; randomness only from the seed. `plan` picks which runs arrive
(all of them once in file order, or `apps` drawn with replacement), when (a Poisson process of
`rate_per_s`, shifted so that the first application arrives at 0), and turns each run's stages
into steps: an LLM stage is one chat completion per call, sent together; a tool stage is a
wait between a `stage_started` and a `stage_finished` event. Every step carries its stage's
index in the run, so that the gateway keeps two consecutive stages of one name apart.

Calls are not streamed: a non-streaming response carries `usage` on every engine (llama.cpp's
server leaves it off streams), so the gateway learns exact token counts, and a replay measures
application completion times, which streaming does not change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hermes.core.runs import AppRun, Stage
from hermes.gateway.context import (
    APP_ID,
    APP_TYPE,
    DEADLINE_MS,
    SLO_CLASS,
    STAGE,
    STAGE_INDEX,
    HeaderError,
    parse_context,
)
from hermes.workloads.arrivals import poisson_arrivals

CHARS_PER_TOKEN = 4
# " the" is one token in BPE vocabularies (Llama's, GPT-2's, the tiny test model's) and four
# characters, so a prompt of n of them is about n tokens for the engine and for the
# gateway's and emulator's four-characters-per-token estimates alike.
FILLER = " the"


@dataclass(frozen=True, slots=True)
class LLMStep:
    """One LLM stage: its calls' request bodies, sent in parallel with the same headers."""

    stage: str
    headers: Mapping[str, str]
    bodies: tuple[dict[str, Any], ...]


@dataclass(frozen=True, slots=True)
class ToolStep:
    """One tool stage: its calls ran in parallel, so the stage lasts as long as the longest."""

    stage: str
    backend: str
    duration_s: float
    stage_index: int


@dataclass(frozen=True, slots=True)
class AppPlan:
    app_id: str
    app_type: str
    run_id: str
    start_s: float  # after the replay starts, wall seconds
    deadline_s: float | None  # after its start, wall seconds
    steps: tuple[LLMStep | ToolStep, ...]


def prompt_text(tokens: int, tag: str) -> str:
    """About `tokens` tokens of text (four characters each), starting with `tag`: a prompt of
    its own for each call, so that an engine's prefix cache does not serve one call's prompt
    from another's."""
    filler = max(0, tokens - math.ceil(len(tag) / CHARS_PER_TOKEN))
    return tag + FILLER * filler


def _headers(
    app_id: str, run: AppRun, stage: Stage, index: int, deadline_s: float | None
) -> dict[str, str]:
    h = {APP_ID: app_id, APP_TYPE: run.app, STAGE: stage.name, STAGE_INDEX: str(index)}
    if deadline_s is not None:
        h[DEADLINE_MS] = f"{deadline_s * 1e3:.3f}"
    if run.slo_class is not None:
        h[SLO_CLASS] = run.slo_class
    try:  # the gateway's own check: a name it would refuse fails here, before any traffic
        parse_context(h)
    except HeaderError as e:
        raise ValueError(f"run {run.run_id!r} cannot be replayed: {e}") from None
    return h


def app_plan(
    run: AppRun,
    app_id: str,
    start_s: float,
    model: str | None,
    default_model: str,
    time_scale: float = 1.0,
) -> AppPlan:
    """The steps of one run. Every call asks for `model` if given, else for its stage's
    recorded model, else for `default_model`; recorded durations (tool stages, the deadline)
    are multiplied by `time_scale`."""
    deadline = None if run.deadline_s is None else run.deadline_s * time_scale
    steps: list[LLMStep | ToolStep] = []
    for i, stage in enumerate(run.stages):
        if stage.kind == "tool":
            longest = max(c.duration_s for c in stage.tool_calls())
            steps.append(ToolStep(stage.name, stage.backend, longest * time_scale, i))
            continue
        headers = _headers(app_id, run, stage, i, deadline)
        name = model or stage.model or default_model
        bodies = tuple(
            {
                "model": name,
                "messages": [
                    {"role": "user", "content": prompt_text(c.prompt_tokens, f"{app_id}/{i}/{j}:")}
                ],
                # At least one token: the API refuses 0, and a call that produced nothing is
                # not recorded as demand.
                "max_tokens": max(1, c.completion_tokens),
                "stream": False,
            }
            for j, c in enumerate(stage.llm_calls())
        )
        steps.append(LLMStep(stage.name, headers, bodies))
    return AppPlan(app_id, run.app, run.run_id, start_s, deadline, tuple(steps))


def plan(
    runs: Sequence[AppRun],
    rate_per_s: float,
    *,
    apps: int | None = None,
    seed: int = 0,
    model: str | None = None,
    default_model: str = "default",
    time_scale: float = 1.0,
    id_prefix: str | None = None,
) -> list[AppPlan]:
    """Applications in arrival order: all `runs` once in order, or `apps` of them drawn with
    replacement; Poisson arrivals of `rate_per_s`, the first at 0. The same seed gives the
    same plan; which runs are drawn does not change when they arrive."""
    if not runs:
        raise ValueError("no runs to replay")
    if not (math.isfinite(rate_per_s) and rate_per_s > 0):
        raise ValueError(f"the arrival rate must be a positive number, got {rate_per_s!r}")
    if apps is not None and apps < 1:
        raise ValueError(f"apps must be at least 1, got {apps}")
    if not (math.isfinite(time_scale) and time_scale > 0):
        raise ValueError(f"the time scale must be a positive number, got {time_scale!r}")
    pick_rng, arrival_rng = np.random.default_rng(seed).spawn(2)
    chosen = (
        list(runs)
        if apps is None
        else [runs[i] for i in pick_rng.integers(0, len(runs), size=apps).tolist()]
    )
    t = poisson_arrivals(rate_per_s, len(chosen), arrival_rng)
    starts = (t - t[0]).tolist()
    prefix = id_prefix or f"replay-s{seed}"
    return [
        app_plan(run, f"{prefix}-{i}", start, model, default_model, time_scale)
        for i, (run, start) in enumerate(zip(chosen, starts, strict=True))
    ]
