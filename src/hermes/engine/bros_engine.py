"""An engine that co-serves real-time (RT) and best-effort (BE) requests the BROS way: the
same plan / complete contract as `scheduler.Engine` (and the same base), with BROS's batch
selection and, optionally, bidirectional KV blocks (`kv_manager.BidirKV`). docs/bros.md tells
the design; in short, each iteration, while the token budget and `max_num_seqs` allow:
1. RT requests whose slack is under `urgent_iterations` iterations, least slack first; one
   that needs KV memory takes it from BE requests;
2. running BE requests, in admission order;
3. the other RT requests, least slack first;
4. suspended BE requests coming back, then waiting BE requests, first come first served.
From step 2 on, BE work joins only while the iteration's estimated time stays under the cap
(`rt_pace.AdaptiveCap` times the tightest TPOT SLO) and under the tightest slack of the RT
requests already in it; a prefill chunk that does not fit whole is cut to the largest that
does. With bidirectional blocks a BE request preempted for RT memory is suspended lazily
(only the slots RT overwrites are checkpointed); without them it is swapped out whole.
Every iteration is planned on its own (no decode runs): priorities move every iteration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from hermes.engine.base import EngineBase, kv_blocks
from hermes.engine.bros_iteration import Iteration
from hermes.engine.cost_model import StepCostModel
from hermes.engine.engine_config import EngineConfig
from hermes.engine.kv_manager import BidirKV, CpuSlots, KVManager, PagedKV
from hermes.engine.request import EngineRequest, RequestState
from hermes.engine.request_queue import ClassQueue, PriorityQueue, remove_request
from hermes.engine.rt_pace import AdaptiveCap, AdaptiveMargin, BrosOptions, next_deadline
from hermes.engine.step import Step, StepResult, sample_token

# Lazy suspension gives way to swapping whole while more than this share of recent lazy
# suspensions (EWMA over about 1 / LAZY_MEMORY of them) ended in a whole checkpoint anyway.
LAZY_GIVE_UP = 0.5
LAZY_MEMORY = 0.1


@dataclass(slots=True)
class BrosStats:
    suspensions: int = 0  # BE requests suspended for RT memory
    checkpoint_slots: int = 0  # KV slots copied to CPU memory (lazily, or whole)
    restore_slots: int = 0  # KV slots copied back
    recomputes: int = 0  # BE requests that lost their KV (CPU memory full)
    rt_tokens: int = 0
    rt_late_tokens: int = 0  # RT tokens sampled after their deadline
    capped_iterations: int = 0  # iterations where the cap held BE work back


class BrosEngine(EngineBase):
    def __init__(
        self,
        cost: StepCostModel,
        config: EngineConfig | None = None,
        options: BrosOptions | None = None,
        bidirectional: bool = True,
    ) -> None:
        super().__init__(cost, config)
        cfg = self.config
        self.options = options or BrosOptions()
        bs = cfg.block_size
        gpu_blocks, cpu_blocks = kv_blocks(cost, cfg)
        self.block_size = bs
        self.kv: KVManager = (
            BidirKV(gpu_blocks, bs) if bidirectional else PagedKV(gpu_blocks, 0, bs)
        )
        self.cpu = CpuSlots(cpu_blocks * bs)
        self._copy_s_per_slot = cost.kv_bytes_per_token / cost.tp / cfg.swap_bytes_per_s
        self.cap = AdaptiveCap(self.options)
        self.margin = AdaptiveMargin(self.options, cost.step_time_s(1, 1, 1, 0.0, 1))
        self.queue = ClassQueue(be_by_priority=self.options.be_order == "priority")
        self.suspended: list[EngineRequest] = []  # BE, KV (partly) resident or on CPU
        self._aborted: set[int] = set()
        self._last_iteration_s = 0.0
        self._tpot_ref: float | None = None  # the tightest TPOT SLO seen
        self.bros = BrosStats()
        # How often a lazy suspension ended in a whole checkpoint anyway (EWMA of 0/1): under
        # sustained memory pressure it always does, after copies and churn that swapping the
        # request whole at once avoids; then suspensions are eager until lazy ones pay again.
        self._lazy_losses = 0.0

    # Inputs ---------------------------------------------------------------------------------

    def _rejection(self, req: EngineRequest) -> str | None:
        reason = super()._rejection(req)
        if reason is not None:
            return reason
        if req.slo_class not in ("rt", "be"):
            return f"slo_class must be 'rt' or 'be', got {req.slo_class!r}"
        if req.slo_class == "rt" and (req.ttft_slo_s is None or req.tpot_slo_s is None):
            return "a real-time request needs ttft_slo_s and tpot_slo_s"
        return None

    def _enqueue(self, req: EngineRequest) -> None:
        if req.slo_class == "rt":
            assert req.tpot_slo_s is not None
            self._tpot_ref = min(self._tpot_ref or math.inf, req.tpot_slo_s)
        self.queue.push(req)

    def set_priority(self, req: EngineRequest, priority: float) -> None:
        """RT requests go by slack whatever their priority; waiting BE ones by it under
        `be_order="priority"`."""
        if req.priority != priority:
            req.priority = priority
            be = self.queue.be
            if req.state is RequestState.WAITING and isinstance(be, PriorityQueue):
                be.reordered()

    def abort(self, req: EngineRequest, now: float) -> bool:
        if req.done:
            return False
        found = self.queue.remove(req) or remove_request(self.suspended, req)
        if not (found or remove_request(self.running, req)):
            return False
        if self._in_flight is not None and req.state is RequestState.RUNNING:
            self._aborted.add(id(req))
        self._release(req)
        self._mark_aborted(req, now)
        return True

    def shorten(self, step: Step, now: float) -> float:
        """Every step is one iteration: nothing to cut."""
        if step is not self._in_flight:
            raise RuntimeError("BrosEngine.shorten: not the step in flight")
        return step.end_s

    # Queries --------------------------------------------------------------------------------

    @property
    def outstanding(self) -> int:
        return len(self.running) + len(self.queue) + len(self.suspended)

    @property
    def queued_tokens(self) -> int:
        return sum(r.num_tokens - r.num_computed for r in self.queue)

    @property
    def cpu_slots_used(self) -> int:
        return self.cpu.used

    @property
    def cpu_slots_total(self) -> int:
        return self.cpu.total

    # KV memory ------------------------------------------------------------------------------

    def grow(self, r: EngineRequest, tokens: int, reclaim: bool = False) -> int:
        """Give `r` KV for `tokens` tokens; the slots checkpointed to CPU memory first."""
        copied = 0
        for victim, slots in self.kv.grow(r, tokens, reclaim).items():
            assert isinstance(victim, EngineRequest)
            if self.cpu.room(slots):
                self.cpu.put(victim, slots)
                copied += slots
            else:  # no room to checkpoint: the victim loses its KV and starts over
                self.drop_kv(victim)
        self.bros.checkpoint_slots += copied
        return copied

    def drop_kv(self, r: EngineRequest) -> None:
        self._release(r)
        self.suspended.remove(r)
        r.num_computed = 0
        r.state = RequestState.WAITING
        self.queue.be.push_front(r)
        self.bros.recomputes += 1

    def _release(self, r: EngineRequest) -> None:
        self.kv.release(r)
        self.cpu.drop(r)

    def swap_out(self, r: EngineRequest) -> int:
        """Preempt running BE `r` whole: its KV to CPU memory if there is room, else dropped.
        The slots copied."""
        self.running.remove(r)
        r.preemptions += 1
        self.stats.preemptions += 1
        slots = min(r.num_computed, self.kv.resident(r))
        if self.cpu.room(slots):
            self.kv.release(r)
            self.cpu.put(r, slots)
            r.state = RequestState.SWAPPED
            self.suspended.append(r)
            self.bros.checkpoint_slots += slots
            return slots
        self._release(r)
        r.num_computed = 0
        r.state = RequestState.WAITING
        self.queue.be.push_front(r)
        self.bros.recomputes += 1
        return 0

    def suspend_for_rt(self, r: EngineRequest) -> int:
        """Take running BE `r` off the GPU for RT memory; the slots copied now."""
        if not self.kv.lazy_suspend or self._lazy_losses > LAZY_GIVE_UP:
            if self.kv.lazy_suspend:  # eager for now; a few of these and lazy is tried again
                self._lazy_losses *= 1.0 - LAZY_MEMORY
            self.bros.suspensions += 1
            return self.swap_out(r)
        self.running.remove(r)
        r.preemptions += 1
        self.stats.preemptions += 1
        self.kv.suspend(r)
        r.state = RequestState.SWAPPED
        self.suspended.append(r)
        self.bros.suspensions += 1
        return 0

    def resume(self, r: EngineRequest, tokens: int) -> int | None:
        """Bring suspended `r` back with room for `tokens`; the slots copied back, or None
        (left suspended) when its KV does not fit with a block to spare for each running RT
        request: without that margin the next RT block would take it off again at once, and
        each round trip copies KV (a lazily suspended request with nothing lost needs none)."""
        kv = self.kv
        on_cpu = self.cpu.held(r)
        spare = self.block_size * sum(1 for q in self.running if q.slo_class == "rt")
        if kv.lazy_suspend and kv.holds(r):
            # Slots overwritten while suspended are in CPU memory, charged below. Suspending
            # again costs nothing unless slots were lost: no margin needed then.
            lost = kv.resume(r)
            self._lazy_losses *= 1.0 - LAZY_MEMORY  # a lazy suspension paid
            margin = spare if lost else 0
            if kv.slots_needed(r, tokens) + margin > kv.free_slots or not kv.fits(r, tokens):
                kv.suspend(r)
                return None
        elif kv.slots_needed(r, tokens) + spare > kv.free_slots or not kv.fits(r, tokens):
            return None
        self.grow(r, tokens)
        self.cpu.drop(r)
        self.bros.restore_slots += on_cpu
        return on_cpu

    def checkpoint_whole(self, r: EngineRequest) -> int:
        """Copy suspended `r`'s resident KV to CPU memory and free its GPU slots (or drop it
        all when CPU memory is full); the slots copied."""
        resident = min(self.kv.resident(r), r.num_computed)
        self._lazy_losses += LAZY_MEMORY * (1.0 - self._lazy_losses)  # the lazy bet lost
        if not self.cpu.room(resident):
            self.drop_kv(r)
            return 0
        self.kv.release(r)
        self.cpu.put(r, resident)
        self.bros.checkpoint_slots += resident
        return resident

    def newest_resident(self, exclude: EngineRequest) -> EngineRequest | None:
        """The latest-arrived suspended request with KV still on the GPU (bidirectional)."""
        best = None
        for r in self.suspended:
            if r is exclude or not (self.kv.lazy_suspend and self.kv.holds(r)):
                continue
            if best is None or (r.arrival_s, r.seq) > (best.arrival_s, best.seq):
                best = r
        return best

    def be_victim(self, scheduled: set[int], exclude: EngineRequest) -> EngineRequest | None:
        """The running BE request to preempt: the latest arrival not in this batch."""
        best = None
        for r in self.running:
            if r.slo_class != "be" or r is exclude or id(r) in scheduled:
                continue
            if best is None or (r.arrival_s, r.seq) > (best.arrival_s, best.seq):
                best = r
        return best

    def rt_victim(
        self, scheduled: set[int], exclude: EngineRequest, now: float
    ) -> EngineRequest | None:
        """The running RT request to recompute when memory is short: the most slack."""
        best, most = None, -math.inf
        for r in self.running:
            if r.slo_class == "rt" and r is not exclude and id(r) not in scheduled:
                s = self.slack(r, now)
                if s > most:
                    best, most = r, s
        return best

    def recompute_rt(self, r: EngineRequest) -> None:
        self.running.remove(r)
        self._release(r)
        r.num_computed = 0
        r.preemptions += 1
        self.stats.preemptions += 1
        r.state = RequestState.WAITING
        self.queue.rt.append(r)

    # Planning -------------------------------------------------------------------------------

    def slack(self, r: EngineRequest, now: float) -> float:
        return next_deadline(r, self.margin.value) - now

    def _plan(self, now: float) -> Step:
        it = Iteration(self, now)
        it.run()
        if not it.batch.chunks and it.copied == 0:
            raise RuntimeError(
                "BrosEngine: work is queued but nothing can be scheduled "
                f"({len(self.running)} running, {len(self.queue.rt)} RT waiting, "
                f"{len(self.queue.be)} BE waiting, {len(self.suspended)} suspended)"
            )
        duration = it.batch.time() + it.copied * self._copy_s_per_slot
        self.stats.swapped_blocks += -(-it.copied // self.block_size)
        self._last_iteration_s = duration
        return Step(start_s=now, end_s=now + duration, chunks=it.batch.chunks, first_s=duration)

    # Completion -----------------------------------------------------------------------------

    def complete(self, step: Step) -> StepResult:
        self._land(step)
        end = step.end_s
        stats = self.stats
        stats.iterations += 1
        finished: list[EngineRequest] = []
        first_tokens: list[EngineRequest] = []
        tokens = 0
        missed = False
        be_tokens = all_tokens = 0
        chunks = step.chunks
        if self._aborted:
            chunks = [ch for ch in chunks if id(ch[0]) not in self._aborted]
            self._aborted.clear()
        for r, n, _ in chunks:
            all_tokens += n
            if r.slo_class == "be":
                be_tokens += n
            if n == 1 and r.num_computed > 0:
                stats.decode_tokens += 1
            else:
                stats.prefill_tokens += n
            r.num_computed += n
            if r.num_computed < r.num_tokens:
                continue
            if r.slo_class == "rt":
                self.bros.rt_tokens += 1
                if end > next_deadline(r) + 1e-9:
                    self.bros.rt_late_tokens += 1
                    missed = True
            sample_token(r, end, stats, first_tokens, finished)
            tokens += 1
        if any(r.slo_class == "rt" for r, _, _ in chunks) or missed:
            self.cap.observe(missed)
        self.margin.observe(be_tokens, all_tokens, self._tpot_ref)
        self._finish(finished, end)
        stats.peak_blocks = max(stats.peak_blocks, self.kv.used_blocks)
        return StepResult(finished, first_tokens, tokens)

    # Invariants -----------------------------------------------------------------------------

    def check_invariants(self) -> None:
        """Raise AssertionError if the bookkeeping is inconsistent (call between steps)."""
        self.cpu.check()
        for r in self.running:
            assert r.state is RequestState.RUNNING
            assert self.kv.resident(r) >= r.num_computed, f"{r.id}: KV missing"
        for r in self.queue.rt:
            assert r.state is RequestState.WAITING
            assert r.slo_class == "rt"
        for r in self.queue.be:
            assert r.state is RequestState.WAITING
            assert r.slo_class == "be"
            assert r.num_computed == 0
        for r in self.suspended:
            assert r.state is RequestState.SWAPPED
            assert r.slo_class == "be"
        self.kv.check(self.running)
