"""Session affinity: an application's calls kept where its KV cache is.

Routing (`Dispatcher.router`): which free upstream a granted call goes to. `MostFree` is the
default (the replica of the call's model with the most free slots: least outstanding work).
`SessionRouter` sends an application's calls back to the replica that served it (backends with
`router: session`), where the engine's prefix cache still holds its history, unless that
replica has more than `max_excess` calls in flight over the least loaded free one; then the
call goes to the one with the most free slots, which becomes its replica. A freed slot still
goes to the best-ranked waiting call, whichever replica served it before: the policy's order
comes first, affinity only breaks the tie between free replicas.

llama.cpp (`SlotAffinity`): its server keeps each slot's last prompt and reuses its common
prefix (`cache_prompt`); a call that names a slot (`id_slot`) lands where its application's
previous prompt is. Each call of a `router: session` llama.cpp backend takes a slot of its own
(the gateway never has more than its limit of calls there, at most `concurrency`, or
`max_concurrency` with auto; with `--parallel` at least that, a named slot is always idle):
its application's last slot if free, else the one used longest ago, whose cache is the least
likely to be wanted.

Pure (no I/O): the dispatcher and the forwarder call in.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from itertools import count
from typing import TYPE_CHECKING, Any, Protocol

from hermes.gateway.apps import CallTicket
from hermes.gateway.config import Backend

if TYPE_CHECKING:
    from hermes.gateway.calls import Call
    from hermes.gateway.dispatch import Upstream, Waiting

_MAX_SESSIONS = 100_000  # applications whose replica is remembered (least recent forgotten)


class UpstreamRouter(Protocol):
    def choose(
        self,
        call: Waiting,
        free: Sequence[Upstream],
        busy: Callable[[str], int],
        room: Callable[[str], int],
    ) -> Upstream:
        """One of `free` (the upstreams with a free slot for the call's model); `busy`: calls
        in flight on an upstream, `room`: its free slots under its current limit."""
        ...

    def placed(self, call: Waiting, upstream: str) -> None:
        """`call` was granted a slot on `upstream`."""
        ...


class MostFree:
    """The upstream with the most free slots (the first among equals)."""

    def choose(
        self,
        call: Waiting,
        free: Sequence[Upstream],
        busy: Callable[[str], int],
        room: Callable[[str], int],
    ) -> Upstream:
        return max(free, key=lambda u: room(u.name))

    def placed(self, call: Waiting, upstream: str) -> None:
        return None


def app_session(key: Hashable) -> Hashable | None:
    """The application a queued call belongs to (its key is its ticket); None for a plain
    call, whose application ends with it."""
    if isinstance(key, CallTicket) and not key.app.ephemeral:
        return key.app.app_id
    return None


class SessionRouter(MostFree):
    def __init__(
        self,
        sticky: frozenset[str],
        max_excess: int,
        session_of: Callable[[Hashable], Hashable | None] = app_session,
    ) -> None:
        self.sticky = sticky  # the upstreams that keep their applications
        self.max_excess = max_excess
        self.session_of = session_of
        self._home: OrderedDict[Hashable, str] = OrderedDict()
        self.kept = 0  # calls that went to their application's replica
        self.moved = 0  # calls of an application with a replica that went elsewhere

    def choose(
        self,
        call: Waiting,
        free: Sequence[Upstream],
        busy: Callable[[str], int],
        room: Callable[[str], int],
    ) -> Upstream:
        session = self.session_of(call.key)
        home = None if session is None else self._home.get(session)
        if home is not None:
            mine = next((u for u in free if u.name == home), None)
            if mine is not None and busy(home) - min(busy(u.name) for u in free) <= self.max_excess:
                self.kept += 1
                return mine
            self.moved += 1
        return super().choose(call, free, busy, room)

    def placed(self, call: Waiting, upstream: str) -> None:
        session = self.session_of(call.key)
        if session is None or upstream not in self.sticky:
            return
        self._home[session] = upstream
        self._home.move_to_end(session)
        if len(self._home) > _MAX_SESSIONS:
            self._home.popitem(last=False)

    def home(self, session: Hashable) -> str | None:
        return self._home.get(session)


def router_for(backends: Sequence[Backend], max_excess: int) -> UpstreamRouter:
    """Session routing if any backend asks for it, else the most free slots."""
    sticky = frozenset(b.name for b in backends if b.router == "session")
    return SessionRouter(sticky, max_excess) if sticky else MostFree()


class _Slots:
    def __init__(self, n: int) -> None:
        self.holder: list[Call | None] = [None] * n
        self.last_app: list[Hashable | None] = [None] * n
        self.used: list[int] = [-1] * n


class SlotAffinity:
    """`id_slot` and `cache_prompt` for the calls of `router: session` llama.cpp backends."""

    def __init__(self, backends: Sequence[Backend]) -> None:
        self._slots = {
            b.name: _Slots(b.max_limit)
            for b in backends
            if b.kind == "llamacpp" and b.router == "session"
        }
        self._tick = count()

    def fields(self, call: Call, upstream: str) -> dict[str, Any]:
        """The fields to add to `call`'s body on its way to `upstream` (none for others)."""
        slots = self._slots.get(upstream)
        if slots is None:
            return {}
        out: dict[str, Any] = {"cache_prompt": True}
        session = app_session(call.ticket)
        slot = None if session is None else self._take(slots, call, upstream, session)
        if slot is not None:
            out["id_slot"] = slot
        return out

    def _take(self, s: _Slots, call: Call, upstream: str, session: Hashable) -> int | None:
        for i, held in enumerate(s.holder):  # calls that ended, or moved, hold nothing now
            if held is not None and (held.ended or held.upstream != upstream):
                s.holder[i] = None
        for i, held in enumerate(s.holder):
            if held is call:  # sent again (a retry on the same upstream): the same slot
                return i
        free = [i for i, held in enumerate(s.holder) if held is None]
        if not free:
            return None  # more calls than slots: llama.cpp picks
        own = [i for i in free if s.last_app[i] == session]
        slot = own[0] if own else min(free, key=lambda i: s.used[i])
        s.holder[slot] = call
        s.last_app[slot] = session
        s.used[slot] = next(self._tick)
        return slot
