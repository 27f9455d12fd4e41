"""What every engine model shares: KV sizing from the cost model, admission checks,
submission order, the step-in-flight discipline, finishing requests and inter-token gaps.

An engine variant (`scheduler.Engine`, `bros_engine.BrosEngine`) supplies where waiting
requests queue (`_enqueue`, `outstanding`), how an iteration is chosen (`_plan`), and how a step
completes; `interface.LLMEngine` is the contract shells rely on.
"""

from __future__ import annotations

import numpy as np

from hermes.engine.cost_model import StepCostModel
from hermes.engine.engine_config import EngineConfig
from hermes.engine.kv_manager import KVManager
from hermes.engine.request import EngineRequest, RequestState
from hermes.engine.step import EngineStats, Step
from hermes.types import FloatArray


def kv_blocks(cost: StepCostModel, config: EngineConfig) -> tuple[int, int]:
    """(GPU, CPU) KV blocks: from the config when set, else as vLLM sizes them (the GPU pool
    from the memory left at `gpu_memory_utilization`, swap space per GPU on the CPU)."""
    bs = config.block_size
    gpu = (
        config.num_gpu_blocks
        if config.num_gpu_blocks is not None
        else cost.kv_capacity_tokens(config.gpu_memory_utilization) // bs
    )
    cpu = (
        config.num_cpu_blocks
        if config.num_cpu_blocks is not None
        else int(config.swap_space_bytes_per_gpu * cost.tp // (bs * cost.kv_bytes_per_token))
    )
    return gpu, cpu


class EngineBase:
    """Shared bookkeeping; subclasses set `self.kv` before using it."""

    kv: KVManager

    def __init__(self, cost: StepCostModel, config: EngineConfig | None) -> None:
        self.cost = cost
        self.config = config or EngineConfig()
        self.stats = EngineStats()
        self.running: list[EngineRequest] = []  # KV on the GPU, in admission order
        self._seq = 0
        self._in_flight: Step | None = None
        # An admission limit set from outside (a shell's admission controller): it stops new
        # admissions while this many run, and never preempts. None: max_num_seqs alone.
        self.admit_limit: int | None = None

    @property
    def seq_limit(self) -> int:
        """How many sequences may run: max_num_seqs, or the admission limit if lower."""
        cap = self.config.max_num_seqs
        return cap if self.admit_limit is None else max(1, min(cap, self.admit_limit))

    # Inputs ---------------------------------------------------------------------------------

    def add(self, req: EngineRequest, now: float) -> bool:
        """Queue a request; False (state REJECTED, `reason` set) if it can never run here."""
        req.seq = self._seq
        self._seq += 1
        reason = self._rejection(req)
        if reason is not None:
            req.state = RequestState.REJECTED
            req.reason = reason
            req.finish_s = now
            return False
        req.state = RequestState.WAITING
        req.num_tokens = req.prompt_tokens
        self._enqueue(req)
        return True

    def _rejection(self, req: EngineRequest) -> str | None:
        p, o = req.prompt_tokens, req.output_tokens
        if p < 1 or o < 1:
            return f"prompt_tokens ({p}) and output_tokens ({o}) must both be >= 1"
        limit = self.config.max_model_len
        if p + o > limit:
            return f"prompt ({p}) + output ({o}) tokens exceed max_model_len {limit}"
        # The last sampled token is never fed back, so its KV is never stored.
        need = self.kv.blocks_for(p + o - 1)
        if need > self.kv.total_blocks:
            return f"needs {need} KV blocks; the pool has {self.kv.total_blocks}"
        return None

    def _enqueue(self, req: EngineRequest) -> None:
        raise NotImplementedError

    # Queries --------------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        return self.outstanding == 0

    @property
    def outstanding(self) -> int:
        """Requests queued, running or preempted here."""
        raise NotImplementedError

    @property
    def kv_total_blocks(self) -> int:
        """GPU KV blocks in the pool."""
        return self.kv.total_blocks

    @property
    def kv_used_fraction(self) -> float:
        """The share of the GPU KV cache in use."""
        return self.kv.used_fraction

    def itl_samples(self) -> tuple[FloatArray, FloatArray]:
        """Every inter-token gap so far as (values, weights)."""
        s = self.stats
        parts_v = [np.asarray(s.itl_single, dtype=np.float64)]
        parts_w = [np.ones(len(s.itl_single))]
        for first, growth, count, weight in s.itl_runs:
            parts_v.append(first + growth * np.arange(1, count + 1, dtype=np.float64))
            parts_w.append(np.full(count, float(weight)))
        return np.concatenate(parts_v), np.concatenate(parts_w)

    # Planning and completion ----------------------------------------------------------------

    def plan(self, now: float) -> Step | None:
        """The next iteration (or decode run) starting at `now`; None when there is no work."""
        if self._in_flight is not None:
            raise RuntimeError(f"{type(self).__name__}.plan: the previous step has not completed")
        if self.idle:
            return None
        step = self._plan(now)
        self._in_flight = step
        return step

    def _plan(self, now: float) -> Step:
        raise NotImplementedError

    def _land(self, step: Step) -> None:
        """`step` is the one in flight and ends now: account its time."""
        if step is not self._in_flight:
            raise RuntimeError(f"{type(self).__name__}.complete: not the step in flight")
        self._in_flight = None
        self.stats.busy_s += step.end_s - step.start_s

    def _finish(self, finished: list[EngineRequest], end: float) -> None:
        """Finished requests give their KV back and leave the running set."""
        if not finished:
            return
        for r in finished:
            self._release(r)
            r.state = RequestState.FINISHED
            r.finish_s = end
        done = set(map(id, finished))
        self.running = [r for r in self.running if id(r) not in done]

    def _release(self, r: EngineRequest) -> None:
        self.kv.release(r)

    def _mark_aborted(self, req: EngineRequest, now: float) -> None:
        req.state = RequestState.ABORTED
        req.finish_s = now
