"""The BROS experiments' workload: real-time (RT) chat requests with the Azure conversation
trace's lengths and Poisson arrivals, and a standing best-effort (BE) backlog with the paper's
uniform lengths. One seed, four streams drawn in fixed-size chunks: the same requests at every
load and under every policy (docs/bros.md). Only `conversation_lengths` reads a file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

import numpy as np

from hermes.engine.engine_config import EngineConfig
from hermes.types import FloatArray, IntArray
from hermes.workloads.request_traces import read_azure_csv

AZURE_CONVERSATION_CSV = "AzureLLMInferenceTrace_conv.csv"
# The paper's best-effort requests, inclusive bounds in tokens.
BE_PROMPT_TOKENS = (512, 1024)
BE_OUTPUT_TOKENS = (32, 128)
# Draws come in chunks of this many, so that a prefix never depends on how much was asked for.
_CHUNK = 1024
# Stream numbers under the seed.
_RT_ARRIVALS, _RT_LENGTHS, _BE_LENGTHS, _CAPACITY_LENGTHS = 1, 2, 3, 4


@dataclass(frozen=True, slots=True)
class LengthPool:
    """(prompt, output) token counts of a trace's requests, row by row."""

    prompts: IntArray
    outputs: IntArray

    def __post_init__(self) -> None:
        if self.prompts.shape != self.outputs.shape or self.prompts.ndim != 1:
            raise ValueError("LengthPool: prompts and outputs must be 1-D and of equal length")
        if self.prompts.size == 0:
            raise ValueError("LengthPool: no requests")

    def __len__(self) -> int:
        return int(self.prompts.size)

    def clipped(self, max_model_len: int) -> LengthPool:
        """Lengths an engine with `max_model_len` accepts: each count at least 1, the output
        at most `max_model_len - 1`, and the prompt at most `max_model_len - output` (the
        prompt is cut, as a chat front end truncates the history; the answer is kept)."""
        if max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2, got {max_model_len}")
        outputs = np.clip(self.outputs, 1, max_model_len - 1)
        prompts = np.clip(self.prompts, 1, max_model_len - outputs)
        return LengthPool(prompts.astype(np.int64), outputs.astype(np.int64))

    def percentile_prompt(self, q: float) -> int:
        return int(np.percentile(self.prompts, q, method="inverted_cdf"))

    def median_context(self) -> int:
        """The median over requests of the context halfway through the answer: prompt plus
        half the output, the typical KV length a decoding chat request reads."""
        mid = self.prompts + self.outputs // 2
        return int(np.percentile(mid, 50, method="inverted_cdf"))


@cache
def conversation_lengths() -> LengthPool:
    """Every row of the packaged Azure conversation trace (19,366 requests)."""
    file = resources.files("hermes") / "data" / AZURE_CONVERSATION_CSV
    with resources.as_file(file) as path:
        rows = read_azure_csv(path)
    prompts = np.array([r.prompt_tokens for r in rows], dtype=np.int64)
    outputs = np.array([r.output_tokens for r in rows], dtype=np.int64)
    prompts.setflags(write=False)
    outputs.setflags(write=False)
    return LengthPool(prompts, outputs)


@dataclass(frozen=True, slots=True)
class RtTrace:
    """RT requests in arrival order: arrival (s), prompt and output tokens."""

    arrival_s: FloatArray
    prompt_tokens: IntArray
    output_tokens: IntArray
    rate_per_s: float

    def __len__(self) -> int:
        return int(self.arrival_s.size)


def unit_poisson_times(count: int, seed: int) -> FloatArray:
    """The first `count` points of a unit-rate Poisson process (the same prefix for any
    `count`); divide by λ for rate λ."""
    rng = np.random.default_rng([seed, _RT_ARRIVALS])
    chunks = [rng.standard_exponential(_CHUNK) for _ in range(-(-count // _CHUNK))]
    gaps = np.concatenate(chunks)[:count] if chunks else np.zeros(0)
    out: FloatArray = np.cumsum(gaps)
    return out


def rt_trace(pool: LengthPool, rate_per_s: float, until_s: float, seed: int) -> RtTrace:
    """Poisson arrivals at `rate_per_s` in [0, until_s), each request's lengths a uniformly
    drawn row of `pool` (clip the pool to the engine first: `LengthPool.clipped`)."""
    if not (math.isfinite(rate_per_s) and rate_per_s > 0):
        raise ValueError(f"rate_per_s must be finite and > 0, got {rate_per_s!r}")
    if not (math.isfinite(until_s) and until_s >= 0):
        raise ValueError(f"until_s must be finite and >= 0, got {until_s!r}")
    # Enough points that the process passes until_s: mean + 10 standard deviations + slack.
    mean = rate_per_s * until_s
    count = int(mean + 10.0 * math.sqrt(mean) + 16)
    times = unit_poisson_times(count, seed) / rate_per_s
    while times.size and times[-1] < until_s:  # practically never: extend and retry
        count *= 2
        times = unit_poisson_times(count, seed) / rate_per_s
    n = int(np.searchsorted(times, until_s, side="left"))
    rng = np.random.default_rng([seed, _RT_LENGTHS])
    rows = np.concatenate(
        [rng.integers(0, len(pool), _CHUNK) for _ in range(-(-n // _CHUNK))] or [np.zeros(0, int)]
    )[:n]
    return RtTrace(
        arrival_s=times[:n].astype(np.float64),
        prompt_tokens=pool.prompts[rows].astype(np.int64),
        output_tokens=pool.outputs[rows].astype(np.int64),
        rate_per_s=float(rate_per_s),
    )


@dataclass(slots=True)
class BeStream:
    """The endless sequence of BE requests' (prompt, output) lengths; `take` hands out the
    next ones. The k-th request's lengths depend on the seed and k only."""

    seed: int
    prompt_range: tuple[int, int] = BE_PROMPT_TOKENS
    output_range: tuple[int, int] = BE_OUTPUT_TOKENS
    taken: int = 0
    _rng: np.random.Generator = field(init=False, repr=False)
    _prompts: list[int] = field(init=False, repr=False, default_factory=list)
    _outputs: list[int] = field(init=False, repr=False, default_factory=list)

    def __post_init__(self) -> None:
        for name in ("prompt_range", "output_range"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi:
                raise ValueError(f"BeStream.{name} must satisfy 1 <= low <= high, got {lo, hi}")
        self._rng = np.random.default_rng([self.seed, _BE_LENGTHS])

    def take(self, n: int) -> list[tuple[int, int]]:
        while len(self._prompts) < self.taken + n:
            (p_lo, p_hi), (o_lo, o_hi) = self.prompt_range, self.output_range
            self._prompts += self._rng.integers(p_lo, p_hi, _CHUNK, endpoint=True).tolist()
            self._outputs += self._rng.integers(o_lo, o_hi, _CHUNK, endpoint=True).tolist()
        k = self.taken
        self.taken += n
        return list(zip(self._prompts[k : k + n], self._outputs[k : k + n], strict=True))


@dataclass(slots=True)
class PoolStream:
    """Like `BeStream`, but each request is a uniformly drawn row of `pool`: the open-ended
    supply of trace-shaped requests that measures an engine's capacity."""

    pool: LengthPool
    seed: int
    taken: int = 0
    _rng: np.random.Generator = field(init=False, repr=False)
    _rows: list[int] = field(init=False, repr=False, default_factory=list)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng([self.seed, _CAPACITY_LENGTHS])

    def take(self, n: int) -> list[tuple[int, int]]:
        while len(self._rows) < self.taken + n:
            self._rows += self._rng.integers(0, len(self.pool), _CHUNK).tolist()
        k = self.taken
        self.taken += n
        rows = self._rows[k : k + n]
        return [(int(self.pool.prompts[j]), int(self.pool.outputs[j])) for j in rows]


def default_be_backlog(
    config: EngineConfig, prompt_range: tuple[int, int] = BE_PROMPT_TOKENS
) -> int:
    """BE requests kept queued (submitted, not running) at every iteration boundary: as many
    prompts as one iteration's token budget can start, plus one cut short (5 with vLLM's
    defaults), the smallest queue that never runs dry (why: docs/bros.md)."""
    return -(-config.max_num_batched_tokens // prompt_range[0]) + 1
