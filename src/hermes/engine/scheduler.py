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
   priority order (lower first, ties by arrival), while the token budget, `max_num_seqs` (or
   a lower `admit_limit` a shell sets) and the pool allow; the first that does not fit stops
   admission.

Speed: when every running request is decoding and nothing could be admitted, consecutive
iterations differ only by one more KV token per sequence, so `plan` returns one `Step` of
many iterations timed in closed form. It ends where the first request finishes or the pool
could run dry, and `shorten` cuts it at the first iteration boundary after an outside event
(an arrival or a priority change), so the result equals stepping one iteration at a time.

Aborts (`abort`) may come at any time; one during a step in flight takes effect at its end.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from hermes.engine.base import EngineBase, kv_blocks
from hermes.engine.cost_model import StepCostModel
from hermes.engine.engine_config import EngineConfig
from hermes.engine.kv_manager import PagedKV
from hermes.engine.kv_pool import BlockPool
from hermes.engine.prefix_cache import PrefixCachedKV
from hermes.engine.request import EngineRequest, RequestState
from hermes.engine.request_queue import PriorityQueue, priority_order, remove_request
from hermes.engine.step import BatchCost, Chunk, EngineStats, Step, StepResult, sample_token

__all__ = ["Engine", "EngineStats", "Step", "StepResult", "lowest_priority_victim"]

VictimPolicy = Callable[[Sequence[EngineRequest]], EngineRequest]


def lowest_priority_victim(running: Sequence[EngineRequest]) -> EngineRequest:
    """vLLM's choice: the running request with the largest priority value, latest arrival."""
    return max(running, key=priority_order)


class Engine(EngineBase):
    kv: PagedKV

    def __init__(
        self,
        cost: StepCostModel,
        config: EngineConfig | None = None,
        victim: VictimPolicy = lowest_priority_victim,
        decode_runs: bool = True,
    ) -> None:
        """`decode_runs=False` plans one iteration at a time (same results, slower)."""
        super().__init__(cost, config)
        cfg = self.config
        gpu_blocks, cpu_blocks = kv_blocks(cost, cfg)
        # Each GPU copies its own shard over its own PCIe link.
        block_bytes = cfg.block_size * cost.kv_bytes_per_token
        self._caching = cfg.prefix_caching
        if self._caching:
            tier = int(cfg.cpu_kv_cache_bytes // block_bytes)
            self.kv = PrefixCachedKV(gpu_blocks, cpu_blocks, cfg.block_size, tier)
        else:
            self.kv = PagedKV(gpu_blocks, cpu_blocks, cfg.block_size)
        self._swap_s_per_block = block_bytes / cost.tp / cfg.swap_bytes_per_s
        self._victim = victim
        self._decode_runs = decode_runs
        self.queue = PriorityQueue()
        self.swapped: list[EngineRequest] = []
        self._aborted_in_flight = False

    @property
    def gpu(self) -> BlockPool:
        return self.kv.gpu

    @property
    def cpu(self) -> BlockPool:
        return self.kv.cpu

    @property
    def waiting(self) -> list[EngineRequest]:
        """Waiting requests in the order they would be admitted."""
        return self.queue.ordered()

    def _enqueue(self, req: EngineRequest) -> None:
        self.queue.push(req)

    # Inputs ---------------------------------------------------------------------------------

    def set_priority(self, req: EngineRequest, priority: float) -> None:
        """Re-rank a request; it takes effect at the next iteration boundary."""
        if req.priority != priority:
            req.priority = priority
            if req.state is RequestState.WAITING:
                self.queue.reordered()
            elif req.state is RequestState.SWAPPED:
                self.swapped.sort(key=priority_order)

    def abort(self, req: EngineRequest, now: float) -> bool:
        """Drop a waiting, swapped or running request for good; False if it is not queued here.

        Its KV blocks go back to their pool, its state becomes ABORTED and `finish_s` is
        `now`; its progress fields keep what it had reached. Legal at any time, also between
        `plan` and `complete`: `complete` skips the request, as vLLM discards an aborted
        request's share of the iteration in flight. Of a decode run in flight, the iterations
        that ended by `now` still count for it (see `_credit_partial_run`), so that runs and
        single iterations agree; a shell that plans decode runs `shorten`s the run in flight
        on an abort, as on an arrival.
        """
        state = req.state
        if state is RequestState.RUNNING:
            found = remove_request(self.running, req)
        elif state is RequestState.WAITING:
            found = self.queue.remove(req)
        elif state is RequestState.SWAPPED:
            found = remove_request(self.swapped, req)
        else:
            return False
        if not found:
            return False
        step = self._in_flight
        if state is RequestState.RUNNING and step is not None:
            self._aborted_in_flight = True
            if step.decode_run:
                self._credit_partial_run(req, step, now)
        if state is RequestState.SWAPPED:
            self.kv.release_swapped(req)
        else:
            self.kv.release(req)
        self._mark_aborted(req, now)
        return True

    def _credit_partial_run(self, req: EngineRequest, step: Step, now: float) -> None:
        """Tokens of a decode run in flight that `req` sampled before its abort at `now`: the
        iterations that ended at or before `now` (at most all but the last)."""
        x = now - step.start_s
        j = step.boundary(x)
        m = min(j if step.elapsed(j) <= x else j - 1, step.iterations - 1)
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
        req.last_token_s = step.start_s + step.elapsed(m)

    # Queries --------------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        return not (self.running or self.queue.items or self.swapped)

    @property
    def outstanding(self) -> int:
        return len(self.running) + len(self.queue.items) + len(self.swapped)

    @property
    def queued_tokens(self) -> int:
        """Tokens still to compute of the requests waiting for admission."""
        return sum(r.num_tokens - r.num_computed for r in self.queue.items)

    # Planning -------------------------------------------------------------------------------

    def _plan(self, now: float) -> Step:
        self.queue.ordered()
        return (self._decode_runs and self._plan_decode_run(now)) or self._plan_iteration(now)

    def _admissible(self, free: int, budget: int) -> bool:
        """Would the admission phase take a swapped or waiting request with `free` blocks?"""
        if budget <= 0 or len(self.running) >= self.seq_limit:
            return False
        gpu = self.kv.gpu
        if self.swapped:
            head = self.swapped[0]
            chunk = min(head.num_tokens - head.num_computed, budget)
            return gpu.blocks_for(head.num_computed + chunk) <= free
        if self.queue.items:
            head = self.queue.head()
            hits, free_hits = self._hits(head)
            computed = head.num_computed + hits * gpu.block_size
            chunk = min(head.num_tokens - computed, budget)
            return gpu.blocks_for(computed + chunk) - head.blocks - hits + free_hits <= free
        return False

    def _hits(self, r: EngineRequest) -> tuple[int, int]:
        """(cached blocks of `r`'s prompt, of those how many are free) if it were admitted."""
        if not self._caching or r.content is None:
            return 0, 0
        kv = self.kv
        assert isinstance(kv, PrefixCachedKV)
        return kv.cached_prefix(r)

    def _plan_decode_run(self, now: float) -> Step | None:
        running = self.running
        n = len(running)
        budget = self.config.max_num_batched_tokens
        if n == 0 or n > budget:
            return None
        bs = self.kv.block_size
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
        free = self.kv.gpu.free
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
        step.end_s = now + step.elapsed(iterations)
        return step

    def _plan_iteration(self, now: float) -> Step:
        budget = self.config.max_num_batched_tokens
        chunks: list[Chunk] = []
        budget, swap_blocks, preempted = self._schedule_running(chunks, budget)
        if not preempted:
            budget, copied = self._swap_in(chunks, budget)
            swap_blocks += copied
            swap_blocks += self._admit_waiting(chunks, budget, now)
        if not chunks and swap_blocks == 0:
            raise RuntimeError(
                "Engine: work is queued but nothing can be scheduled (a request larger than "
                "the KV pool slipped past admission)"
            )
        duration = swap_blocks * self._swap_s_per_block
        if chunks:
            duration += BatchCost.of(self.cost, chunks).time()
        self.stats.swapped_blocks += swap_blocks
        return Step(start_s=now, end_s=now + duration, chunks=chunks, first_s=duration)

    def _schedule_running(self, chunks: list[Chunk], budget: int) -> tuple[int, int, bool]:
        """Phase 1: running requests in admission order, preempting for memory. Returns the
        budget left, the blocks swapped out and whether anything was preempted."""
        # The hot loop of the simulator: block arithmetic on the paged pool, inline.
        kv, gpu, running = self.kv, self.kv.gpu, self.running
        bs = gpu.block_size
        swap_blocks = 0
        preempted = False
        i = 0
        while i < len(running) and budget > 0:
            r = running[i]
            n = min(r.num_tokens - r.num_computed, budget)
            need = -(-(r.num_computed + n) // bs) - r.blocks
            lost_self = False
            while need > gpu.free:
                if self._caching and self._break_a_pin():
                    continue  # a pinned idle prefix gives way before a running request
                victim = self._victim(running)
                preempted = True
                if running.index(victim) < i:  # scheduled earlier in this iteration: undo it
                    k = next(k for k, ch in enumerate(chunks) if ch[0] is victim)
                    _, n_v, new_v = chunks.pop(k)
                    budget += n_v
                    kv.give_back(victim, new_v)
                    i -= 1
                swap_blocks += self._preempt(victim)
                if victim is r:
                    lost_self = True
                    break
            if lost_self:
                continue
            gpu.allocate(need)
            r.blocks += need
            if r.content is not None and self._caching:
                self._register(r, r.num_computed + n)
            chunks.append((r, n, need))
            budget -= n
            i += 1
        return budget, swap_blocks, preempted

    def _break_a_pin(self) -> bool:
        kv = self.kv
        return isinstance(kv, PrefixCachedKV) and kv.break_a_pin()

    def _break_pin_behind(self, r: EngineRequest) -> bool:
        kv = self.kv
        return isinstance(kv, PrefixCachedKV) and kv.break_a_pin_ranked_below(r.priority)

    def _take_hits(self, r: EngineRequest, hits: int) -> int:
        """`r` takes its cached blocks; the blocks copied back from the CPU tier."""
        kv = self.kv
        assert isinstance(kv, PrefixCachedKV)
        loaded = kv.take_hits(r, hits)
        if r.first_scheduled_s is None:  # served from the cache on first admission
            r.cached_tokens = hits * kv.block_size
        return loaded

    def _register(self, r: EngineRequest, tokens: int) -> None:
        kv = self.kv
        assert isinstance(kv, PrefixCachedKV)
        kv.register(r, tokens)

    def _swap_in(self, chunks: list[Chunk], budget: int) -> tuple[int, int]:
        """Phase 2a: swapped-out requests come back first; the budget left, blocks copied."""
        copied = 0
        while self.swapped and self._admissible(self.kv.gpu.free, budget):
            r = self.swapped.pop(0)
            n = min(r.num_tokens - r.num_computed, budget)
            before = r.blocks
            copied += self.kv.swap_in(r, r.num_computed + n)
            chunks.append((r, n, r.blocks - before))
            r.state = RequestState.RUNNING
            self.running.append(r)
            budget -= n
        return budget, copied

    def _admit_waiting(self, chunks: list[Chunk], budget: int, now: float) -> int:
        """Phase 2b: waiting requests in priority order until one does not fit; the blocks
        copied back from the CPU tier for their cache hits."""
        if self.swapped:
            return 0
        gpu, running, seqs = self.kv.gpu, self.running, self.seq_limit
        bs = gpu.block_size
        waiting = self.queue.ordered()
        admitted = loaded = 0
        while admitted < len(waiting):
            if budget <= 0 or len(running) >= seqs:
                break
            r = waiting[admitted]
            hits, free_hits = self._hits(r) if r.content is not None else (0, 0)
            computed = r.num_computed + hits * bs
            n = min(r.num_tokens - computed, budget)
            need = -(-(computed + n) // bs) - r.blocks - hits
            if need + free_hits > gpu.free:
                if not running and self._break_a_pin():
                    continue  # nothing runs: pinned prefixes must not stall the engine
                if self._caching and self._break_pin_behind(r):
                    continue  # a pin whose owner is ranked behind `r` makes room for it
                break
            if hits:
                loaded += self._take_hits(r, hits)
            gpu.allocate(need)
            r.blocks += need
            if r.content is not None and self._caching:
                self._register(r, r.num_computed + n)
            r.state = RequestState.RUNNING
            if r.first_scheduled_s is None:
                r.first_scheduled_s = now
            running.append(r)
            chunks.append((r, n, need))
            budget -= n
            admitted += 1
        self.queue.drop_head(admitted)
        return loaded

    def _preempt(self, victim: EngineRequest) -> int:
        """Take `victim` off the GPU; returns blocks copied to CPU memory (0 for recompute)."""
        self.running.remove(victim)
        victim.preemptions += 1
        self.stats.preemptions += 1
        blocks = victim.blocks
        if self.config.preemption_mode == "swap" and self.kv.swap_out(victim):
            victim.state = RequestState.SWAPPED
            self.swapped.append(victim)
            self.swapped.sort(key=priority_order)
            return blocks
        if victim.blocks:
            self.kv.release(victim)
        victim.num_computed = 0
        victim.state = RequestState.WAITING
        self.queue.push(victim)
        return 0

    # Outside events during a decode run ---------------------------------------------------

    def shorten(self, step: Step, now: float) -> float:
        """End a decode run at the first iteration boundary at or after `now`; the new end."""
        if step is not self._in_flight:
            raise RuntimeError("Engine.shorten: not the step in flight")
        if not step.decode_run or now >= step.end_s:
            return step.end_s
        j = step.boundary(now - step.start_s)
        if j < step.iterations:
            step.iterations = j
            step.end_s = step.start_s + step.elapsed(j)
        return step.end_s

    # Completion -----------------------------------------------------------------------------

    def complete(self, step: Step) -> StepResult:
        """Apply a planned step at its end time: tokens computed and sampled, requests done."""
        self._land(step)
        self.stats.kv_block_s += self.kv.gpu.used * (step.end_s - step.start_s)
        chunks = step.chunks
        if self._aborted_in_flight:  # those requests are gone, their blocks already released
            self._aborted_in_flight = False
            chunks = [ch for ch in chunks if ch[0].state is RequestState.RUNNING]
        if step.decode_run:
            result = self._complete_run(step, chunks)
        else:
            result = self._complete_iteration(step, chunks)
        self.stats.peak_blocks = max(self.stats.peak_blocks, self.kv.gpu.used)
        self._finish(result.finished, step.end_s)
        return result

    def _complete_run(self, step: Step, chunks: list[Chunk]) -> StepResult:
        stats, kv = self.stats, self.kv
        j, end = step.iterations, step.end_s
        first_end = step.start_s + step.first_s
        finished: list[EngineRequest] = []
        gaps = stats.itl_single
        requests = [ch[0] for ch in chunks]
        for r in requests:
            assert r.last_token_s is not None
            gaps.append(first_end - r.last_token_s)
            r.num_computed += j
            r.num_tokens += j
            r.generated += j
            r.last_token_s = end
            if r.generated >= r.output_tokens:
                finished.append(r)
        kv.grow_all(requests)
        if self._caching:
            for r in requests:
                if r.content is not None:
                    self._register(r, r.num_computed)
        n = len(chunks)
        if j > 1 and n:
            stats.itl_runs.append((step.first_s, step.growth_s, j - 1, n))
        stats.iterations += j
        stats.decode_tokens += j * n
        return StepResult(finished, [], j * n)

    def _complete_iteration(self, step: Step, chunks: list[Chunk]) -> StepResult:
        stats = self.stats
        finished: list[EngineRequest] = []
        first_tokens: list[EngineRequest] = []
        tokens = 0
        stats.iterations += 1
        for r, n, _ in chunks:
            if n == 1 and r.num_computed > 0:
                stats.decode_tokens += 1
            else:
                stats.prefill_tokens += n
            r.num_computed += n
            if r.num_computed == r.num_tokens:
                sample_token(r, step.end_s, stats, first_tokens, finished)
                tokens += 1
        return StepResult(finished, first_tokens, tokens)

    # Invariants (for tests and debugging) ---------------------------------------------------

    def check_invariants(self) -> None:
        """Raise AssertionError if the bookkeeping is inconsistent (call between steps)."""
        self.kv.check(self.running)
        assert self.kv.cpu.used == sum(r.blocks for r in self.swapped), "CPU blocks leaked"
        assert len(self.running) <= self.config.max_num_seqs, "too many running sequences"
        for r in self.running:
            assert r.state is RequestState.RUNNING
            assert r.blocks == self.kv.blocks_for(r.num_computed), f"{r.id}: blocks off"
            assert r.num_tokens == r.prompt_tokens + r.generated
            assert 0 <= r.num_computed <= r.num_tokens
        for r in self.queue:
            assert r.state is RequestState.WAITING
            assert r.blocks == 0
            assert r.num_computed == 0
        for r in self.swapped:
            assert r.state is RequestState.SWAPPED
