"""An engine that co-serves real-time (RT) and best-effort (BE) requests the BROS way: the
same plan / complete state machine as `scheduler.Engine`, with BROS's batch selection
(`policies.bros`) and, optionally, bidirectional KV blocks (`bidir_kv`).

Each iteration, in this order, while the token budget and `max_num_seqs` allow:
1. RT requests whose slack is under `urgent_iterations` iterations, least slack first; one
   that needs KV memory takes it from BE requests (see below);
2. running BE requests (decodes and prefill chunks), in admission order;
3. the other RT requests, least slack first;
4. suspended BE requests coming back, then waiting BE requests, first come first served.
From step 2 on, BE work joins the batch only while the iteration's estimated time stays under
the cap (`AdaptiveCap` times the tightest TPOT SLO) and under the tightest slack of the RT
requests already in it; a prefill chunk that does not fit whole is cut to the largest that
does. RT prefills with time to spare are chunked under the cap too.

KV memory. With bidirectional blocks, RT memory comes first from free slots (BE blocks'
unused ends included), then from BE requests the policy suspends, latest arrival first: a
suspended request's KV stays where it is and only the slots an RT request overwrites are
copied to CPU memory first (lazy checkpointing); resuming copies back only those. Without
them (`bros-nobidir`), a BE victim is swapped out whole at once, as vLLM swaps. Either way, a
BE request that cannot grow preempts the latest-arrived running BE request (swapped out, or
recomputed when CPU memory is full), and CPU memory is bounded by `swap_space_bytes_per_gpu`.

Every iteration is planned on its own (no decode runs): priorities move every iteration.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from hermes.engine.bidir_kv import BidirBlockPool
from hermes.engine.cost_model import StepCostModel
from hermes.engine.engine_config import EngineConfig
from hermes.engine.kv_pool import BlockPool
from hermes.engine.request import EngineRequest, RequestState
from hermes.engine.scheduler import Engine, EngineStats, Step, StepResult, sample_token
from hermes.policies.bros import AdaptiveCap, BrosOptions, next_deadline


@dataclass(slots=True)
class BrosStats:
    suspensions: int = 0  # BE requests suspended for RT memory
    checkpoint_slots: int = 0  # KV slots copied to CPU memory (lazily, or whole)
    restore_slots: int = 0  # KV slots copied back
    recomputes: int = 0  # BE requests that lost their KV (CPU memory full)
    rt_tokens: int = 0
    rt_late_tokens: int = 0  # RT tokens sampled after their deadline
    capped_iterations: int = 0  # iterations where the cap held BE work back


class _Batch:
    """An iteration being assembled: its chunks and the running sums the cost model needs."""

    __slots__ = ("chunks", "cost", "decode", "kv", "outputs", "pairs", "prefill", "tokens")

    def __init__(self, cost: StepCostModel) -> None:
        self.cost = cost
        self.chunks: list[tuple[EngineRequest, int, int]] = []
        self.tokens = self.decode = self.kv = self.outputs = self.prefill = 0
        self.pairs = 0.0

    def time_with(self, r: EngineRequest, n: int) -> float:
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

    def add(self, r: EngineRequest, n: int) -> None:
        c = r.num_computed
        self.chunks.append((r, n, 0))
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


class BrosEngine:
    def __init__(
        self,
        cost: StepCostModel,
        config: EngineConfig | None = None,
        options: BrosOptions | None = None,
        bidirectional: bool = True,
    ) -> None:
        self.cost = cost
        self.config = cfg = config or EngineConfig()
        self.options = options or BrosOptions()
        self.bidirectional = bidirectional
        bs = cfg.block_size
        blocks = (
            cfg.num_gpu_blocks
            if cfg.num_gpu_blocks is not None
            else cost.kv_capacity_tokens(cfg.gpu_memory_utilization) // bs
        )
        self.block_size = bs
        self.bidir = BidirBlockPool(blocks, bs)
        self.gpu = BlockPool(blocks, bs)  # bros-nobidir's pool
        cpu_blocks = (
            cfg.num_cpu_blocks
            if cfg.num_cpu_blocks is not None
            else int(cfg.swap_space_bytes_per_gpu * cost.tp // (bs * cost.kv_bytes_per_token))
        )
        self.cpu_slots_total = cpu_blocks * bs
        self.cpu_slots_used = 0
        self._copy_s_per_slot = cost.kv_bytes_per_token / cost.tp / cfg.swap_bytes_per_s
        self.cap = AdaptiveCap(self.options)
        self.rt_waiting: list[EngineRequest] = []
        self.be_waiting: deque[EngineRequest] = deque()
        self.suspended: list[EngineRequest] = []  # BE, KV (partly) resident or on CPU
        self.running: list[EngineRequest] = []  # KV on the GPU, in admission order
        self._cpu_held: dict[int, int] = {}  # id(request) -> slots it has in CPU memory
        self._seq = 0
        self._in_flight: Step | None = None
        self._aborted: set[int] = set()
        self._last_iteration_s = 0.0
        self._tpot_ref: float | None = None  # the tightest TPOT SLO seen
        self.stats = EngineStats()
        self.bros = BrosStats()

    # Inputs ---------------------------------------------------------------------------------

    def add(self, req: EngineRequest, now: float) -> bool:
        req.seq = self._seq
        self._seq += 1
        p, o = req.prompt_tokens, req.output_tokens
        reason = None
        if p < 1 or o < 1:
            reason = f"prompt_tokens ({p}) and output_tokens ({o}) must both be >= 1"
        elif p + o > self.config.max_model_len:
            reason = f"prompt ({p}) + output ({o}) tokens exceed max_model_len"
        elif p + o - 1 > self.gpu.total * self.block_size:
            reason = "needs more KV slots than the pool has"
        elif req.slo_class not in ("rt", "be"):
            reason = f"slo_class must be 'rt' or 'be', got {req.slo_class!r}"
        elif req.slo_class == "rt" and (req.ttft_slo_s is None or req.tpot_slo_s is None):
            reason = "a real-time request needs ttft_slo_s and tpot_slo_s"
        if reason is not None:
            req.state = RequestState.REJECTED
            req.reason = reason
            req.finish_s = now
            return False
        req.state = RequestState.WAITING
        req.num_tokens = p
        if req.slo_class == "rt":
            assert req.tpot_slo_s is not None
            self._tpot_ref = min(self._tpot_ref or math.inf, req.tpot_slo_s)
            self.rt_waiting.append(req)
        else:
            self.be_waiting.append(req)
        return True

    def abort(self, req: EngineRequest, now: float) -> bool:
        if req.done:
            return False
        for queue in (self.rt_waiting, self.suspended, self.running):
            if any(r is req for r in queue):
                queue.remove(req)
                break
        else:
            if req not in self.be_waiting:
                return False
            self.be_waiting.remove(req)
        if self._in_flight is not None and req.state is RequestState.RUNNING:
            self._aborted.add(id(req))
        self._free(req)
        req.state = RequestState.ABORTED
        req.finish_s = now
        return True

    # Queries --------------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        return not (self.running or self.rt_waiting or self.be_waiting or self.suspended)

    @property
    def outstanding(self) -> int:
        return len(self.running) + len(self.rt_waiting) + len(self.be_waiting) + len(self.suspended)

    @property
    def kv_used_fraction(self) -> float:
        if self.bidirectional:
            total = self.bidir.num_blocks * self.block_size
            return self.bidir.used_slots / total if total else 1.0
        return self.gpu.used / self.gpu.total if self.gpu.total else 1.0

    # KV memory ------------------------------------------------------------------------------

    def _resident(self, r: EngineRequest) -> int:
        """Slots of `r`'s KV on the GPU."""
        if self.bidirectional:
            return self.bidir.held(r) if r in self.bidir else 0
        return r.blocks * self.block_size

    def _fits(self, r: EngineRequest, tokens: int, reclaim: bool = False) -> bool:
        if self.bidirectional:
            side = "rt" if r.slo_class == "rt" else "be"
            return self.bidir.fits(r, side, tokens, reclaim)
        return self.gpu.blocks_for(tokens) - r.blocks <= self.gpu.free

    def _grow(self, r: EngineRequest, tokens: int, reclaim: bool = False) -> int:
        """Give `r` KV for `tokens` tokens; the slots checkpointed to CPU memory first."""
        if not self.bidirectional:
            need = self.gpu.blocks_for(tokens) - r.blocks
            if need > 0:
                self.gpu.allocate(need)
                r.blocks += need
            return 0
        side = "rt" if r.slo_class == "rt" else "be"
        growth = self.bidir.grow(r, side, tokens, reclaim)
        copied = 0
        for victim, slots in growth.overwritten.items():
            assert isinstance(victim, EngineRequest)
            key = id(victim)
            if self.cpu_slots_used + slots <= self.cpu_slots_total:
                self._cpu_held[key] = self._cpu_held.get(key, 0) + slots
                self.cpu_slots_used += slots
                copied += slots
            else:  # no room to checkpoint: the victim loses its KV and starts over
                self._drop_kv(victim)
        self.bros.checkpoint_slots += copied
        return copied

    def _drop_kv(self, r: EngineRequest) -> None:
        self._free(r)
        self.suspended.remove(r)
        r.num_computed = 0
        r.state = RequestState.WAITING
        self.be_waiting.appendleft(r)
        self.bros.recomputes += 1

    def _free(self, r: EngineRequest) -> None:
        if self.bidirectional:
            if r in self.bidir:
                self.bidir.release(r)
        else:
            self.gpu.release(r.blocks)
        r.blocks = 0
        self.cpu_slots_used -= self._cpu_held.pop(id(r), 0)

    def _swap_out(self, r: EngineRequest) -> int:
        """Preempt running BE `r` whole: its KV to CPU memory if there is room, else dropped.
        The slots copied."""
        self.running.remove(r)
        r.preemptions += 1
        self.stats.preemptions += 1
        slots = min(r.num_computed, self._resident(r))
        if self.cpu_slots_used + slots <= self.cpu_slots_total:
            if self.bidirectional:
                self.bidir.release(r)
            else:
                self.gpu.release(r.blocks)
                r.blocks = 0
            self._cpu_held[id(r)] = self._cpu_held.get(id(r), 0) + slots
            self.cpu_slots_used += slots
            r.state = RequestState.SWAPPED
            self.suspended.append(r)
            self.bros.checkpoint_slots += slots
            return slots
        self._free(r)
        r.num_computed = 0
        r.state = RequestState.WAITING
        self.be_waiting.appendleft(r)
        self.bros.recomputes += 1
        return 0

    def _suspend_for_rt(self, r: EngineRequest) -> int:
        """Take running BE `r` off the GPU for RT memory; the slots copied now."""
        if not self.bidirectional:
            self.bros.suspensions += 1
            return self._swap_out(r)
        self.running.remove(r)
        r.preemptions += 1
        self.stats.preemptions += 1
        self.bidir.suspend(r)
        r.state = RequestState.SWAPPED
        self.suspended.append(r)
        self.bros.suspensions += 1
        return 0

    def _resume(self, r: EngineRequest, tokens: int) -> int | None:
        """Bring suspended `r` back with room for `tokens`; the slots copied back, or None
        (left suspended) when its KV does not fit with a block to spare for each running RT
        request: without that margin the next RT block would take it off again at once, and
        each round trip copies KV (a lazily suspended request with nothing lost needs none)."""
        on_cpu = self._cpu_held.get(id(r), 0)
        spare = self.block_size * sum(1 for q in self.running if q.slo_class == "rt")
        if self.bidirectional and r in self.bidir:
            # Slots overwritten while suspended are on CPU memory (`_cpu_held`), charged below.
            # Suspending again costs nothing unless slots were lost: no margin needed then.
            lost = self.bidir.resume(r)
            need = max(0, tokens - self.bidir.held(r))
            margin = spare if lost else 0
            if need + margin > self.bidir.free_slots or not self.bidir.fits(r, "be", tokens):
                self.bidir.suspend(r)
                return None
            self.bidir.grow(r, "be", tokens)
        elif self.bidirectional:  # swapped out whole: all of it comes back
            if tokens + spare > self.bidir.free_slots or not self._fits(r, tokens):
                return None
            self._grow(r, tokens)
        else:
            need = self.gpu.blocks_for(tokens) - r.blocks
            if need * self.block_size + spare > self.gpu.free * self.block_size:
                return None
            self._grow(r, tokens)
        self._cpu_held.pop(id(r), None)
        self.cpu_slots_used -= on_cpu
        self.bros.restore_slots += on_cpu
        return on_cpu

    # Planning -------------------------------------------------------------------------------

    def plan(self, now: float) -> Step | None:
        if self._in_flight is not None:
            raise RuntimeError("BrosEngine.plan: the previous step has not completed")
        if self.idle:
            return None
        step = self._plan_iteration(now)
        self._in_flight = step
        return step

    def _slack(self, r: EngineRequest, now: float) -> float:
        return next_deadline(r, self.options.slo_margin) - now

    def _plan_iteration(self, now: float) -> Step:
        cfg, opts = self.config, self.options
        batch = _Batch(self.cost)
        budget = cfg.max_num_batched_tokens
        copied = 0
        scheduled: set[int] = set()
        preempted: set[int] = set()
        rts = [r for r in self.running if r.slo_class == "rt"] + self.rt_waiting
        slack = {id(r): self._slack(r, now) for r in rts}
        rts.sort(key=lambda r: slack[id(r)])
        if rts and slack[id(rts[0])] < 0:
            self.cap.observe(missed=True)
        horizon = opts.urgent_iterations * max(self._last_iteration_s, 1e-3)
        limit = math.inf
        if rts and self._tpot_ref is not None:
            limit = self.cap.value * self._tpot_ref
        capped = False

        def room(r: EngineRequest, n: int) -> int:
            """The largest chunk of `r` up to `n` tokens that keeps the batch under `limit`
            (step time grows with the chunk, so a bisection finds it)."""
            if batch.time_with(r, n) <= limit:
                return n
            if n == 1 or r.num_computed + 1 == r.num_tokens:  # a decode: all or nothing
                return 0
            lo, hi = 0, n  # time_with(lo) fits (0: nothing), time_with(hi) does not
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if batch.time_with(r, mid) <= limit:
                    lo = mid
                else:
                    hi = mid
            return lo

        def take(r: EngineRequest, n: int) -> None:
            nonlocal budget, limit
            batch.add(r, n)
            budget -= n
            scheduled.add(id(r))
            if r.slo_class == "rt" and r.first_token_s is not None:
                # Later work must not make this iteration outlast its next deadline.
                limit = min(limit, max(slack[id(r)], 0.0) or limit)

        # 1. Urgent RT.
        # A first token is what a user waits for: RT prefills never wait for BE work.
        # Only running decodes may wait: one recomputed after preemption is a prefill again.
        def relaxes(r: EngineRequest) -> bool:
            return slack[id(r)] > horizon and r.state is RequestState.RUNNING

        urgent = [r for r in rts if not relaxes(r)]
        relaxed = [r for r in rts if relaxes(r)]
        for r in urgent:
            if budget <= 0 or len(batch.chunks) >= cfg.max_num_seqs:
                break
            n = min(r.num_tokens - r.num_computed, budget)
            if slack[id(r)] > horizon:  # a prefill with time to spare is chunked under the cap
                n = room(r, n) or min(n, self.block_size)
            copied += self._schedule_rt(r, n, now, take, scheduled)
        # 2. Running BE.
        for r in list(self.running):
            if r.state is not RequestState.RUNNING:  # preempted for another in this loop
                continue
            if r.slo_class != "be" or budget <= 0 or len(batch.chunks) >= cfg.max_num_seqs:
                continue
            n = room(r, min(r.num_tokens - r.num_computed, budget))
            if n == 0:
                capped = True
                continue
            total = r.num_computed + n
            while not self._fits(r, total):
                # KV of suspended requests goes first: they are not running anyway.
                resident = self._newest_resident(exclude=r)
                if resident is not None:
                    copied += self._checkpoint_whole(resident)
                    continue
                victim = self._be_victim(scheduled, exclude=r)
                if victim is None:
                    break
                copied += self._swap_out(victim)
                preempted.add(id(victim))
            if self._fits(r, total):
                self._grow(r, total)
                take(r, n)
            else:  # the latest BE request left: it gives way itself
                copied += self._swap_out(r)
                preempted.add(id(r))
        # 3. Relaxed RT decodes, where budget and sequences are left: one token each costs
        # the iteration little, and a request ahead of its pace leaves later iterations room.
        for r in relaxed:
            if budget <= 0 or len(batch.chunks) >= cfg.max_num_seqs:
                break
            n = min(r.num_tokens - r.num_computed, budget)
            copied += self._schedule_rt(r, n, now, take, scheduled, steal=False)
        # 4. Suspended BE back, then waiting BE.
        for r in sorted(self.suspended, key=lambda q: (q.arrival_s, q.seq)):
            if r.state is not RequestState.SWAPPED:  # dropped to make room for an older one
                continue
            if id(r) in preempted:  # taken off in this iteration: not back in the same one
                continue
            if budget <= 0 or len(self.running) >= cfg.max_num_seqs:
                break
            n = room(r, min(r.num_tokens - r.num_computed, budget))
            if n == 0:
                capped = True
                break
            back = self._resume(r, r.num_computed + n)
            while back is None:
                # Suspended requests' KV left on the GPU blocks the oldest from coming back:
                # the newest one's goes to CPU memory now (the eager checkpoint, late).
                newest = self._newest_resident(exclude=r)
                if newest is None:
                    break
                copied += self._checkpoint_whole(newest)
                back = self._resume(r, r.num_computed + n)
            if back is None:
                break
            copied += back
            self.suspended.remove(r)
            r.state = RequestState.RUNNING
            self.running.append(r)
            take(r, n)
        while self.be_waiting and not self.suspended:
            if budget <= 0 or len(self.running) >= cfg.max_num_seqs:
                break
            r = self.be_waiting[0]
            n = room(r, min(r.num_tokens - r.num_computed, budget))
            if n == 0:
                capped = True
                break
            if not self._fits(r, n):
                break
            self.be_waiting.popleft()
            self._grow(r, n)
            r.state = RequestState.RUNNING
            if r.first_scheduled_s is None:
                r.first_scheduled_s = now
            self.running.append(r)
            take(r, n)
        self.bros.capped_iterations += capped
        if not batch.chunks and copied == 0 and relaxed:
            # Relaxed decodes alone, none with memory to grow: the least slack takes some.
            r = relaxed[0]
            copied += self._schedule_rt(r, 1, now, take, scheduled)
        if not batch.chunks and copied == 0:
            raise RuntimeError(
                "BrosEngine: work is queued but nothing can be scheduled "
                f"({len(self.running)} running, {len(self.rt_waiting)} RT waiting, "
                f"{len(self.be_waiting)} BE waiting, {len(self.suspended)} suspended)"
            )
        duration = batch.time() + copied * self._copy_s_per_slot
        self.stats.swapped_blocks += -(-copied // self.block_size)
        self._last_iteration_s = duration
        return Step(start_s=now, end_s=now + duration, chunks=batch.chunks, first_s=duration)

    def _be_victim(self, scheduled: set[int], exclude: EngineRequest) -> EngineRequest | None:
        """The running BE request to preempt: the latest arrival not in this batch."""
        best = None
        for r in self.running:
            if r.slo_class != "be" or r is exclude or id(r) in scheduled:
                continue
            if best is None or (r.arrival_s, r.seq) > (best.arrival_s, best.seq):
                best = r
        return best

    def _newest_resident(self, exclude: EngineRequest) -> EngineRequest | None:
        """The latest-arrived suspended request with KV still on the GPU (bidirectional)."""
        best = None
        for r in self.suspended:
            if r is exclude or not (self.bidirectional and r in self.bidir):
                continue
            if best is None or (r.arrival_s, r.seq) > (best.arrival_s, best.seq):
                best = r
        return best

    def _checkpoint_whole(self, r: EngineRequest) -> int:
        """Copy suspended `r`'s resident KV to CPU memory and free its GPU slots (or drop it
        all when CPU memory is full); the slots copied."""
        resident = min(self.bidir.held(r), r.num_computed)
        if self.cpu_slots_used + resident > self.cpu_slots_total:
            self._drop_kv(r)
            return 0
        self.bidir.release(r)
        self._cpu_held[id(r)] = self._cpu_held.get(id(r), 0) + resident
        self.cpu_slots_used += resident
        self.bros.checkpoint_slots += resident
        return resident

    def _rt_victim(
        self, scheduled: set[int], exclude: EngineRequest, now: float
    ) -> EngineRequest | None:
        """The running RT request to recompute when memory is short: the most slack."""
        best, most = None, -math.inf
        for r in self.running:
            if r.slo_class == "rt" and r is not exclude and id(r) not in scheduled:
                s = self._slack(r, now)
                if s > most:
                    best, most = r, s
        return best

    def _recompute_rt(self, r: EngineRequest) -> None:
        self.running.remove(r)
        self._free(r)
        r.num_computed = 0
        r.preemptions += 1
        self.stats.preemptions += 1
        r.state = RequestState.WAITING
        self.rt_waiting.append(r)

    def _schedule_rt(
        self,
        r: EngineRequest,
        n: int,
        now: float,
        take: Callable[[EngineRequest, int], None],
        scheduled: set[int],
        steal: bool = True,
    ) -> int:
        """Schedule `n` tokens of RT `r`, taking KV memory from BE requests if `steal`; the
        slots copied to make room."""
        total = r.num_computed + n
        copied = 0
        reclaim = self.bidirectional  # suspended BE slots are RT's to overwrite
        while not self._fits(r, total, reclaim):
            if not steal:
                return copied
            # KV of requests suspended already, out of this request's reach (beside other RT
            # requests), is freed before another running request is stopped.
            resident = self._newest_resident(exclude=r)
            if resident is not None:
                copied += self._checkpoint_whole(resident)
                continue
            victim = self._be_victim(scheduled, exclude=r)
            if victim is not None:
                copied += self._suspend_for_rt(victim)
                continue
            # No BE memory left to take: the RT request with the most slack starts over.
            rt_victim = self._rt_victim(scheduled, exclude=r, now=now)
            if rt_victim is None:
                return copied
            self._recompute_rt(rt_victim)
        copied += self._grow(r, total, reclaim)
        if r.state is RequestState.WAITING:
            self.rt_waiting.remove(r)
            r.state = RequestState.RUNNING
            if r.first_scheduled_s is None:
                r.first_scheduled_s = now
            self.running.append(r)
        take(r, n)
        return copied

    # Completion -----------------------------------------------------------------------------

    def complete(self, step: Step) -> StepResult:
        if step is not self._in_flight:
            raise RuntimeError("BrosEngine.complete: not the step in flight")
        self._in_flight = None
        end = step.end_s
        stats = self.stats
        stats.busy_s += end - step.start_s
        stats.iterations += 1
        finished: list[EngineRequest] = []
        first_tokens: list[EngineRequest] = []
        tokens = 0
        missed = False
        chunks = step.chunks
        if self._aborted:
            chunks = [ch for ch in chunks if id(ch[0]) not in self._aborted]
            self._aborted.clear()
        for r, n, _ in chunks:
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
        for r in finished:
            self._free(r)
            r.state = RequestState.FINISHED
            r.finish_s = end
        if finished:
            done = set(map(id, finished))
            self.running = [r for r in self.running if id(r) not in done]
        used = self.bidir.used_slots // self.block_size if self.bidirectional else self.gpu.used
        stats.peak_blocks = max(stats.peak_blocks, used)
        return StepResult(finished, first_tokens, tokens)

    # Invariants -----------------------------------------------------------------------------

    def check_invariants(self) -> None:
        """Raise AssertionError if the bookkeeping is inconsistent (call between steps)."""
        assert 0 <= self.cpu_slots_used <= self.cpu_slots_total, "CPU memory out of range"
        assert self.cpu_slots_used == sum(self._cpu_held.values()), "CPU slots leaked"
        for r in self.running:
            assert r.state is RequestState.RUNNING
            assert self._resident(r) >= r.num_computed, f"{r.id}: KV missing"
        for r in self.rt_waiting:
            assert r.state is RequestState.WAITING
            assert r.slo_class == "rt"
        for r in self.be_waiting:
            assert r.state is RequestState.WAITING
            assert r.slo_class == "be"
            assert r.num_computed == 0
        for r in self.suspended:
            assert r.state is RequestState.SWAPPED
            assert r.slo_class == "be"
        if self.bidirectional:
            self.bidir.check_invariants()
        else:
            assert self.gpu.used == sum(r.blocks for r in self.running), "GPU blocks leaked"


POLICY_NAMES: tuple[str, ...] = ("vllm", "vllm-priority", "bros", "bros-nobidir")


def make_engine(
    policy: str,
    cost: StepCostModel,
    config: EngineConfig | None = None,
    options: BrosOptions | None = None,
) -> Engine | BrosEngine:
    """The engine that serves both classes under `policy`: `vllm` (first come first served
    over both), `vllm-priority` (vLLM's priority scheduling; requests carry
    `policies.bros.class_priority`), `bros`, `bros-nobidir`."""
    if policy in ("vllm", "vllm-priority"):
        return Engine(cost, config)
    if policy in ("bros", "bros-nobidir"):
        return BrosEngine(cost, config, options, bidirectional=policy == "bros")
    raise ValueError(f"unknown BROS policy {policy!r}; known: {', '.join(POLICY_NAMES)}")
