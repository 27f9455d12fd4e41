"""Pools of tool backend instances: docker sandboxes, search APIs, DNN models, environments.

One ``ToolPool`` per backend type. An instance is warming (started, ready ``cold_start_s``
later), busy, or idle; an idle instance is removed ``keepalive_s`` after its last call ended
unless a call arrives first (a call arriving exactly then finds it gone). A call takes a free
slot on a warm instance, else a spare slot on a warming one, else a new instance; with
``max_instances`` reached it queues until a slot frees. Waiting calls are granted in order of
the priority they were submitted with (lower first, as the LLM queue ranks them: ``order
"policy"``; ``reprioritize`` re-ranks them), or first come first served (``order "fifo"``);
equals go in submission order. An instance ``prewarm`` started
with a ``hold_s`` is held for that long after it is ready instead, until its first call; and
``retain`` keeps an idle instance longer than its TTL.

The pool is pure: time is an argument to every method and effects are returned, not performed.
Each mutating call first catches up on everything due at or before its ``now``. A shell that
calls ``advance(t)`` at ``t = next_wake()`` after every call sees each effect exactly once, in
non-decreasing time order. ``advance(t)`` hands over the calls that finish at ``t`` before it
removes the instances that expire at ``t`` (with no keep-alive, the ones those calls just
left), so that the shell can ``retain`` them; the next call at ``t`` removes the rest.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Literal

ToolOrder = Literal["fifo", "policy"]


@dataclass(frozen=True, slots=True)
class ToolBackendSpec:
    """A backend type and how its instances behave."""

    name: str  # e.g. "docker", "search", "vit"
    cold_start_s: float = 0.0  # 0: always warm, e.g. a search API
    keepalive_s: float = 60.0  # idle seconds before removal; math.inf: never removed
    concurrency: int = 1  # calls one instance serves at once
    max_instances: int | None = None  # None: unlimited; otherwise calls beyond capacity queue
    order: ToolOrder = "policy"  # how queued calls are granted: by priority, or FIFO

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError(f"name must not be empty, got {self.name!r}")
        if not 0 <= self.cold_start_s < math.inf:
            raise ValueError(f"cold_start_s must be finite and >= 0, got {self.cold_start_s!r}")
        if not self.keepalive_s >= 0:
            raise ValueError(f"keepalive_s must be >= 0, got {self.keepalive_s!r}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency!r}")
        if self.max_instances is not None and self.max_instances < 1:
            raise ValueError(f"max_instances must be None or >= 1, got {self.max_instances!r}")
        if self.order not in ("fifo", "policy"):
            raise ValueError(f"order must be 'fifo' or 'policy', got {self.order!r}")

    @property
    def ranked(self) -> bool:
        """Whether calls can queue here in priority order (else priorities change nothing)."""
        return self.order == "policy" and self.max_instances is not None


@dataclass(frozen=True, slots=True)
class CallStarted:
    call_id: Hashable
    at: float
    waited_s: float  # since submission: queueing plus warm-up
    cold_wait_s: float  # the part of waited_s spent waiting for an instance to warm up
    instance: int


@dataclass(frozen=True, slots=True)
class CallFinished:
    call_id: Hashable
    at: float
    instance: int


Effect = CallStarted | CallFinished


@dataclass(frozen=True, slots=True)
class _Call:
    id: Hashable
    duration_s: float
    submitted_at: float


@dataclass(slots=True)
class _Instance:
    id: int
    ready: bool
    running: int = 0
    waiting: list[tuple[_Call, float]] = field(default_factory=list)  # (call, placed at)
    expires_at: float | None = None  # set while idle
    # Until its first call, a prewarmed instance is kept to this time rather than keepalive_s.
    hold_until: float | None = None
    prewarmed: bool = False  # launched by prewarm and no call has started on it yet


# Order of events at one instant: calls end (freeing slots), instances become ready, idle ones
# expire; then the sequence number keeps it deterministic.
_FINISH, _READY, _EXPIRE = 0, 1, 2
_Event = tuple[float, int, int, int, _Call | None]  # (time, kind, seq, instance id, call)


class ToolPool:
    """The instances of one tool backend type, and the calls on them."""

    def __init__(self, spec: ToolBackendSpec) -> None:
        self.spec = spec
        self.cold_starts = 0  # instances launched that had to warm up (prewarmed ones included)
        self.calls_started = 0
        self.calls_finished = 0
        self.prewarms = 0  # instances launched by prewarm
        self.prewarms_used = 0  # of those, the ones at least one call started on
        self._now = -math.inf
        self._instances: dict[int, _Instance] = {}  # in id order, which breaks placement ties
        self._next_id = 0
        self._busy = 0  # ready instances running at least one call
        # Waiting calls: a heap of (priority, tie-break, submission number, call); FIFO:
        # priority and tie-break 0, so submission order decides.
        self._queue: list[tuple[float, float, int, _Call]] = []
        self._submitted = 0
        self.queue_wait_s = 0.0  # summed over started calls: waiting for a slot, not warm-up
        self._live: set[Hashable] = set()  # ids of calls submitted and not finished
        self._events: list[_Event] = []
        self._seq = 0
        self._outbox: list[Effect] = []  # effects known but not yet handed over
        self._warm_s = 0.0
        self._busy_s = 0.0

    # --- driving -----------------------------------------------------------------------------

    def submit(
        self,
        call_id: Hashable,
        duration_s: float,
        now: float,
        priority: float = 0.0,
        tiebreak: float = 0.0,
    ) -> list[Effect]:
        """Submit a call of ``duration_s`` warm seconds; if it must queue, it waits behind the
        calls of lower ``priority``, and among equal priorities behind those of lower
        ``tiebreak`` (order "policy"). Returns the effects due up to ``now``, ending with this
        call's ``CallStarted`` if it starts right away."""
        if not 0 <= duration_s < math.inf:
            raise ValueError(f"duration_s must be finite and >= 0, got {duration_s!r}")
        if math.isnan(priority) or math.isnan(tiebreak):
            raise ValueError(
                f"priority and tiebreak must not be NaN, got {priority!r}, {tiebreak!r}"
            )
        self._run_until(now)
        if call_id in self._live:
            raise ValueError(f"call {call_id!r} is already in the pool")
        self._live.add(call_id)
        call = _Call(call_id, duration_s, now)
        # A queue means no slot: every call needs the same one, so the head could not start.
        if self._queue or not self._place(call, now):
            ranked = self.spec.order == "policy"
            key, tie = (priority, tiebreak) if ranked else (0.0, 0.0)
            heapq.heappush(self._queue, (key, tie, self._submitted, call))
        self._submitted += 1
        return self._take()

    def reprioritize(self, priorities: Mapping[Hashable, float]) -> None:
        """New priorities for queued calls (a ranking round); calls not named keep theirs,
        names not queued are ignored. No effect with order "fifo"."""
        if self.spec.order != "policy" or not self._queue:
            return
        fresh = []
        for key, tie, seq, call in self._queue:
            p = priorities.get(call.id, key)
            if math.isnan(p):
                raise ValueError(f"priority of {call.id!r} must not be NaN")
            fresh.append((p, tie, seq, call))
        heapq.heapify(fresh)
        self._queue = fresh

    def prewarm(self, now: float, instances: int = 1, hold_s: float | None = None) -> int:
        """Start warming instances until ``instances`` are idle or warming with a spare slot,
        within ``max_instances``. Returns how many it started.

        With ``hold_s``, the instances it starts are removed ``hold_s`` after they are ready if
        no call has come by then (not ``keepalive_s`` later), and the spare ones it counts on
        are kept at least as long as a new one would be."""
        if instances < 0:
            raise ValueError(f"instances must be >= 0, got {instances!r}")
        if hold_s is not None and not 0 <= hold_s < math.inf:
            raise ValueError(f"hold_s must be finite and >= 0, got {hold_s!r}")
        self._run_until(now)
        if self.spec.cold_start_s == 0:
            return 0  # no warm-up to hide: an early instance would only cost
        c = self.spec.concurrency
        spare = [
            i
            for i in self._instances.values()
            if (i.running == 0 if i.ready else len(i.waiting) < c)
        ]
        until = None if hold_s is None else now + self.spec.cold_start_s + hold_s
        if until is not None:
            # Count on those that would stay longest anyway: the smallest extension.
            spare.sort(key=lambda i: math.inf if i.expires_at is None else i.expires_at)
            for inst in spare[len(spare) - min(instances, len(spare)) :]:
                self._hold(inst, until)
        started = 0
        while started < instances - len(spare) and self._room():
            inst = self._launch(now)
            inst.prewarmed = True
            inst.hold_until = until
            started += 1
        self.prewarms += started
        return started

    def advance(self, now: float) -> list[Effect]:
        """Process everything due at or before ``now``; its effects in time order. Expiries due
        at ``now`` wait for the next call if calls finish at ``now`` (see ``retain``)."""
        self._run_until(now, expire_now=False)
        if not any(isinstance(e, CallFinished) and e.at == now for e in self._outbox):
            self._run_until(now)
        return self._take()

    def retain(self, instance_id: int, until: float, now: float) -> bool:
        """Keep instance ``instance_id``, if idle, at least until ``until``: it expires then
        unless a call comes first, or later if its TTL or a prewarm hold says so. Never
        shortens. A busy, warming or removed instance is left alone (False): only an idle
        one has an expiry to move, and a busy one's TTL starts when it falls idle again.

        Called at ``now`` = the end of the instance's call, as the shell learns of it from
        ``advance``, it acts before the instance's own expiry at ``now`` (TTL 0)."""
        if math.isnan(until):
            raise ValueError(f"until must not be NaN, got {until!r}")
        self._run_until(now, expire_now=False)
        inst = self._instances.get(instance_id)
        if inst is None or inst.expires_at is None:
            return False
        if until > inst.expires_at:
            inst.expires_at = until
            if until < math.inf:
                self._push(until, _EXPIRE, inst.id, None)
        return True

    def next_wake(self) -> float | None:
        """When the pool next needs ``advance``: the earliest pending event, or the pool's time
        if a ``prewarm`` caught up on effects not handed over yet. None if nothing is pending."""
        if self._outbox:
            return self._now
        self._prune()
        return self._events[0][0] if self._events else None

    # --- statistics (as of ``now``, which must not pass an event not yet processed) -----------

    @property
    def queued(self) -> int:
        return len(self._queue)

    def queued_ids(self) -> list[Hashable]:
        """The calls waiting for a slot, in the order they would be granted."""
        return [call.id for *_, call in sorted(self._queue, key=lambda e: e[:3])]

    def warm_instance_seconds(self, now: float) -> float:
        """Seconds summed over instances while they existed, warming or warm: the cost."""
        return self._areas(now)[0]

    def busy_instance_seconds(self, now: float) -> float:
        """Seconds summed over instances while they ran at least one call."""
        return self._areas(now)[1]

    @property
    def prewarms_unused(self) -> int:
        """Instances launched by prewarm that no call has started on (so far)."""
        return self.prewarms - self.prewarms_used

    def instances(self, now: float) -> dict[str, int]:
        self._check_query(now)
        counts = {"warming": 0, "busy": 0, "idle": 0}
        for i in self._instances.values():
            counts["busy" if i.running else "idle" if i.ready else "warming"] += 1
        return counts

    # --- internals ---------------------------------------------------------------------------

    def _run_until(self, now: float, *, expire_now: bool = True) -> None:
        """Process the events due at or before ``now``; expiries due at ``now`` only with
        ``expire_now`` (at one instant they come after every finish and ready)."""
        if not self._now <= now < math.inf:
            raise ValueError(f"now must be finite and not before {self._now!r}, got {now!r}")
        events = self._events
        while events and events[0][0] <= now:
            if not expire_now and events[0][0] == now and events[0][1] == _EXPIRE:
                break
            event = heapq.heappop(events)
            if self._stale(event):
                continue
            t, kind, _, inst_id, call = event
            self._tick(t)
            if kind == _EXPIRE:
                del self._instances[inst_id]
            elif call is None:
                self._on_ready(self._instances[inst_id], t)
            else:
                self._on_finish(self._instances[inst_id], call, t)
        self._tick(now)

    def _tick(self, t: float) -> None:
        """Move the clock to ``t``, integrating the instance counts held since."""
        if self._instances:  # none before the first call, while the clock is still -inf
            dt = t - self._now
            self._warm_s += len(self._instances) * dt
            self._busy_s += self._busy * dt
        self._now = t

    def _on_finish(self, inst: _Instance, call: _Call, t: float) -> None:
        inst.running -= 1
        if inst.running == 0:
            self._busy -= 1
        self._live.remove(call.id)
        self.calls_finished += 1
        self._outbox.append(CallFinished(call.id, t, inst.id))
        while self._queue and self._place(self._queue[0][3], t):
            heapq.heappop(self._queue)
        if inst.running == 0:
            self._idle(inst, t)

    def _on_ready(self, inst: _Instance, t: float) -> None:
        inst.ready = True
        for call, placed_at in inst.waiting:
            self._start(inst, call, t, placed_at)
        inst.waiting.clear()
        if inst.running == 0:  # prewarmed, nothing to do yet
            self._idle(inst, t)

    def _place(self, call: _Call, t: float) -> bool:
        """Give ``call`` a slot if one is free or can be made; False if it must queue."""
        c = self.spec.concurrency
        warm = [i for i in self._instances.values() if i.ready and i.running < c]
        if warm:
            # The busiest (first, so lowest id, among equals), to let the others expire.
            self._start(max(warm, key=lambda i: i.running), call, t, t)
            return True
        # Instances warm up in id order, so the lowest id with a spare slot is ready first.
        inst = next(
            (i for i in self._instances.values() if not i.ready and len(i.waiting) < c), None
        )
        if inst is None:
            if not self._room():
                return False
            inst = self._launch(t)
        if inst.ready:
            self._start(inst, call, t, t)
        else:
            inst.waiting.append((call, t))
        return True

    def _start(self, inst: _Instance, call: _Call, t: float, placed_at: float) -> None:
        if inst.running == 0:
            self._busy += 1
        inst.running += 1
        inst.expires_at = None
        inst.hold_until = None  # the prewarm is spent: from now on it idles like any instance
        if inst.prewarmed:
            inst.prewarmed = False
            self.prewarms_used += 1
        self.calls_started += 1
        self.queue_wait_s += placed_at - call.submitted_at
        self._push(t + call.duration_s, _FINISH, inst.id, call)
        self._outbox.append(CallStarted(call.id, t, t - call.submitted_at, t - placed_at, inst.id))

    def _launch(self, t: float) -> _Instance:
        inst = _Instance(self._next_id, ready=self.spec.cold_start_s == 0)
        self._next_id += 1
        self._instances[inst.id] = inst
        if not inst.ready:
            self.cold_starts += 1
            self._push(t + self.spec.cold_start_s, _READY, inst.id, None)
        return inst

    def _idle(self, inst: _Instance, t: float) -> None:
        held = inst.hold_until
        inst.expires_at = t + self.spec.keepalive_s if held is None else max(t, held)
        if inst.expires_at < math.inf:
            self._push(inst.expires_at, _EXPIRE, inst.id, None)

    def _hold(self, inst: _Instance, until: float) -> None:
        """Keep ``inst`` at least until ``until`` if no call comes first."""
        inst.hold_until = until if inst.hold_until is None else max(inst.hold_until, until)
        if inst.expires_at is not None and inst.expires_at < until:  # idle now: push it back
            inst.expires_at = until
            self._push(until, _EXPIRE, inst.id, None)

    def _room(self) -> bool:
        m = self.spec.max_instances
        return m is None or len(self._instances) < m

    def _push(self, t: float, kind: int, inst_id: int, call: _Call | None) -> None:
        heapq.heappush(self._events, (t, kind, self._seq, inst_id, call))
        self._seq += 1

    def _stale(self, event: _Event) -> bool:
        """An expiry made moot because the instance was used again (or already removed)."""
        t, kind, _, inst_id, _ = event
        if kind != _EXPIRE:
            return False
        inst = self._instances.get(inst_id)
        return inst is None or inst.expires_at != t

    def _prune(self) -> None:
        while self._events and self._stale(self._events[0]):
            heapq.heappop(self._events)

    def _check_query(self, now: float) -> None:
        if not now >= self._now:
            raise ValueError(f"now must not be before {self._now!r}, got {now!r}")
        self._prune()
        if self._events and self._events[0][0] < now:
            raise ValueError(f"an event is due at {self._events[0][0]!r}: advance the pool first")

    def _areas(self, now: float) -> tuple[float, float]:
        self._check_query(now)
        if not self._instances:
            return self._warm_s, self._busy_s
        dt = now - self._now
        return self._warm_s + len(self._instances) * dt, self._busy_s + self._busy * dt

    def _take(self) -> list[Effect]:
        out, self._outbox = self._outbox, []
        return out
