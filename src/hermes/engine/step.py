"""What an engine plans and reports: a `Step` (one iteration, or a run of pure-decode
iterations), its `StepResult`, the running `EngineStats`, and the cost of a batch.

Shared by every engine behind `engine.interface.LLMEngine`, so that a shell (simulator,
emulator, test) drives them all the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hermes.engine.cost_model import StepCostModel
from hermes.engine.request import EngineRequest

Chunk = tuple[EngineRequest, int, int]  # (request, tokens this iteration, blocks allocated)


@dataclass(slots=True, eq=False)
class Step:
    """One planned iteration, or a run of `iterations` pure-decode iterations.

    `chunks` holds (request, tokens this iteration, blocks allocated for it). In a run, the
    m-th iteration (1-based) takes `first_s + (m - 1) * growth_s`: only the KV read grows.
    """

    start_s: float
    end_s: float
    chunks: list[Chunk]
    iterations: int = 1
    decode_run: bool = False  # blocks are allocated at completion, for the iterations run
    first_s: float = 0.0
    growth_s: float = 0.0

    def elapsed(self, j: int) -> float:
        """Seconds from the start to the end of the j-th iteration."""
        return j * self.first_s + self.growth_s * j * (j - 1) / 2.0

    def boundary(self, x: float) -> int:
        """The smallest j >= 1 with `elapsed(j) >= x`."""
        a, b = self.first_s, self.growth_s
        # From the quadratic a*j + b*j*(j-1)/2 = x, then made exact.
        if b > 0:
            h = a - b / 2.0
            j = max(1, math.ceil((-h + math.sqrt(h * h + 2.0 * b * x)) / b))
        else:
            j = max(1, math.ceil(x / a))
        while j > 1 and self.elapsed(j - 1) >= x:
            j -= 1
        while self.elapsed(j) < x:
            j += 1
        return j


@dataclass(frozen=True, slots=True)
class StepResult:
    finished: list[EngineRequest]
    first_tokens: list[EngineRequest]
    tokens: int


@dataclass(slots=True)
class EngineStats:
    iterations: int = 0
    busy_s: float = 0.0
    prefill_tokens: int = 0
    decode_tokens: int = 0
    preemptions: int = 0
    swapped_blocks: int = 0
    kv_block_s: float = 0.0
    peak_blocks: int = 0
    # Inter-token gaps: single values, plus runs (first_s, growth_s, count, weight) whose
    # gaps are first_s + i * growth_s for i in 1..count, each shared by `weight` requests.
    itl_single: list[float] = field(default_factory=list)
    itl_runs: list[tuple[float, float, int, int]] = field(default_factory=list)


def sample_token(
    r: EngineRequest,
    end: float,
    stats: EngineStats,
    first_tokens: list[EngineRequest],
    finished: list[EngineRequest],
) -> None:
    """`r` caught up with its tokens in an iteration ending at `end` and sampled one more:
    count it, and note its first token, its gap since the last, or its finish."""
    r.generated += 1
    r.num_tokens += 1
    if r.first_token_s is None:
        r.first_token_s = end
        first_tokens.append(r)
    else:
        assert r.last_token_s is not None
        stats.itl_single.append(end - r.last_token_s)
    r.last_token_s = end
    if r.generated >= r.output_tokens:
        finished.append(r)


class BatchCost:
    """An iteration being assembled: its chunks and the running sums the cost model needs."""

    __slots__ = ("chunks", "cost", "decode", "kv", "outputs", "pairs", "prefill", "tokens")

    def __init__(self, cost: StepCostModel) -> None:
        self.cost = cost
        self.chunks: list[Chunk] = []
        self.tokens = self.decode = self.kv = self.outputs = self.prefill = 0
        self.pairs = 0.0

    @classmethod
    def of(cls, cost: StepCostModel, chunks: list[Chunk]) -> BatchCost:
        """A whole batch at once (the sums of `add`, in one loop: it runs every iteration)."""
        batch = cls(cost)
        tokens = decode = kv = outputs = 0
        pairs = 0.0
        for r, n, _ in chunks:
            c = r.num_computed
            tokens += n
            if n == 1 and c > 0:
                decode += 1
                kv += c + 1
            else:
                pairs += n * (c + n / 2.0)
            if c + n == r.num_tokens:
                outputs += 1
        batch.chunks = chunks
        batch.tokens, batch.decode, batch.kv, batch.outputs = tokens, decode, kv, outputs
        batch.prefill, batch.pairs = len(chunks) - decode, pairs
        return batch

    def time_with(self, r: EngineRequest, n: int) -> float:
        """The iteration's time if `n` more tokens of `r` joined it."""
        c = r.num_computed
        dec = n == 1 and c > 0
        return self.cost.step_time_s(
            self.tokens + n,
            self.decode + dec,
            self.kv + (c + 1 if dec else 0),
            self.pairs + (0.0 if dec else n * (c + n / 2.0)),
            self.outputs + (c + n == r.num_tokens),
            num_prefill_seqs=self.prefill + (not dec),
        )

    def add(self, r: EngineRequest, n: int, blocks: int = 0) -> None:
        c = r.num_computed
        self.chunks.append((r, n, blocks))
        self.tokens += n
        if n == 1 and c > 0:
            self.decode += 1
            self.kv += c + 1
        else:
            self.prefill += 1
            self.pairs += n * (c + n / 2.0)
        self.outputs += c + n == r.num_tokens

    def time(self) -> float:
        if not self.chunks:
            return 0.0
        return self.cost.step_time_s(
            self.tokens, self.decode, self.kv, self.pairs, self.outputs, self.prefill
        )
