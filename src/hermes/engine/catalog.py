"""Engines by name: how a cluster's instances choose their batch selection.

- `vllm`: vLLM V1's first come first served over every request (`scheduler.Engine`);
- `vllm-priority`: the same engine ordering waiting requests by their priority (vLLM's
  `--scheduling-policy priority`); the shell sets the priorities;
- `bros`: real-time before best-effort per iteration with bidirectional KV blocks;
- `bros-nobidir`: the same without them (a preempted best-effort request is swapped whole).
"""

from __future__ import annotations

from hermes.engine.bros_engine import BrosEngine
from hermes.engine.cost_model import StepCostModel
from hermes.engine.engine_config import EngineConfig
from hermes.engine.interface import LLMEngine
from hermes.engine.rt_pace import BrosOptions
from hermes.engine.scheduler import Engine

ENGINE_KINDS: tuple[str, ...] = ("vllm", "vllm-priority", "bros", "bros-nobidir")


def make_engine(
    kind: str,
    cost: StepCostModel,
    config: EngineConfig | None = None,
    options: BrosOptions | None = None,
    decode_runs: bool = True,
) -> LLMEngine:
    """A fresh engine of `kind` (one of `ENGINE_KINDS`)."""
    if kind in ("vllm", "vllm-priority"):
        return Engine(cost, config, decode_runs=decode_runs)
    if kind in ("bros", "bros-nobidir"):
        return BrosEngine(cost, config, options, bidirectional=kind == "bros")
    raise ValueError(f"unknown engine {kind!r}; known: {', '.join(ENGINE_KINDS)}")
