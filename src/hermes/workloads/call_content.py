"""An application call's `content` (`engine.prefix`): which of its tokens other calls share.

A call's prompt is ``[shared prefix][history][own tokens]`` (docs/app-trace-format.md). Its
content names two kinds of token stream:

- ``("prefix", app type, "stage", stage name)`` (or ``"id", shared_prefix_id``): the prompt
  template that every run of the type sends, the same tokens in every run;
- ``("run", app id)``: the run's context, one stream per application in the simulation (two
  replays of one recorded run are two applications and share no history).

A call reads the first `history_tokens` tokens of its run's context. The call of a
single-call stage whose history covers the whole context so far continues the stream with its
own prompt tokens and its completion, so the next call, which resends them, finds them
cached. The calls of a fan-out stage, or a call that resends less than the whole context,
read it without extending it: their own tokens differ from the stream's, and naming them as
the stream would claim sharing that did not happen.

The fields come from the run; where a run records none, from what a PDGraph learned
(`PDGraph.learned_prefixes`); else the call has no content (it shares nothing).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, replace

from hermes.core.prefix_learning import StagePrefix
from hermes.core.runs import AppRun, LLMCall, Stage
from hermes.engine.prefix import Content

Learned = Mapping[str, StagePrefix]


@dataclass(frozen=True, slots=True)
class _Sharing:
    prefix: int
    history: int
    prefix_id: str | None


def _sharing(
    call: LLMCall, stage: str, context: int, recorded: bool, learned: Learned | None
) -> _Sharing | None:
    """The call's fields: recorded in the run, else learned for its stage, else None."""
    if recorded:
        if not call.records_sharing:
            return None
        return _Sharing(
            call.shared_prefix_tokens or 0, call.history_tokens or 0, call.shared_prefix_id
        )
    hint = None if learned is None else learned.get(stage)
    if hint is None:
        return None
    prefix = min(hint.shared_prefix_tokens, call.prompt_tokens)
    history = min(context, call.prompt_tokens - prefix) if hint.history_resend else 0
    return _Sharing(prefix, history, None)


def _extends(stage: Stage, share: _Sharing, context: int) -> bool:
    return len(stage.calls) == 1 and share.history >= context


def _content(
    run: AppRun, app_id: Hashable, stage: Stage, call: LLMCall, share: _Sharing, context: int
) -> Content | None:
    runs: list[tuple[Hashable, int]] = []
    if share.prefix > 0:
        scope = ("id", share.prefix_id) if share.prefix_id is not None else ("stage", stage.name)
        runs.append((("prefix", run.app, *scope), share.prefix))
    if _extends(stage, share, context):
        own = call.prompt_tokens - share.prefix + call.completion_tokens
    else:
        own = min(share.history, context)
    if own > 0:
        runs.append((("run", app_id), own))
    return tuple(runs) or None


def call_content(
    run: AppRun,
    app_id: Hashable,
    stage_index: int,
    call_index: int,
    learned: Learned | None = None,
) -> Content | None:
    """The content of call `call_index` of stage `stage_index` of application `app_id`, which
    runs `run`; None for a tool call or a call that shares nothing."""
    target = run.stages[stage_index]
    if target.kind != "llm":
        return None
    recorded = any(c.records_sharing for s in run.stages for c in s.llm_calls())
    context = 0  # tokens of the run's context stream so far
    for stage in run.stages[:stage_index]:
        calls = stage.llm_calls()
        if len(calls) != 1:  # a tool stage, or a fan-out that does not extend the context
            continue
        share = _sharing(calls[0], stage.name, context, recorded, learned)
        if share is not None and _extends(stage, share, context):
            context = calls[0].prompt_tokens - share.prefix + calls[0].completion_tokens
    call = target.calls[call_index]
    assert isinstance(call, LLMCall)
    share = _sharing(call, target.name, context, recorded, learned)
    return None if share is None else _content(run, app_id, target, call, share, context)


def run_contents(
    run: AppRun, app_id: Hashable, learned: Learned | None = None
) -> list[list[Content | None]]:
    """Every call's content, stage by stage (tool calls: None)."""
    return [
        [call_content(run, app_id, i, k, learned) for k in range(len(stage.calls))]
        for i, stage in enumerate(run.stages)
    ]


def with_learned_fields(run: AppRun, learned: Learned) -> AppRun:
    """`run` with the sharing fields its calls would have by `learned` (`PDGraph.learned_prefixes`)
    where it records none, so that a shell can hand a plain run to `call_content` (or write it
    out); a run that records fields comes back as it is."""
    if any(c.records_sharing for s in run.stages for c in s.llm_calls()):
        return run
    stages: list[Stage] = []
    context = 0
    for stage in run.stages:
        calls = stage.llm_calls()
        if stage.kind != "llm" or not calls:
            stages.append(stage)
            continue
        filled: list[LLMCall] = []
        for call in calls:
            share = _sharing(call, stage.name, context, False, learned)
            filled.append(call if share is None else replace(
                call, shared_prefix_tokens=share.prefix, history_tokens=share.history
            ))  # fmt: skip
        first = _sharing(calls[0], stage.name, context, False, learned)
        if first is not None and _extends(stage, first, context):
            context = calls[0].prompt_tokens - first.prefix + calls[0].completion_tokens
        stages.append(replace(stage, calls=tuple(filled)))
    return replace(run, stages=tuple(stages))
