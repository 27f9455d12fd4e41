"""Binds one `ToolPool` to the event loop: one timer at the pool's next wake-up.

With a ranking policy, a pool that can queue (limited instances, order "policy") grants its
waiting calls by their applications' ranks, as the LLM queue does: each call is ranked by the
policy when submitted, and re-ranked in every ranking round while it waits.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

from hermes.cluster.tool_pool import CallFinished, CallStarted, ToolPool
from hermes.policies.base import AppView, CallInfo, Policy
from hermes.sim.kernel import Event, EventLoop

# (call id, finish time, the call's cold-start wait, the instance that served it)
Finished = Callable[[Hashable, float, float, int], None]


class ToolRunner:
    def __init__(
        self, loop: EventLoop, pool: ToolPool, on_finish: Finished, policy: Policy | None = None
    ) -> None:
        self.loop = loop
        self.pool = pool
        self._on_finish = on_finish
        self._timer: Event | None = None
        self._cold_wait: dict[Hashable, float] = {}  # calls started and not finished
        self.cold_wait_s = 0.0
        # Seconds each started call waited for a slot (not for warm-up): who pays the queue.
        self.queue_waits: dict[Hashable, float] = {}
        # Ranked only where a queue can form and its order is the policy's.
        self._policy = policy if pool.spec.ranked else None
        self._waiting: dict[Hashable, tuple[CallInfo, AppView | None]] = {}  # ranked, queued

    def order_by(self, policy: Policy) -> None:
        """Grant this pool's waiting calls by `policy`'s ranks instead of the LLM queue's (a
        study's bound, e.g. a clairvoyant order); only where the pool orders by rank, and
        before any call is submitted."""
        if self._waiting or self.pool.calls_started:
            raise ValueError(f"pool {self.pool.spec.name!r}: order_by before any call")
        if self.pool.spec.ranked:
            self._policy = policy

    def submit(
        self, call_id: Hashable, duration_s: float, now: float, app: AppView | None = None
    ) -> None:
        """A call of `app` (whose view the policy ranks, when the pool orders by it)."""
        priority = tiebreak = 0.0
        if self._policy is not None:
            info = CallInfo(call_id, now, 0)
            priority = self._policy.priority(info, app, now)
            self._waiting[call_id] = (info, app)
            # Equal ranks (e.g. every agent waiting in the same loop state) go to the earlier
            # application: finishing applications one after another beats interleaving them.
            tiebreak = now if app is None else app.arrival_s
        self._handle(self.pool.submit(call_id, duration_s, now, priority, tiebreak))

    def rerank(self, now: float) -> None:
        """A ranking round: the waiting calls' applications ranked anew."""
        if self._policy is None or not self._waiting:
            return
        policy = self._policy
        # One batched round over the applications waiting (as for LLM calls); per call for
        # policies that rank an application's calls apart (rank_apps gives None).
        views = {id(v): v for _, v in self._waiting.values() if v is not None}
        ranks = policy.rank_apps(list(views.values()), now) if views else None
        by_view = {} if ranks is None else dict(zip(views, ranks, strict=True))
        fresh = {}
        for cid, (info, view) in self._waiting.items():
            rank = None if view is None else by_view.get(id(view))
            fresh[cid] = policy.priority(info, view, now) if rank is None else rank
        self.pool.reprioritize(fresh)

    def prewarm(self, now: float, instances: int = 1, hold_s: float | None = None) -> int:
        started = self.pool.prewarm(now, instances, hold_s)
        self._handle([])
        return started

    def retain(self, instance: int, until: float, now: float) -> bool:
        kept = self.pool.retain(instance, until, now)
        self._handle([])
        return kept

    def _wake(self, now: float) -> None:
        self._timer = None
        self._handle(self.pool.advance(now))

    def _handle(self, effects: list[CallStarted | CallFinished]) -> None:
        for effect in effects:
            if isinstance(effect, CallStarted):
                self.cold_wait_s += effect.cold_wait_s
                self._cold_wait[effect.call_id] = effect.cold_wait_s
                self.queue_waits[effect.call_id] = effect.waited_s - effect.cold_wait_s
                self._waiting.pop(effect.call_id, None)
            else:
                cold = self._cold_wait.pop(effect.call_id, 0.0)
                self._on_finish(effect.call_id, effect.at, cold, effect.instance)
        wake = self.pool.next_wake()
        if self._timer is not None and (wake is None or self._timer.time != wake):
            self._timer.cancel()
            self._timer = None
        if wake is not None and self._timer is None:
            self._timer = self.loop.at(max(wake, self.loop.now), self._wake)
