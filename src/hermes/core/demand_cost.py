"""Turning token and tool demand into seconds of service.

The PDGraph measures demand in tokens and tool seconds; scheduling needs time. A cost function
is pluggable: the simulator's engine model supplies a calibrated one, and until then a linear
per-token model stands in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

# Re-exported for modules that still import it from here; new code imports hermes.types.
from hermes.types import FloatArray


class DemandCost(Protocol):
    """Seconds of service per call, vectorised over calls; hashable, as samplers cache on it."""

    def llm_calls_s(
        self, prompt_tokens: FloatArray, completion_tokens: FloatArray
    ) -> FloatArray: ...

    def tool_calls_s(self, duration_s: FloatArray) -> FloatArray: ...

    def llm_call_s(self, prompt_tokens: int, completion_tokens: int) -> float:
        """`llm_calls_s` of one call, without numpy's per-array overhead (the gateway costs
        each call as it ends: 17 µs through arrays, 1.3 µs in scalars)."""
        ...


@dataclass(frozen=True, slots=True)
class LinearCost:
    """Linear per-token cost.

    Defaults: prefill at the Vidur non-attention cost of Llama-2-7B on an A100 at 4,096 tokens
    (0.063 ms/token), decode at the median time per output token of an 8B model on vLLM on an
    A100 (12.0 ms); both from docs/calibration.md. Tool time is weighted 0 by default because a
    tool call does not occupy the LLM engine that the ranking shares out.
    """

    prefill_s_per_token: float = 6.3e-5
    decode_s_per_token: float = 12.0e-3
    tool_weight: float = 0.0

    def __post_init__(self) -> None:
        for name in ("prefill_s_per_token", "decode_s_per_token", "tool_weight"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"LinearCost.{name} must be finite and >= 0, got {value!r}")

    def llm_calls_s(self, prompt_tokens: FloatArray, completion_tokens: FloatArray) -> FloatArray:
        return (
            prompt_tokens * self.prefill_s_per_token + completion_tokens * self.decode_s_per_token
        )

    def tool_calls_s(self, duration_s: FloatArray) -> FloatArray:
        return duration_s * self.tool_weight

    def llm_call_s(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            prompt_tokens * self.prefill_s_per_token + completion_tokens * self.decode_s_per_token
        )
