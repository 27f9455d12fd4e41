"""Applications as the gateway observes them: stages, calls in flight, service attained.

The tracker turns a stream of calls (tagged with application id and stage) and tool events into
the `AppView`s that policies rank, and each finished application into a recorded run (format
v1) for learning. Pure: time is an argument; the server owns the clock.

Stage boundaries: a call whose stage name differs from the application's current stage starts
a new stage (and finishes the current one), as does a tool event. A call may also carry the
stage's index (`x-hermes-stage-index`, its 0-based position among the application's stages,
tool stages included): a call whose index differs from the one the current stage was opened
with starts a new stage too, so a loop may call stage "think" twice in a row. Without an index,
consecutive calls of the same stage name belong to one stage, however far apart, so such a
loop must alternate stages (as agents do: thought, act, thought) or report its tool steps.

Bounds: clients decide how many applications, types and stages the gateway holds, so each is
capped (`AppLimits`): applications in progress (`TooManyAppsError`, 429), calls and tool
stages per application (`AppTooLongError`, 409), and application types (types beyond the cap
are folded into `OTHER_TYPE`, for metrics and learning alike).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import count

from hermes.core.demand_cost import DemandCost, LinearCost
from hermes.core.runs import AppRun, LLMCall, Stage, ToolCall
from hermes.gateway.context import CallContext
from hermes.policies.base import AppView, CallInfo

OTHER_TYPE = "other"  # where application types beyond `max_app_types` are counted


class AppLimitError(ValueError):
    """A client asked the gateway to hold more than its bounds allow."""


class TooManyAppsError(AppLimitError):
    """`max_apps` applications are in progress already."""


class AppTooLongError(AppLimitError):
    """The application has made `max_calls_per_app` calls and tool stages."""


@dataclass(frozen=True, slots=True)
class AppLimits:
    max_apps: int = 50_000  # applications in progress (plain calls' included)
    max_app_types: int = 64  # distinct application types; further ones count as OTHER_TYPE
    max_calls_per_app: int = 10_000  # LLM calls and tool stages of one application


class AppTypes:
    """The application types the gateway distinguishes: the first `limit` it sees (those it
    learned graphs for beforehand included); any type after them is `OTHER_TYPE`."""

    def __init__(self, limit: int, known: Iterable[str] = ()) -> None:
        self.limit = limit
        self.known: set[str] = set(known)

    def admit(self, app_type: str) -> tuple[str, bool]:
        """The type to count `app_type` as; (type, folded)."""
        if app_type in self.known or app_type == OTHER_TYPE:
            return app_type, False
        if len(self.known) < self.limit:
            self.known.add(app_type)
            return app_type, False
        return OTHER_TYPE, True


@dataclass(slots=True, eq=False)
class _StageLog:
    name: str
    kind: str  # "llm" | "tool"
    backend: str
    index: int | None = None  # the client's stage index, if it sent one
    calls: list[LLMCall | ToolCall] = field(default_factory=list)
    in_flight: int = 0
    started_s: float = 0.0
    model: str | None = None  # an LLM stage's model, as its first call asked

    def frozen(self) -> Stage:
        if self.kind == "llm":
            llm = tuple(c for c in self.calls if isinstance(c, LLMCall))
            return Stage(self.name, "llm", self.backend, llm, self.model)
        tools = tuple(c for c in self.calls if isinstance(c, ToolCall))
        return Stage(self.name, "tool", self.backend, tools)


@dataclass(slots=True, eq=False)
class GatewayApp:
    app_id: str
    app_type: str
    view: AppView
    stages: list[_StageLog] = field(default_factory=list)
    last_seen_s: float = 0.0
    calls: int = 0
    steps: int = 0  # LLM calls and tool stages, held to `max_calls_per_app`
    llm_in_flight: int = 0  # LLM calls queued or running (an open tool stage is not counted)
    ephemeral: bool = False  # a call without headers: ends with its call

    @property
    def current(self) -> _StageLog | None:
        return self.stages[-1] if self.stages else None

    @property
    def in_flight(self) -> int:
        return sum(s.in_flight for s in self.stages)


@dataclass(frozen=True, slots=True)
class CallTicket:
    """What the server keeps for one call between its start and its end."""

    app: GatewayApp
    stage: _StageLog
    info: CallInfo


class AppTracker:
    def __init__(self, cost: DemandCost | None = None, limits: AppLimits | None = None) -> None:
        self.cost = cost or LinearCost()
        self.limits = limits or AppLimits()
        self.types = AppTypes(self.limits.max_app_types)
        self.apps: dict[str, GatewayApp] = {}
        self.folded = 0  # applications whose type was counted as OTHER_TYPE
        self._ids = count()
        # Applications whose view changed since the last ranking round took them
        # (`take_changed`): a round re-ranks only these when a policy ranks by views alone.
        self._changed: dict[GatewayApp, None] = {}

    def __iter__(self) -> Iterator[GatewayApp]:
        return iter(self.apps.values())

    def app_for(self, ctx: CallContext, now: float) -> tuple[GatewayApp, bool]:
        """The call's application, created on first sight; (app, created)."""
        key = ctx.app_id if ctx.app_id is not None else f"_call-{next(self._ids)}"
        app = self.apps.get(key)
        if app is not None:
            app.last_seen_s = now
            return app, False
        if len(self.apps) >= self.limits.max_apps:
            raise TooManyAppsError(
                f"{len(self.apps)} applications are in progress, the most this gateway holds "
                "(max_apps); finish some, or wait for idle ones to end"
            )
        app_type, folded = self.types.admit(ctx.app_type)
        self.folded += folded
        deadline = None if ctx.deadline_ms is None else now + ctx.deadline_ms / 1e3
        view = AppView(key, app_type, now, deadline_s=deadline)
        app = GatewayApp(key, app_type, view, last_seen_s=now, ephemeral=ctx.app_id is None)
        self.apps[key] = app
        return app, True

    def start_call(
        self,
        app: GatewayApp,
        stage_name: str,
        prompt_tokens: int,
        now: float,
        stage_index: int | None = None,
        model: str | None = None,
    ) -> CallTicket:
        """A call of `app` in stage `stage_name` (at the client's `stage_index`, if it sent
        one) is about to queue."""
        self._step(app)
        cur = app.current
        if (
            cur is None
            or cur.kind != "llm"
            or cur.name != stage_name
            or (stage_index is not None and stage_index != cur.index)
        ):
            cur = self._new_stage(app, stage_name, "llm", "llm", now, stage_index)
        if model is not None and cur.model is None:
            # The stage's model is learned with it: a prewarm policy can then warm a cold
            # one (an adapter, a sleeping replica) ahead of the stage.
            cur.model = model
        cur.in_flight += 1
        app.llm_in_flight += 1
        app.calls += 1
        app.last_seen_s = now
        self._refresh(app)
        info = CallInfo((app.app_id, app.calls), now, prompt_tokens)
        return CallTicket(app, cur, info)

    def end_call(
        self, ticket: CallTicket, prompt_tokens: int, completion_tokens: int, now: float
    ) -> None:
        """The call ended; a call that produced nothing is not recorded as demand."""
        stage, app = ticket.stage, ticket.app
        stage.in_flight -= 1
        app.llm_in_flight -= 1
        app.last_seen_s = now
        if completion_tokens > 0:
            stage.calls.append(LLMCall(max(1, prompt_tokens), completion_tokens))
            served = self.cost.llm_call_s(prompt_tokens, completion_tokens)
            app.view.stage_service_s += served if stage is app.current else 0.0
            app.view.total_attained_s += served
            app.view.served_tokens += prompt_tokens + completion_tokens
        self._refresh(app)

    def tool_started(
        self,
        app: GatewayApp,
        stage: str,
        backend: str,
        now: float,
        stage_index: int | None = None,
    ) -> None:
        self._step(app)
        self._new_stage(app, stage, "tool", backend, now, stage_index).in_flight = 1
        app.last_seen_s = now
        self._refresh(app)

    def tool_finished(
        self, app: GatewayApp, stage: str, now: float, stage_index: int | None = None
    ) -> bool:
        """The tool stage `stage` (at `stage_index`, if given) ended; False if it was not the
        one in progress."""
        cur = app.current
        if cur is None or cur.kind != "tool" or cur.name != stage or cur.in_flight == 0:
            return False
        if stage_index is not None and stage_index != cur.index:
            return False
        cur.in_flight = 0
        cur.calls.append(ToolCall(max(0.0, now - cur.started_s)))
        app.last_seen_s = now
        self._refresh(app)
        return True

    def finish(self, app: GatewayApp) -> AppRun | None:
        """Forget `app`; its run for learning, or None if it made no call worth recording."""
        self.forget(app)
        return self.run_of(app)

    @staticmethod
    def run_of(app: GatewayApp) -> AppRun | None:
        """`app`'s run so far (its stages with calls recorded), or None if it has none."""
        stages = tuple(s.frozen() for s in app.stages if s.calls)
        if not stages:
            return None
        return AppRun(app.app_type, app.app_id, stages)

    def forget(self, app: GatewayApp) -> None:
        self.apps.pop(app.app_id, None)
        self._changed[app] = None  # the policy forgets it too (`on_done`)

    def touch(self, app: GatewayApp) -> None:
        """`app`'s calls are to be re-ranked at the next round (its view, or the rank one of
        its calls was queued at, may differ from what the last round saw)."""
        self._changed[app] = None

    def take_changed(self) -> list[GatewayApp]:
        """The applications touched since the last call, in the order first touched."""
        changed, self._changed = list(self._changed), {}
        return changed

    def idle(self, now: float, timeout_s: float) -> list[GatewayApp]:
        """Applications with no LLM call in flight and no activity for `timeout_s`. An open
        tool stage does not keep an application: a client that reported a tool start and never
        its end would otherwise hold it for good."""
        return [
            a
            for a in self.apps.values()
            if a.llm_in_flight == 0 and now - a.last_seen_s >= timeout_s
        ]

    def _step(self, app: GatewayApp) -> None:
        """Count one more call or tool stage of `app`, within `max_calls_per_app`."""
        if app.steps >= self.limits.max_calls_per_app:
            raise AppTooLongError(
                f"application {app.app_id!r} has made {app.steps} calls and tool stages, the "
                "most one application may (max_calls_per_app); finish it and start another"
            )
        app.steps += 1

    def _new_stage(
        self,
        app: GatewayApp,
        name: str,
        kind: str,
        backend: str,
        now: float,
        index: int | None = None,
    ) -> _StageLog:
        cur = app.current
        if cur is not None and cur.calls:
            app.view.finished.append(cur.frozen())
        stage = _StageLog(name, kind, backend, index, started_s=now)
        app.stages.append(stage)
        v = app.view
        v.stage_index = len(app.stages) - 1
        v.stage_service_s = v.attained_s = 0.0
        return stage

    def _refresh(self, app: GatewayApp) -> None:
        # Every change to a view ends here (calls started and ended, tool stages, new stages).
        self._changed[app] = None
        cur = app.current
        v = app.view
        if cur is None:
            return
        # Policies look the stage up by name in the PDGraph; its calls so far are known.
        v.stage = cur.frozen()
        v.unfinished_calls = cur.in_flight
