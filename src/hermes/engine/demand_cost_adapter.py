"""The engine cost model seen through `hermes.core.demand_cost.DemandCost`.

Schedulers rank applications by their demand in seconds of engine service. One call's share of
a batched engine is its prefill (run alone: prefill iterations are dominated by the chunk) plus,
per generated token, 1/B of a decode iteration shared with B-1 other sequences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hermes.engine.cost_model import StepCostModel
from hermes.types import FloatArray


@dataclass(frozen=True, slots=True)
class EngineDemandCost:
    """Seconds of engine service of one call at a typical decode batch size.

    llm: prefill_time(prompt) + completion * decode_step(B, context) / B, where context is the
    call's mean context while it decodes, prompt + completion / 2 (the same midpoint the
    fidelity benchmark uses against Splitwise). tool: duration * tool_weight; 0 by default
    because a tool call does not occupy the engine.
    """

    model: StepCostModel
    decode_batch_size: int = 16
    tool_weight: float = 0.0

    def __post_init__(self) -> None:
        b = self.decode_batch_size
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ValueError(f"EngineDemandCost.decode_batch_size must be an int >= 1, got {b!r}")
        w = self.tool_weight
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"EngineDemandCost.tool_weight must be finite and >= 0, got {w!r}")

    def llm_calls_s(self, prompt_tokens: FloatArray, completion_tokens: FloatArray) -> FloatArray:
        p = np.asarray(prompt_tokens, dtype=np.float64)
        c = np.asarray(completion_tokens, dtype=np.float64)
        b = self.decode_batch_size
        decode_step = self.model.decode_step_s_array(b, p + c / 2.0)
        out: FloatArray = self.model.prefill_time_s_array(p) + c * decode_step / b
        return out

    def llm_call_s(self, prompt_tokens: int, completion_tokens: int) -> float:
        p, c, b = prompt_tokens, completion_tokens, self.decode_batch_size
        m = self.model
        # The same terms as the arrays: one prefill iteration alone, then c decode steps at B.
        prefill = m.step_time_s(p, 0, 0, p * (p / 2.0), 0, num_prefill_seqs=1) if p > 0 else 0.0
        fixed, s_per_kv_token = m.decode_step_terms(b)
        return prefill + c * (fixed + b * (p + c / 2.0) * s_per_kv_token) / b

    def tool_calls_s(self, duration_s: FloatArray) -> FloatArray:
        out: FloatArray = np.asarray(duration_s, dtype=np.float64) * self.tool_weight
        return out
