"""What a planner reads off an instance's speed: Θ, output tokens per busy second of each
model (an exponentially weighted ratio over `throughput_memory_s` busy seconds, seeded with
`throughput_prior_weight_s` seconds at a prior), and the time to drain what it holds
(docs/qlm.md)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from hermes.cluster.multi_model.config import MultiModelConfig
from hermes.engine.cost_model import StepCostModel
from hermes.engine.request import EngineRequest


def decode_prior(
    cost: StepCostModel, config: MultiModelConfig, max_num_seqs: int, kv_capacity_tokens: int
) -> float:
    """The cost model's decode throughput (tokens/s) for a batch of
    `throughput_prior_batch` sequences of `throughput_prior_context_tokens` context, the batch
    capped by `max_num_seqs` and by what the KV pool holds."""
    ctx = config.throughput_prior_context_tokens
    fit = kv_capacity_tokens // ctx
    batch = max(1, min(config.throughput_prior_batch, max_num_seqs, fit))
    fixed, per_kv = cost.decode_step_terms(batch)
    return batch / (fixed + per_kv * batch * ctx)


def drain_seconds(
    requests: Iterable[EngineRequest], cost: StepCostModel, tokens_per_s: float
) -> float:
    """Seconds to finish `requests`: the larger of their remaining output tokens at
    `tokens_per_s` and the longest one's remaining tokens at one-sequence decode speed."""
    fixed, per_kv = cost.decode_step_terms(1)
    total = 0
    longest = 0.0
    for r in requests:
        left = max(0, r.output_tokens - r.generated)
        total += left
        ctx = r.prompt_tokens + r.output_tokens
        longest = max(longest, left * (fixed + per_kv * ctx))
    return max(total / tokens_per_s, longest)


class Throughput:
    """Θ per model. `prior(model)` is asked once, the first time a model is read or observed."""

    __slots__ = ("_config", "_prior", "_state")

    def __init__(self, config: MultiModelConfig, prior: Callable[[str], float]) -> None:
        self._config = config
        self._prior = prior
        self._state: dict[str, list[float]] = {}  # model -> [decayed tokens, decayed seconds]

    def tokens_per_s(self, model: str) -> float:
        tokens, seconds = self._of(model)
        return tokens / seconds

    def observe(self, model: str, tokens: int, seconds: float) -> None:
        """`tokens` came out of `seconds` of busy time serving `model`."""
        if seconds <= 0:
            return
        state = self._of(model)
        keep = math.exp(-seconds / self._config.throughput_memory_s)
        state[0] = state[0] * keep + tokens
        state[1] = state[1] * keep + seconds

    def _of(self, model: str) -> list[float]:
        state = self._state.get(model)
        if state is None:
            weight = self._config.throughput_prior_weight_s
            state = self._state[model] = [self._prior(model) * weight, weight]
        return state
