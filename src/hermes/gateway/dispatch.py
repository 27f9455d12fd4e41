"""The gateway's queue: calls wait here, in policy order, for a slot on an upstream.

Each upstream (one engine replica) takes at most its current limit of calls at once, so that
calls queue here, where the policy orders them, rather than inside the engine. A call may go to
any upstream serving its model; a freed slot goes to the best-ranked call that upstream can
serve, and a new call goes to the serving upstream with the most free slots (least outstanding
work).

Limits move (`set_limit`, from the admission controller, `policies.admission`): a raised limit
grants waiting calls at once; a lowered one never cuts a running call, only holds new grants
back until enough have ended. A limit is at least 1, so an upstream with no call in flight
always takes one: no call waits forever on a healthy upstream.

SLO classes (BROS in the gateway): which class a grant goes to is `policies.slo_class`'s
decision (`GrantShare`: real-time first, best-effort kept to its minimum share); each class
waits in policy order.

An upstream takes calls only for the models it has loaded now (`set_loaded`; at first, all of
its models): engines that share a GPU take turns with their models (`model_swaps`), and calls
for a model that none has loaded wait here until one does.

Aging (`policies.aging`): a call that has waited `max_wait_s` goes ahead of every call that
has waited less; `age(now)` applies it, looking only at the oldest calls of each queue.

Ranking rounds: `rerank_all` gives every waiting call a new rank and rebuilds the heaps that
moved (O(n)); `rerank_groups` re-ranks only the calls of the groups named (a call's group is
its application in the gateway), for policies whose ranks change only when an application
does: a moved call gets a new heap entry and its old one goes stale (O(log n) per call moved;
the heaps are rebuilt instead when most calls moved), and a model's heaps are compacted once
they hold more stale entries than live ones.

Pure: `submit`, `release`, `cancel` and `rerank` return the grants to carry out; the server
turns them into started upstream calls. Picking the best call is a heap pop (O(log n)).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field

from hermes.gateway.affinity import MostFree, UpstreamRouter
from hermes.policies.aging import AGED_RANK, Aging
from hermes.policies.slo_class import GrantShare, SloClassOptions

RT, BE = 0, 1  # heap index per SLO class
# A model's heaps are compacted when they hold more than twice its live calls and this many.
_COMPACT_SLACK = 64


@dataclass(frozen=True, slots=True)
class Upstream:
    """`concurrency`: its limit at first (`Dispatcher.set_limit` moves it)."""

    name: str
    models: frozenset[str]
    concurrency: int


@dataclass(slots=True, eq=False)
class Waiting:
    """A queued call. `priority` is the policy's rank (lower first), `AGED_RANK` once aged,
    or -inf for a retry (granted once already, it goes first); ranking rounds leave the last
    two as they are."""

    key: Hashable
    model: str
    priority: float
    seq: int = 0
    cancelled: bool = False
    granted: bool = False
    rt: bool = False  # real-time: ahead of best-effort calls
    queued_s: float = 0.0
    aged: bool = False
    group: Hashable = None  # whose rank it shares (`rerank_groups`); None: no group
    # Its one live heap entry (None once granted or cancelled): any other entry of it in a
    # heap is stale, whatever its rank, so a rank that moves and comes back is no duplicate.
    entry: tuple[float, int, Waiting] | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Grant:
    call: Waiting
    upstream: str


class QueueFullError(Exception):
    """The queue holds `limit` calls already."""


@dataclass(slots=True)
class Dispatcher:
    upstreams: Sequence[Upstream]
    limit: int = 10_000
    slo: SloClassOptions = field(default_factory=SloClassOptions)
    aging: Aging = field(default_factory=lambda: Aging(None))
    # Which free upstream a granted call goes to (`affinity`: the most free slots, or session).
    router: UpstreamRouter = field(default_factory=MostFree)
    # Per model, one heap per class (RT, BE) of (priority, seq, call). An aged call has a
    # second entry, at AGED_RANK; the first is stale then (see `_live`).
    _heaps: dict[str, tuple[list[tuple[float, int, Waiting]], ...]] = field(default_factory=dict)
    # With aging: per model, per class, the calls in the order they were queued.
    _fifo: dict[str, tuple[deque[Waiting], deque[Waiting]]] = field(default_factory=dict)
    _share: GrantShare = field(init=False)
    _busy: dict[str, int] = field(default_factory=dict)
    _limit: dict[str, int] = field(default_factory=dict)
    _queued_for: dict[str, int] = field(default_factory=dict)  # live waiting calls per model
    # Per group, its waiting calls in the order they were queued (a dict as an ordered set).
    _members: dict[Hashable, dict[Waiting, None]] = field(default_factory=dict)
    _healthy: dict[str, bool] = field(default_factory=dict)
    _loaded: dict[str, frozenset[str]] = field(default_factory=dict)
    _by_name: dict[str, Upstream] = field(default_factory=dict)
    _index: dict[str, int] = field(default_factory=dict)  # position in `upstreams`
    # Per model, the upstreams with a free slot that have it loaded: an arrival finds them
    # without scanning every upstream (a full cluster: none, at once).
    _open: dict[str, set[str]] = field(default_factory=dict)
    _seq: int = 0
    _queued: int = 0
    _running: int = 0  # the sum of `_busy`, kept (read at every grant, for the metrics)

    def __post_init__(self) -> None:
        self._share = GrantShare(self.slo)
        names = [u.name for u in self.upstreams]
        if len(set(names)) != len(names):
            raise ValueError(f"upstream names must be unique, got {names}")
        for i, u in enumerate(self.upstreams):
            self._by_name[u.name] = u
            self._index[u.name] = i
            self._busy[u.name] = 0
            self._limit[u.name] = _checked_limit(u.name, u.concurrency)
            self._healthy[u.name] = True
            self._loaded[u.name] = u.models
            for m in u.models:
                self._heaps.setdefault(m, ([], []))
                self._queued_for.setdefault(m, 0)
                self._fifo.setdefault(m, (deque(), deque()))
                self._open.setdefault(m, set())
        for u in self.upstreams:
            self._sync(u.name)

    # Queries ---------------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def running(self) -> int:
        return self._running

    def serves(self, model: str) -> bool:
        return model in self._heaps

    def models(self) -> list[str]:
        return sorted(self._heaps)

    def busy(self, upstream: str) -> int:
        return self._busy[upstream]

    def limit_of(self, upstream: str) -> int:
        """How many calls `upstream` may hold now."""
        return self._limit[upstream]

    def room(self, upstream: str) -> int:
        """Free slots on `upstream` now (0 while it is out of rotation or over its limit)."""
        if not self._healthy[upstream]:
            return 0
        return max(0, self._limit[upstream] - self._busy[upstream])

    def waiting_for(self, upstream: str) -> int:
        """Calls waiting that `upstream` could take now (for the models it has loaded)."""
        return sum(self._queued_for[m] for m in self._loaded[upstream])

    def healthy(self, upstream: str) -> bool:
        return self._healthy[upstream]

    def loaded(self, upstream: str) -> frozenset[str]:
        """The models `upstream` takes calls for now."""
        return self._loaded[upstream]

    def available(self, model: str) -> bool:
        """Whether a healthy upstream serves `model` (loaded now or not)."""
        return any(self._healthy[u.name] for u in self.upstreams if model in u.models)

    def waiting(self) -> list[Waiting]:
        """The calls waiting, in no particular order (a ranking round reads them all)."""
        return [e[2] for heaps in self._heaps.values() for heap in heaps for e in heap if _live(e)]

    # Inputs ----------------------------------------------------------------------------------

    def submit(
        self,
        key: Hashable,
        model: str,
        priority: float,
        rt: bool = False,
        now: float = 0.0,
        group: Hashable = None,
    ) -> tuple[Waiting, list[Grant]]:
        """Queue a call (`rt`: real-time) at `now`, in `group` (whose calls `rerank_groups`
        re-ranks together; None: none); KeyError for a model no upstream serves,
        QueueFullError when full."""
        if model not in self._heaps:
            raise KeyError(model)
        if self._queued >= self.limit:
            raise QueueFullError(self.limit)
        w = Waiting(key, model, priority, self._seq, rt=rt, queued_s=now, group=group)
        self._seq += 1
        cls = RT if rt else BE
        e = w.entry = (priority, w.seq, w)  # `_entry`, inlined: every call comes through here
        heapq.heappush(self._heaps[model][cls], e)
        if group is not None:
            self._members.setdefault(group, {})[w] = None
        if self.aging.active and priority > AGED_RANK:
            self._fifo[model][cls].append(w)
        self._queued += 1
        self._queued_for[model] += 1
        return w, self._fill(model)

    def age(self, now: float) -> list[Waiting]:
        """Age the calls that have waited long enough at `now` (`aging`): each goes ahead of
        every call that has waited less. The calls aged; a new order grants nothing by itself.
        Looks only at each queue's oldest calls: O(aged calls) per round."""
        aged: list[Waiting] = []
        for model, fifos in self._fifo.items():
            for cls, fifo in enumerate(fifos):
                while fifo:
                    w = fifo[0]
                    if w.cancelled or w.granted:
                        fifo.popleft()
                        continue
                    if not self.aging.due(w.queued_s, w.priority, now):
                        break
                    fifo.popleft()
                    w.aged = True
                    w.priority = AGED_RANK
                    heapq.heappush(self._heaps[model][cls], _entry(w))
                    aged.append(w)
        return aged

    def release(self, upstream: str) -> list[Grant]:
        """A call on `upstream` ended: its slot goes to the best waiting call it can serve."""
        if self._busy[upstream] <= 0:
            raise ValueError(f"release of {upstream!r} without a call running there")
        self._busy[upstream] -= 1
        self._running -= 1
        self._sync(upstream)
        return self._fill_upstream(upstream)

    def cancel(self, call: Waiting) -> bool:
        """Drop a call still waiting (its client went away); False if it was granted."""
        if call.cancelled or call.granted:
            return False
        call.cancelled = True
        self._left(call)
        return True

    def set_limit(self, upstream: str, limit: int) -> list[Grant]:
        """`upstream` may hold `limit` calls (>= 1) from now on: the grants a raise makes at
        once. A lower limit cuts nothing: the calls running there run on, and new grants wait
        until fewer than `limit` are left."""
        self._limit[upstream] = _checked_limit(upstream, limit)
        self._sync(upstream)
        return self._fill_upstream(upstream)

    def set_health(self, upstream: str, healthy: bool) -> list[Grant]:
        """An unhealthy upstream gets no new calls; back to health, it fills its slots."""
        self._healthy[upstream] = healthy
        self._sync(upstream)
        return self._fill_upstream(upstream) if healthy else []

    def set_loaded(self, upstream: str, models: Iterable[str]) -> list[Grant]:
        """`upstream` takes calls only for `models` (some of its own) from now on: none while
        it is asleep or swapping; calls it holds run on. The grants its new models get."""
        u = self._upstream(upstream)
        loaded = frozenset(models)
        if not loaded <= u.models:
            raise ValueError(
                f"upstream {upstream!r} does not serve {sorted(loaded - u.models)}; "
                f"it serves {sorted(u.models)}"
            )
        self._loaded[upstream] = loaded
        self._sync(upstream)
        return self._fill_upstream(upstream)

    def rerank(self, priority: Callable[[Waiting], float]) -> None:
        """Give every waiting call a new priority (dynamic policies, once per round); aged
        and retried calls keep theirs."""
        self.rerank_all(
            lambda calls: [w.priority if w.priority <= AGED_RANK else priority(w) for w in calls]
        )

    def rerank_all(self, priorities: Callable[[list[Waiting]], list[float]]) -> None:
        """`rerank` with the new priorities of all the waiting calls asked at once
        (`priorities(calls)`, in the order of `calls`; aged and retried calls keep theirs): a
        round over 10,000 calls in a few list passes. A heap none of whose calls moved is
        kept."""
        heaps = [heap for pair in self._heaps.values() for heap in pair]
        # `_live` inlined: this runs over every waiting call each round.
        live = [[e[2] for e in heap if e[2].entry is e] for heap in heaps]
        every = [w for calls in live for w in calls]
        ranks = priorities(every)
        if len(ranks) != len(every):
            raise ValueError(f"{len(ranks)} priorities for {len(every)} waiting calls")
        new = iter(ranks)
        for heap, calls in zip(heaps, live, strict=True):
            moved = len(calls) != len(heap)  # stale entries go
            for w in calls:
                p = next(new)
                if p != w.priority and w.priority > AGED_RANK:  # aged or retried: kept
                    w.priority = p
                    moved = True
            if moved:
                rebuilt = [_entry(w) for w in calls]
                heapq.heapify(rebuilt)
                heap[:] = rebuilt

    def rerank_groups(
        self, groups: Iterable[Hashable], priorities: Callable[[list[Waiting]], list[float]]
    ) -> int:
        """`rerank_all` for the waiting calls of `groups` alone (`priorities(calls)`, in the
        order of `calls`; aged and retried calls keep theirs): what a round costs when only
        those groups' ranks can have moved. Every other call keeps its rank and its heap entry.
        How many calls were asked about."""
        members = self._members
        calls = [w for g in dict.fromkeys(groups) if g in members for w in members[g]]
        if calls:
            ranks = priorities(calls)
            if len(ranks) != len(calls):
                raise ValueError(f"{len(ranks)} priorities for {len(calls)} waiting calls")
            moved = []
            for w, p in zip(calls, ranks, strict=True):
                if p != w.priority and w.priority > AGED_RANK:  # aged or retried: kept
                    w.priority = p
                    moved.append(w)
            if 4 * len(moved) < self._queued:
                for w in moved:
                    heapq.heappush(self._heaps[w.model][RT if w.rt else BE], _entry(w))
            else:  # most calls moved: rebuilding their heaps costs less than a push each
                for model in {w.model for w in moved}:
                    for heap in self._heaps[model]:
                        heap[:] = [_entry(e[2]) for e in heap if e[2].entry is e]
                        heapq.heapify(heap)
        self._compact()
        return len(calls)

    # Internals -------------------------------------------------------------------------------

    def _free(self, u: Upstream) -> int:
        return self.room(u.name)

    def _class(self, rt_waiting: bool, be_waiting: bool) -> int | None:
        """Which class's heap the next grant comes from (`GrantShare` decides)."""
        cls = self._share.next_class(rt_waiting, be_waiting)
        return None if cls is None else RT if cls == "rt" else BE

    def _granted(self, w: Waiting) -> None:
        w.granted = True
        if w.group is None:  # `_left`, inlined: every grant comes through here
            self._queued -= 1
            self._queued_for[w.model] -= 1
            w.entry = None
        else:
            self._left(w)
        self._share.granted("rt" if w.rt else "be")

    def _left(self, w: Waiting) -> None:
        """`w` is no longer waiting (granted or cancelled)."""
        self._queued -= 1
        self._queued_for[w.model] -= 1
        w.entry = None  # every entry of it is stale now (and the entry's cycle is broken)
        if w.group is not None:
            calls = self._members[w.group]
            del calls[w]
            if not calls:
                del self._members[w.group]

    def _compact(self) -> None:
        """Drop the stale entries of every model whose heaps hold more than twice its live
        calls (and `_COMPACT_SLACK`): moved ranks and cancelled calls leave entries behind
        that only a pop would otherwise clear. O(models), plus O(n) amortised over the
        entries that went stale."""
        for model, heaps in self._heaps.items():
            if sum(map(len, heaps)) > 2 * self._queued_for[model] + _COMPACT_SLACK:
                for heap in heaps:
                    heap[:] = [e for e in heap if e[2].entry is e]
                    heapq.heapify(heap)

    def _sync(self, name: str) -> None:
        """Keep `_open` true to `name`'s room and loaded models (after any change to them)."""
        has_room = self.room(name) > 0
        loaded = self._loaded[name]
        for m in self._by_name[name].models:
            if has_room and m in loaded:
                self._open[m].add(name)
            else:
                self._open[m].discard(name)

    def _fill(self, model: str) -> list[Grant]:
        grants: list[Grant] = []
        heaps = self._heaps[model]
        open_ = self._open[model]
        while open_:
            cls = self._class(bool(self._prune(heaps[RT])), bool(self._prune(heaps[BE])))
            if cls is None:
                return grants
            # In the order of `upstreams`: the router breaks ties by it.
            index = self._index
            free = [self.upstreams[i] for i in sorted(index[n] for n in open_)]
            _, _, w = heapq.heappop(heaps[cls])
            self._granted(w)
            best = self.router.choose(w, free, self.busy, self.room)
            self._busy[best.name] += 1
            self._running += 1
            self._sync(best.name)
            self.router.placed(w, best.name)
            grants.append(Grant(w, best.name))
        return grants

    def _upstream(self, name: str) -> Upstream:
        return self._by_name[name]  # KeyError for a name no upstream has

    def _fill_upstream(self, name: str) -> list[Grant]:
        u = self._upstream(name)
        grants: list[Grant] = []
        while self._free(u) > 0:
            # The best head of the chosen class among the models this upstream has loaded.
            heads: tuple[list[tuple[float, int, str]], list[tuple[float, int, str]]] = ([], [])
            for m in self._loaded[name]:
                for k, heap in enumerate(self._heaps[m]):
                    if self._prune(heap):
                        heads[k].append((heap[0][0], heap[0][1], m))
            cls = self._class(bool(heads[RT]), bool(heads[BE]))
            if cls is None:
                break
            _, _, model = min(heads[cls])
            _, _, w = heapq.heappop(self._heaps[model][cls])
            self._granted(w)
            self._busy[name] += 1
            self._running += 1
            self._sync(name)
            self.router.placed(w, name)
            grants.append(Grant(w, name))
        return grants

    @staticmethod
    def _prune(heap: list[tuple[float, int, Waiting]]) -> list[tuple[float, int, Waiting]]:
        while heap and heap[0][2].entry is not heap[0]:  # not `_live`
            heapq.heappop(heap)
        return heap


def _entry(w: Waiting) -> tuple[float, int, Waiting]:
    """A new heap entry for `w` at its priority, which makes any earlier one stale."""
    e = w.entry = (w.priority, w.seq, w)
    return e


def _live(entry: tuple[float, int, Waiting]) -> bool:
    """A heap entry of a call still waiting, and its latest one (an entry at a rank it had
    before is stale)."""
    return entry[2].entry is entry


def _checked_limit(upstream: str, limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"upstream {upstream!r}: a limit must be a whole number >= 1 ({limit!r})")
    return limit
