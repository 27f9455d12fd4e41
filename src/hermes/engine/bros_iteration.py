"""One BROS iteration being chosen: the four phases of `bros_engine.BrosEngine` (urgent RT,
running BE, relaxed RT, suspended then waiting BE) over a shared batch, token budget and
time limit. Built and run once per `plan`; the engine keeps everything that outlives it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from hermes.engine.request import EngineRequest, RequestState
from hermes.engine.step import BatchCost

if TYPE_CHECKING:
    from hermes.engine.bros_engine import BrosEngine


class Iteration:
    def __init__(self, engine: BrosEngine, now: float) -> None:
        self.e = engine
        self.now = now
        self.batch = BatchCost(engine.cost)
        self.budget = engine.config.max_num_batched_tokens
        self.copied = 0
        self.scheduled: set[int] = set()
        self.preempted: set[int] = set()
        self.capped = False
        rts = [r for r in engine.running if r.slo_class == "rt"] + engine.queue.rt
        self.slack = {id(r): engine.slack(r, now) for r in rts}
        rts.sort(key=lambda r: self.slack[id(r)])
        if rts and self.slack[id(rts[0])] < 0:
            engine.cap.observe(missed=True)
        self.rts = rts
        self.horizon = engine.options.urgent_iterations * max(engine._last_iteration_s, 1e-3)
        self.limit = math.inf
        if rts and engine._tpot_ref is not None:
            self.limit = engine.cap.value * engine._tpot_ref

    # The batch ------------------------------------------------------------------------------

    def full(self, seqs: int) -> bool:
        return self.budget <= 0 or seqs >= self.e.config.max_num_seqs

    def room(self, r: EngineRequest, n: int) -> int:
        """The largest chunk of `r` up to `n` tokens that keeps the batch under the limit
        (step time grows with the chunk, so a bisection finds it)."""
        batch = self.batch
        if batch.time_with(r, n) <= self.limit:
            return n
        if n == 1 or r.num_computed + 1 == r.num_tokens:  # a decode: all or nothing
            return 0
        lo, hi = 0, n  # time_with(lo) fits (0: nothing), time_with(hi) does not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if batch.time_with(r, mid) <= self.limit:
                lo = mid
            else:
                hi = mid
        return lo

    def take(self, r: EngineRequest, n: int) -> None:
        self.batch.add(r, n)
        self.budget -= n
        self.scheduled.add(id(r))
        if r.slo_class == "rt" and r.first_token_s is not None:
            # Later work must not make this iteration outlast its next deadline.
            self.limit = min(self.limit, max(self.slack[id(r)], 0.0) or self.limit)

    # The phases -----------------------------------------------------------------------------

    def run(self) -> None:
        # A first token is what a user waits for: RT prefills never wait for BE work. Only
        # running decodes may wait: one recomputed after preemption is a prefill again.
        # A prompt part-way through its prefill stays in the first phase, chunked to the room
        # left: run after BE work it would take the whole token budget and stretch the
        # iteration past the deadlines of every RT decode in it.
        def relaxes(r: EngineRequest) -> bool:
            return (
                self.slack[id(r)] > self.horizon
                and r.state is RequestState.RUNNING
                and r.num_computed + 1 >= r.num_tokens
            )

        urgent = [r for r in self.rts if not relaxes(r)]
        relaxed = [r for r in self.rts if relaxes(r)]
        self.urgent_rt(urgent)
        self.running_be()
        # Relaxed RT decodes, where budget and sequences are left: one token each costs the
        # iteration little, and a request ahead of its pace leaves later iterations room.
        for r in relaxed:
            if self.full(len(self.batch.chunks)):
                break
            n = min(r.num_tokens - r.num_computed, self.budget)
            self.copied += self.schedule_rt(r, n, steal=False)
        self.resume_suspended()
        self.admit_waiting_be()
        self.e.bros.capped_iterations += self.capped
        if not self.batch.chunks and self.copied == 0 and relaxed:
            # Relaxed decodes alone, none with memory to grow: the least slack takes some.
            self.copied += self.schedule_rt(relaxed[0], 1)

    def urgent_rt(self, urgent: list[EngineRequest]) -> None:
        for r in urgent:
            if self.full(len(self.batch.chunks)):
                break
            n = min(r.num_tokens - r.num_computed, self.budget)
            if self.slack[id(r)] > self.horizon:  # a prefill with time to spare: chunked
                n = self.room(r, n) or min(n, self.e.block_size)
            self.copied += self.schedule_rt(r, n)

    def running_be(self) -> None:
        e = self.e
        for r in list(e.running):
            if r.state is not RequestState.RUNNING:  # preempted for another in this loop
                continue
            if r.slo_class != "be" or self.full(len(self.batch.chunks)):
                continue
            n = self.room(r, min(r.num_tokens - r.num_computed, self.budget))
            if n == 0:
                self.capped = True
                continue
            total = r.num_computed + n
            while not e.kv.fits(r, total):
                # KV of suspended requests goes first: they are not running anyway.
                resident = e.newest_resident(exclude=r)
                if resident is not None:
                    self.copied += e.checkpoint_whole(resident)
                    continue
                victim = e.be_victim(self.scheduled, exclude=r)
                if victim is None:
                    break
                self.copied += e.swap_out(victim)
                self.preempted.add(id(victim))
            if e.kv.fits(r, total):
                e.grow(r, total)
                self.take(r, n)
            else:  # the latest BE request left: it gives way itself
                self.copied += e.swap_out(r)
                self.preempted.add(id(r))

    def resume_suspended(self) -> None:
        e = self.e
        for r in sorted(e.suspended, key=lambda q: (q.arrival_s, q.seq)):
            if r.state is not RequestState.SWAPPED:  # dropped to make room for an older one
                continue
            if id(r) in self.preempted:  # taken off in this iteration: not back in the same one
                continue
            if self.full(len(e.running)):
                break
            n = self.room(r, min(r.num_tokens - r.num_computed, self.budget))
            if n == 0:
                self.capped = True
                break
            back = e.resume(r, r.num_computed + n)
            while back is None:
                # Suspended requests' KV left on the GPU blocks the oldest from coming back:
                # the newest one's goes to CPU memory now (the eager checkpoint, late).
                newest = e.newest_resident(exclude=r)
                if newest is None:
                    break
                self.copied += e.checkpoint_whole(newest)
                back = e.resume(r, r.num_computed + n)
            if back is None:
                break
            self.copied += back
            e.suspended.remove(r)
            r.state = RequestState.RUNNING
            e.running.append(r)
            self.take(r, n)

    def admit_waiting_be(self) -> None:
        e = self.e
        waiting = e.queue.be
        while waiting and not e.suspended:
            if self.full(len(e.running)):
                break
            r = waiting.head()
            n = self.room(r, min(r.num_tokens - r.num_computed, self.budget))
            if n == 0:
                self.capped = True
                break
            if not e.kv.fits(r, n):
                break
            waiting.pop()
            e.grow(r, n)
            r.state = RequestState.RUNNING
            if r.first_scheduled_s is None:
                r.first_scheduled_s = self.now
            e.running.append(r)
            self.take(r, n)

    def schedule_rt(self, r: EngineRequest, n: int, steal: bool = True) -> int:
        """Schedule `n` tokens of RT `r`, taking KV memory from BE requests if `steal`; the
        slots copied to make room."""
        e = self.e
        total = r.num_computed + n
        copied = 0
        reclaim = e.kv.lazy_suspend  # suspended BE slots are RT's to overwrite
        while not e.kv.fits(r, total, reclaim):
            if not steal:
                return copied
            # KV of requests suspended already, out of this request's reach (beside other RT
            # requests), is freed before another running request is stopped.
            resident = e.newest_resident(exclude=r)
            if resident is not None:
                copied += e.checkpoint_whole(resident)
                continue
            victim = e.be_victim(self.scheduled, exclude=r)
            if victim is not None:
                copied += e.suspend_for_rt(victim)
                continue
            # No BE memory left to take: the RT request with the most slack starts over.
            rt_victim = e.rt_victim(self.scheduled, exclude=r, now=self.now)
            if rt_victim is None:
                return copied
            e.recompute_rt(rt_victim)
        copied += e.grow(r, total, reclaim)
        if r.state is RequestState.WAITING:
            e.queue.rt.remove(r)
            r.state = RequestState.RUNNING
            if r.first_scheduled_s is None:
                r.first_scheduled_s = self.now
            e.running.append(r)
        self.take(r, n)
        return copied
