"""A mixed application workload shrunk to fit the tiny llama.cpp model (`tiny_gguf`), for the
gateway's real-engine demonstration (tests/test_gateway_real_engine.py and
benchmarks/gateway_real_engine.py).

Template runs keep their stage structure and fan-out; token counts shrink (prompts by 8,
completions by 4, to at most 200 and 64 tokens, so a prompt with its chat template fits the
server's 512-token context) and tool stages to 10-50 ms, so that an application takes tens to
hundreds of milliseconds on one CPU thread. Short applications (factool_math, factool_code)
share the engine with long ones (langchain_mapreduce, whose map stage fans out to about 20
calls): the mix in which application-level ordering matters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from hermes.core.pdgraph import learn
from hermes.core.runs import AppRun, LLMCall, Stage, ToolCall
from hermes.workloads.pdgraph_files import save_pdgraphs
from hermes.workloads.templates import generate_runs

__all__ = ["MIX", "mixed_runs", "shrink", "write_graphs"]

MIX: tuple[str, ...] = ("factool_math", "factool_code", "langchain_mapreduce")
MAX_PROMPT = 200
MAX_COMPLETION = 64
TOOL_SCALE = 0.1
TOOL_RANGE_S = (0.01, 0.05)


def _stage(s: Stage) -> Stage:
    if s.kind == "tool":
        lo, hi = TOOL_RANGE_S
        tools = tuple(ToolCall(min(hi, max(lo, c.duration_s * TOOL_SCALE))) for c in s.tool_calls())
        return replace(s, calls=tools)
    calls = tuple(
        LLMCall(
            min(MAX_PROMPT, max(1, math.ceil(c.prompt_tokens / 8))),
            min(MAX_COMPLETION, max(1, math.ceil(c.completion_tokens / 4))),
        )
        for c in s.llm_calls()
    )
    return replace(s, calls=calls)


def shrink(run: AppRun) -> AppRun:
    """The run with the same stages and fan-outs, small enough for the tiny model."""
    return replace(run, stages=tuple(_stage(s) for s in run.stages))


def mixed_runs(per_type: int, seed: int, mix: Sequence[str] = MIX) -> list[AppRun]:
    """`per_type` shrunk template runs of each application of `mix`."""
    return [
        shrink(r) for k, name in enumerate(mix) for r in generate_runs(name, per_type, seed + k)
    ]


def write_graphs(path: Path, per_type: int, seed: int, mix: Sequence[str] = MIX) -> Path:
    """PDGraphs learned from shrunk template runs (use a seed apart from the workload's)."""
    save_pdgraphs(path, learn(mixed_runs(per_type, seed, mix)))
    return path
