"""One request's life inside an engine: its token counts, KV blocks and timestamps.

Mutable on purpose: the engine advances thousands of these per simulated second, so progress
is updated in place rather than copied. Only the engine writes the progress fields; the
scheduling policy writes `priority` through `Engine.set_priority`.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from enum import Enum

from hermes.engine.prefix import Content


class RequestState(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    SWAPPED = "swapped"
    FINISHED = "finished"
    REJECTED = "rejected"
    ABORTED = "aborted"


@dataclass(slots=True, eq=False)
class EngineRequest:
    """A generation of `output_tokens` tokens after a `prompt_tokens`-token prompt.

    `priority`: lower runs first; ties go to the earlier `arrival_s`, then the earlier
    submission. `slo_class` is "rt" (real-time: `ttft_slo_s` and `tpot_slo_s` set) or "be"
    (best-effort: no SLO, wants throughput), for class-aware batch selection (BROS); the
    vLLM-style scheduler ignores it.

    Token bookkeeping follows vLLM V1: `num_tokens` (prompt + generated) is what the request
    has; `num_computed` catches up to it, a chunk per iteration; when it does, a token is
    sampled. Prefill, decode and recompute after preemption are the same rule. A prefix
    cache hit at admission starts `num_computed` past the cached tokens, and
    `cached_tokens` records how many prompt tokens it served.
    """

    id: Hashable
    prompt_tokens: int
    output_tokens: int
    arrival_s: float
    priority: float = 0.0
    slo_class: str = "be"
    ttft_slo_s: float | None = None
    tpot_slo_s: float | None = None
    # What of its tokens other requests may share (`engine.prefix`); None: nothing.
    content: Content | None = None
    # Progress, written by the engine.
    state: RequestState = RequestState.WAITING
    num_tokens: int = 0
    num_computed: int = 0
    generated: int = 0
    blocks: int = 0
    seq: int = -1
    preemptions: int = 0
    cached_tokens: int = 0
    first_scheduled_s: float | None = None
    first_token_s: float | None = None
    last_token_s: float | None = None
    finish_s: float | None = None
    reason: str | None = None

    @property
    def done(self) -> bool:
        return self.state in (RequestState.FINISHED, RequestState.REJECTED, RequestState.ABORTED)
