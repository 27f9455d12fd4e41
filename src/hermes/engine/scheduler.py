"""A vLLM-V1-style engine as a synchronous state machine: plan an iteration, then complete it.

`Engine.plan(now)` chooses the next batch and returns a `Step` with its end time from the
cost model; the shell (simulator or test) lets time pass and calls `Engine.complete(step)`.
Nothing here reads a clock.

Batch selection per iteration, as vLLM V1 does it:
1. running requests in admission order, each taking `num_tokens - num_computed` tokens
   (one for a decoding request, a chunk for a prefill) out of `max_num_batched_tokens`; when
   the KV pool cannot hold a request's new tokens, the victim policy picks a running request
   to preempt (by recompute, or by swap to CPU memory) until it fits;
2. if nothing was preempted: swapped-out requests come back first, then waiting requests in
   priority order (lower first, ties by arrival), while the token budget, `max_num_seqs` and
   the pool allow; the first that does not fit stops admission.

Speed: when every running request is decoding and nothing could be admitted, consecutive
iterations differ only by one more KV token per sequence, so `plan` returns one `Step` of
many iterations timed in closed form. It ends where the first request finishes or the pool
could run dry, and `shorten` cuts it at the first iteration boundary after an outside event
(an arrival or a priority change), so the result equals stepping one iteration at a time.

Aborts (`abort`) may come at any time; one during a step in flight takes effect at its end.

Extension points: a class-aware batch selector (real-time vs best-effort, shared KV blocks)
replaces `_plan_iteration`; an instance that hosts several models owns one `Engine` each.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from hermes.engine.cost_model import StepCostModel
from hermes.engine.engine_config import EngineConfig
from hermes.engine.kv_pool import BlockPool
from hermes.engine.request import EngineRequest, RequestState

FloatArray = NDArray[np.float64]
VictimPolicy = Callable[[Sequence[EngineRequest]], EngineRequest]


def _order(r: EngineRequest) -> tuple[float, float, int]:
    return (r.priority, r.arrival_s, r.seq)


def lowest_priority_victim(running: Sequence[EngineRequest]) -> EngineRequest:
    """vLLM's choice: the running request with the largest priority value, latest arrival."""
    return max(running, key=_order)


@dataclass(slots=True, eq=False)
class Step:
    """One planned iteration, or a run of `iterations` pure-decode iterations.

    `chunks` holds (request, tokens this iteration, blocks allocated for it). In a run, the
    m-th iteration (1-based) takes `first_s + (m - 1) * growth_s`: only the KV read grows.
    """

    start_s: float
    end_s: float
    chunks: list[tuple[EngineRequest, int, int]]
    iterations: int = 1
    decode_run: bool = False  # blocks are allocated at completion, for the iterations run
    first_s: float = 0.0
    growth_s: float = 0.0

    def _elapsed(self, j: int) -> float:
        return j * self.first_s + self.growth_s * j * (j - 1) / 2.0

    def _boundary(self, x: float) -> int:
        """The smallest j >= 1 with `_elapsed(j) >= x`."""
        a, b = self.first_s, self.growth_s
        # From the quadratic a*j + b*j*(j-1)/2 = x, then made exact.
        if b > 0:
            h = a - b / 2.0
            j = max(1, math.ceil((-h + math.sqrt(h * h + 2.0 * b * x)) / b))
        else:
            j = max(1, math.ceil(x / a))
        while j > 1 and self._elapsed(j - 1) >= x:
            j -= 1
        while self._elapsed(j) < x:
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


class Engine:
    def __init__(
        self,
        cost: StepCostModel,
        config: EngineConfig | None = None,
        victim: VictimPolicy = lowest_priority_victim,
        decode_runs: bool = True,
    ) -> None:
        """`decode_runs=False` plans one iteration at a time (same results, slower)."""
        self.cost = cost
        self._decode_runs = decode_runs
        self.config = cfg = config or EngineConfig()
        bs = cfg.block_size
        gpu_blocks = (
            cfg.num_gpu_blocks
            if cfg.num_gpu_blocks is not None
            else cost.kv_capacity_tokens(cfg.gpu_memory_utilization) // bs
        )
        block_bytes = bs * cost.kv_bytes_per_token
        cpu_blocks = (
            cfg.num_cpu_blocks
            if cfg.num_cpu_blocks is not None
            else int(cfg.swap_space_bytes_per_gpu * cost.tp // block_bytes)
        )
        self.gpu = BlockPool(gpu_blocks, bs)
        self.cpu = BlockPool(cpu_blocks, bs)
        # Each GPU copies its own shard over its own PCIe link.
        self._swap_s_per_block = block_bytes / cost.tp / cfg.swap_bytes_per_s
        self._victim = victim
        self.waiting: list[EngineRequest] = []
        self.running: list[EngineRequest] = []
        self.swapped: list[EngineRequest] = []
        self._waiting_sorted = True
        self._seq = 0
        self._in_flight: Step | None = None
        self._aborted_in_flight = False
        self.stats = EngineStats()

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
        self.waiting.append(req)
        self._waiting_sorted = False
        return True

    def _rejection(self, req: EngineRequest) -> str | None:
        p, o = req.prompt_tokens, req.output_tokens
        if p < 1 or o < 1:
            return f"prompt_tokens ({p}) and output_tokens ({o}) must both be >= 1"
        limit = self.config.max_model_len
        if p + o > limit:
            return f"prompt ({p}) + output ({o}) tokens exceed max_model_len {limit}"
        # The last sampled token is never fed back, so its KV is never stored.
        need = self.gpu.blocks_for(p + o - 1)
        if need > self.gpu.total:
            return f"needs {need} KV blocks; the pool has {self.gpu.total}"
        return None

    def set_priority(self, req: EngineRequest, priority: float) -> None:
        """Re-rank a request; it takes effect at the next iteration boundary."""
        if req.priority != priority:
            req.priority = priority
            if req.state is RequestState.WAITING:
                self._waiting_sorted = False
            elif req.state is RequestState.SWAPPED:
                self.swapped.sort(key=_order)

    def abort(self, req: EngineRequest, now: float) -> bool:
        """Drop a waiting, swapped or running request for good; False if it is not queued here.

        The request's KV blocks (GPU, or CPU for a swapped one) go back to their pool, its
        state becomes ABORTED and `finish_s` is `now`; its progress fields (`generated`,
        `num_computed`) keep what it had reached. Finished, rejected, already aborted and
        unknown requests are left alone (False).

        Legal at any time, also between `plan` and `complete`. The blocks are released at
        once (nothing can reuse them before the in-flight step completes, since `plan` only
        runs after `complete`), and `complete` skips the request: its share of the iteration
        in flight at `now` is computed and discarded, as in vLLM, where an abort takes effect
        at the next iteration boundary. An aborted request never appears in a later
        `StepResult`. Of a decode run in flight, the iterations that ended by `now` (all but
        the last, at most) still count for the request, so that runs and single iterations
        agree. A shell that plans decode runs treats an abort like an arrival and `shorten`s
        the run in flight, so that the batch shrinks at the next iteration boundary.
        """
        state = req.state
        if state is RequestState.RUNNING:
            queue, pool = self.running, self.gpu
        elif state is RequestState.WAITING:
            queue, pool = self.waiting, self.gpu
        elif state is RequestState.SWAPPED:
            queue, pool = self.swapped, self.cpu
        else:
            return False
        # Identity, not equality (EngineRequest has eq=False); removal keeps the order.
        k = next((k for k, r in enumerate(queue) if r is req), None)
        if k is None:
            return False
        del queue[k]
        step = self._in_flight
        if state is RequestState.RUNNING and step is not None:
            self._aborted_in_flight = True
            if step.decode_run:
                self._credit_partial_run(req, step, now)
        pool.release(req.blocks)
        req.blocks = 0
        req.state = RequestState.ABORTED
        req.finish_s = now
        return True

    def _credit_partial_run(self, req: EngineRequest, step: Step, now: float) -> None:
        """Tokens of a decode run in flight that `req` sampled before its abort at `now`.

        The iterations that ended at or before `now` count (at most all but the last), as if
        the run had been stepped one iteration at a time and the abort came during the next.
        """
        x = now - step.start_s
        j = step._boundary(x)
        m = min(j if step._elapsed(j) <= x else j - 1, step.iterations - 1)
        if m <= 0:
            return
        assert req.last_token_s is not None
        stats = self.stats
        stats.itl_single.append(step.start_s + step.first_s - req.last_token_s)
        if m > 1:
            stats.itl_runs.append((step.first_s, step.growth_s, m - 1, 1))
        stats.decode_tokens += m
        req.num_computed += m
        req.num_tokens += m
        req.generated += m
        req.last_token_s = step.start_s + step._elapsed(m)

    # Queries --------------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        return not (self.running or self.waiting or self.swapped)

    @property
    def outstanding(self) -> int:
        return len(self.running) + len(self.waiting) + len(self.swapped)

    def itl_samples(self) -> tuple[FloatArray, FloatArray]:
        """Every inter-token gap so far as (values, weights)."""
        s = self.stats
        parts_v = [np.asarray(s.itl_single, dtype=np.float64)]
        parts_w = [np.ones(len(s.itl_single))]
        for first, growth, count, weight in s.itl_runs:
            parts_v.append(first + growth * np.arange(1, count + 1, dtype=np.float64))
            parts_w.append(np.full(count, float(weight)))
        return np.concatenate(parts_v), np.concatenate(parts_w)

    # Planning -------------------------------------------------------------------------------

    def plan(self, now: float) -> Step | None:
        """The next iteration (or decode run) starting at `now`; None when there is no work."""
        if self._in_flight is not None:
            raise RuntimeError("Engine.plan: the previous step has not completed")
        if self.idle:
            return None
        if not self._waiting_sorted:
            self.waiting.sort(key=_order)
            self._waiting_sorted = True
        step = (self._decode_runs and self._plan_decode_run(now)) or self._plan_iteration(now)
        self._in_flight = step
        return step

    def _admissible(self, free: int, budget: int) -> bool:
        """Would the admission phase take a swapped or waiting request with `free` blocks?"""
        if budget <= 0 or len(self.running) >= self.config.max_num_seqs:
            return False
        if self.swapped:
            head = self.swapped[0]
            chunk = min(head.num_tokens - head.num_computed, budget)
            return self.gpu.blocks_for(head.num_computed + chunk) <= free
        if self.waiting:
            head = self.waiting[0]
            chunk = min(head.num_tokens - head.num_computed, budget)
            return self.gpu.blocks_for(head.num_computed + chunk) - head.blocks <= free
        return False

    def _plan_decode_run(self, now: float) -> Step | None:
        running = self.running
        n = len(running)
        budget = self.config.max_num_batched_tokens
        if n == 0 or n > budget:
            return None
        bs = self.gpu.block_size
        kv = 0
        need = 0
        steps_left = math.inf
        for r in running:
            c = r.num_computed
            if r.num_tokens - c != 1 or r.last_token_s is None:  # not yet decoding
                return None
            kv += c
            need += -(-(c + 1) // bs) - r.blocks
            left = r.output_tokens - r.generated
            if left < steps_left:
                steps_left = left
        free = self.gpu.free
        # Each sequence needs at most ceil(m / bs) new blocks over m iterations.
        kv_steps = (free // n) * bs
        iterations = int(min(steps_left, kv_steps))
        if iterations < 2 or self._admissible(free - need, budget - n):
            return None
        fixed, per_kv = self.cost.decode_step_terms(n)
        step = Step(
            start_s=now,
            end_s=now,
            chunks=[(r, 1, 0) for r in running],
            iterations=iterations,
            decode_run=True,
            first_s=fixed + per_kv * (kv + n),
            growth_s=per_kv * n,
        )
        step.end_s = now + step._elapsed(iterations)
        return step

    def _plan_iteration(self, now: float) -> Step:
        cfg = self.config
        gpu = self.gpu
        budget = cfg.max_num_batched_tokens
        running = self.running
        chunks: list[tuple[EngineRequest, int, int]] = []
        swap_blocks = 0
        preempted = False
        i = 0
        while i < len(running) and budget > 0:
            r = running[i]
            n = min(r.num_tokens - r.num_computed, budget)
            need = gpu.blocks_for(r.num_computed + n) - r.blocks
            lost_self = False
            while need > gpu.free:
                victim = self._victim(running)
                preempted = True
                if running.index(victim) < i:  # scheduled earlier in this iteration: undo it
                    k = next(k for k, ch in enumerate(chunks) if ch[0] is victim)
                    _, n_v, new_v = chunks.pop(k)
                    budget += n_v
                    gpu.release(new_v)
                    victim.blocks -= new_v
                    i -= 1
                swap_blocks += self._preempt(victim)
                if victim is r:
                    lost_self = True
                    break
            if lost_self:
                continue
            gpu.allocate(need)
            r.blocks += need
            chunks.append((r, n, need))
            budget -= n
            i += 1

        if not preempted:
            while self.swapped and self._admissible(gpu.free, budget):
                r = self.swapped.pop(0)
                n = min(r.num_tokens - r.num_computed, budget)
                total = gpu.blocks_for(r.num_computed + n)
                self.cpu.release(r.blocks)
                swap_blocks += r.blocks
                gpu.allocate(total)
                chunks.append((r, n, total - r.blocks))
                r.blocks = total
                r.state = RequestState.RUNNING
                running.append(r)
                budget -= n
            admitted = 0
            waiting = self.waiting
            while not self.swapped and admitted < len(waiting):
                if budget <= 0 or len(running) >= cfg.max_num_seqs:
                    break
                r = waiting[admitted]
                n = min(r.num_tokens - r.num_computed, budget)
                need = gpu.blocks_for(r.num_computed + n) - r.blocks
                if need > gpu.free:
                    break
                gpu.allocate(need)
                r.blocks += need
                r.state = RequestState.RUNNING
                if r.first_scheduled_s is None:
                    r.first_scheduled_s = now
                running.append(r)
                chunks.append((r, n, need))
                budget -= n
                admitted += 1
            del waiting[:admitted]

        if not chunks and swap_blocks == 0:
            raise RuntimeError(
                "Engine: work is queued but nothing can be scheduled (a request larger than "
                "the KV pool slipped past admission)"
            )
        num_tokens = num_decode = kv = outputs = 0
        pairs = 0.0
        for r, n, _ in chunks:
            c = r.num_computed
            num_tokens += n
            if n == 1 and c > 0:
                num_decode += 1
                kv += c + 1
            else:
                pairs += n * (c + n / 2.0)
            if c + n == r.num_tokens:
                outputs += 1
        duration = swap_blocks * self._swap_s_per_block
        if chunks:
            duration += self.cost.step_time_s(
                num_tokens,
                num_decode,
                kv,
                pairs,
                outputs,
                num_prefill_seqs=len(chunks) - num_decode,
            )
        self.stats.swapped_blocks += swap_blocks
        return Step(start_s=now, end_s=now + duration, chunks=chunks, first_s=duration)

    def _preempt(self, victim: EngineRequest) -> int:
        """Take `victim` off the GPU; returns blocks copied to CPU memory (0 for recompute)."""
        self.running.remove(victim)
        victim.preemptions += 1
        self.stats.preemptions += 1
        blocks = victim.blocks
        self.gpu.release(blocks)
        if self.config.preemption_mode == "swap" and self.cpu.fits(blocks):
            self.cpu.allocate(blocks)
            victim.state = RequestState.SWAPPED
            self.swapped.append(victim)
            self.swapped.sort(key=_order)
            return blocks
        victim.blocks = 0
        victim.num_computed = 0
        victim.state = RequestState.WAITING
        self.waiting.append(victim)
        self._waiting_sorted = False
        return 0

    # Outside events during a decode run ---------------------------------------------------

    def shorten(self, step: Step, now: float) -> float:
        """End a decode run at the first iteration boundary at or after `now`; the new end."""
        if step is not self._in_flight:
            raise RuntimeError("Engine.shorten: not the step in flight")
        if not step.decode_run or now >= step.end_s:
            return step.end_s
        j = step._boundary(now - step.start_s)
        if j < step.iterations:
            step.iterations = j
            step.end_s = step.start_s + step._elapsed(j)
        return step.end_s

    # Completion -----------------------------------------------------------------------------

    def complete(self, step: Step) -> StepResult:
        """Apply a planned step at its end time: tokens computed and sampled, requests done."""
        if step is not self._in_flight:
            raise RuntimeError("Engine.complete: not the step in flight")
        self._in_flight = None
        end = step.end_s
        stats = self.stats
        gpu = self.gpu
        finished: list[EngineRequest] = []
        first_tokens: list[EngineRequest] = []
        tokens = 0
        stats.busy_s += end - step.start_s
        stats.kv_block_s += gpu.used * (end - step.start_s)
        chunks = step.chunks
        if self._aborted_in_flight:  # those requests are gone, their blocks already released
            self._aborted_in_flight = False
            chunks = [ch for ch in chunks if ch[0].state is RequestState.RUNNING]
        if step.decode_run:
            j = step.iterations
            first_end = step.start_s + step.first_s
            for r, _, _ in chunks:
                assert r.last_token_s is not None
                stats.itl_single.append(first_end - r.last_token_s)
                r.num_computed += j
                r.num_tokens += j
                r.generated += j
                new = gpu.blocks_for(r.num_computed) - r.blocks
                gpu.allocate(new)
                r.blocks += new
                r.last_token_s = end
                if r.generated >= r.output_tokens:
                    finished.append(r)
            n = len(chunks)
            if j > 1 and n:
                stats.itl_runs.append((step.first_s, step.growth_s, j - 1, n))
            stats.iterations += j
            stats.decode_tokens += j * n
            tokens = j * n
        else:
            stats.iterations += 1
            for r, n, _ in chunks:
                if n == 1 and r.num_computed > 0:
                    stats.decode_tokens += 1
                else:
                    stats.prefill_tokens += n
                r.num_computed += n
                if r.num_computed == r.num_tokens:
                    sample_token(r, end, stats, first_tokens, finished)
                    tokens += 1
        stats.peak_blocks = max(stats.peak_blocks, gpu.used)
        if finished:
            for r in finished:
                gpu.release(r.blocks)
                r.blocks = 0
                r.state = RequestState.FINISHED
                r.finish_s = end
            done = set(map(id, finished))
            self.running = [r for r in self.running if id(r) not in done]
        return StepResult(finished, first_tokens, tokens)

    # Invariants (for tests and debugging) ---------------------------------------------------

    def check_invariants(self) -> None:
        """Raise AssertionError if the bookkeeping is inconsistent (call between steps)."""
        gpu, cpu = self.gpu, self.cpu
        assert 0 <= gpu.free <= gpu.total, "GPU blocks out of range"
        assert gpu.used == sum(r.blocks for r in self.running), "GPU blocks leaked"
        assert cpu.used == sum(r.blocks for r in self.swapped), "CPU blocks leaked"
        assert len(self.running) <= self.config.max_num_seqs, "too many running sequences"
        for r in self.running:
            assert r.state is RequestState.RUNNING
            assert r.blocks == gpu.blocks_for(r.num_computed), f"{r.id}: blocks off"
            assert r.num_tokens == r.prompt_tokens + r.generated
            assert 0 <= r.num_computed <= r.num_tokens
        for r in self.waiting:
            assert r.state is RequestState.WAITING
            assert r.blocks == 0
            assert r.num_computed == 0
        for r in self.swapped:
            assert r.state is RequestState.SWAPPED
