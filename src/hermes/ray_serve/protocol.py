"""What an ingress replica and the scheduler actor say to each other: small records, in
batches. Payloads never travel here: the actor sees a call's context, model and prompt size,
and answers with the upstream it may use."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hermes.gateway.context import CallContext


@dataclass(frozen=True, slots=True)
class Submit:
    """Queue call `call_id` (unique within its replica)."""

    call_id: int
    ctx: CallContext
    model: str
    prompt_tokens: int


@dataclass(frozen=True, slots=True)
class Release:
    """Call `call_id` ended (`finish`: stop, error or abort), waiting or granted: its slot or
    its place in the queue goes back, and its usage is accounted."""

    call_id: int
    finish: str
    usage: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Retry:
    """Call `call_id` could not reach `upstream` (no byte of answer): its slot goes back, the
    upstream is marked down, and the call queues once more, first in line, for another."""

    call_id: int
    upstream: str


Op = Submit | Release | Retry


@dataclass(frozen=True, slots=True)
class Granted:
    """Call `call_id` may go to `upstream` now, with `rank` as the engine's priority and
    `extra` body fields (a llama.cpp slot); `deadline_left_s`: the seconds its application
    had left to its deadline at the grant (None: no deadline), for the upstream's headers."""

    call_id: int
    upstream: str
    rank: float
    extra: dict[str, Any] = field(default_factory=dict)
    deadline_left_s: float | None = None


@dataclass(frozen=True, slots=True)
class Refused:
    """Call `call_id` ends here with an error: refused at the queue, timed out in it, or
    failed while waiting (its model unavailable, the scheduler stopping)."""

    call_id: int
    status: int
    type: str
    message: str
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reply:
    """What the actor has for a replica: the decisions about its calls since it last asked.
    `epoch` names the actor's incarnation as this replica knows it: a new one (a restart, or
    the replica given up for dead meanwhile) has forgotten every call of the replica."""

    epoch: str
    granted: list[Granted]
    refused: list[Refused]


# An HTTP request for the scheduler's own routes, and its answer: (method, path, query string,
# headers, body) and (status, headers, body), headers as ASGI gives them.
HttpCall = tuple[str, str, bytes, list[tuple[bytes, bytes]], bytes]
HttpAnswer = tuple[int, list[tuple[bytes, bytes]], bytes]


# On the wire (between processes) the records travel as plain tuples: pickling a batch of 200
# frozen dataclasses took 10 ms here, as tuples 0.5 ms (docs/ray.md).
Wire = tuple[Any, ...]


def ops_to_wire(ops: Sequence[Op]) -> list[Wire]:
    out: list[Wire] = []
    for op in ops:
        if isinstance(op, Submit):
            c = op.ctx
            ctx = (c.app_id, c.app_type, c.stage, c.deadline_ms, c.slo_class, c.stage_index)
            out.append((0, op.call_id, op.model, op.prompt_tokens, *ctx))
        elif isinstance(op, Release):
            out.append((1, op.call_id, op.finish, op.usage))
        else:
            out.append((2, op.call_id, op.upstream))
    return out


def ops_from_wire(wire: Sequence[Wire]) -> list[Op]:
    out: list[Op] = []
    for w in wire:
        if w[0] == 0:
            out.append(Submit(w[1], CallContext(*w[4:]), w[2], w[3]))
        elif w[0] == 1:
            out.append(Release(w[1], w[2], w[3]))
        else:
            out.append(Retry(w[1], w[2]))
    return out


def reply_to_wire(reply: Reply) -> Wire:
    granted = [(g.call_id, g.upstream, g.rank, g.extra, g.deadline_left_s) for g in reply.granted]
    refused = [(r.call_id, r.status, r.type, r.message, r.param, r.headers) for r in reply.refused]
    return (reply.epoch, granted, refused)


def reply_from_wire(wire: Wire) -> Reply:
    epoch, granted, refused = wire
    return Reply(epoch, [Granted(*g) for g in granted], [Refused(*r) for r in refused])
