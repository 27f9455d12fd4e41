"""The scheduling-policy interface shared by the simulator and the gateway.

A policy turns what it knows about a call and its application into an engine priority: lower
runs first. The shell keeps an `AppView` per application up to date and asks for priorities
when something changes, and every `rank_interval_s` for policies whose ranks move with
attained service (`dynamic`). Policies are pure: time arrives as `now`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from hermes.core.demand_cost import DemandCost
from hermes.core.demand_sampler import DemandModel
from hermes.core.runs import AppRun, Stage

# Applications without a deadline queue behind every application that has one.
NO_DEADLINE = 1e12


@dataclass(frozen=True, slots=True)
class CallInfo:
    """One LLM call as a policy sees it at submission."""

    call_id: Hashable
    arrival_s: float
    prompt_tokens: int


@dataclass(slots=True, eq=False)
class AppView:
    """An application in progress as the shell observes it.

    `attained_s` is the service (demand-cost seconds) attained by the current stage's
    unfinished calls; `total_attained_s` counts every call so far. `run` is the whole recorded
    run: only the clairvoyant `oracle` bound may read its future. `finished` lists the stages
    done, in order: refinement conditions on them, and they count the application's visits of
    each stage (`Progress.visits`), by which a PDGraph's loops predict what is left.
    """

    app_id: Hashable
    app: str
    arrival_s: float
    deadline_s: float | None = None  # absolute, on the same clock as arrival_s
    stage_index: int = -1
    stage: Stage | None = None
    unfinished_calls: int = 0
    finished: list[Stage] = field(default_factory=list)
    attained_s: float = 0.0
    stage_service_s: float = 0.0  # attained by all the current stage's calls, finished or not
    total_attained_s: float = 0.0
    served_tokens: int = 0
    run: AppRun | None = None


@dataclass(frozen=True, slots=True)
class PolicyContext:
    """What policies may be built with: learned demand models and the demand cost."""

    models: Mapping[str, DemandModel] = field(default_factory=dict)
    cost: DemandCost | None = None
    refine: bool = True
    samples: int = 1000
    seed: int = 0


class Policy(Protocol):
    name: str
    dynamic: bool  # ranks change with attained service: the shell re-ranks periodically
    # An application's rank is a function of its `AppView` (and its calls' `CallInfo`) alone,
    # given what the policy heard through `on_arrival` / `on_done`: it moves only when the
    # shell changes the view, so a round may re-rank just the applications that changed.
    # False (the default) where it also moves with `now` (deadlines, slack): every round
    # re-ranks every call.
    view_ranked: bool

    def priority(self, call: CallInfo, app: AppView | None, now: float) -> float: ...

    def rank_apps(self, apps: Sequence[AppView], now: float) -> list[float] | None:
        """One rank per application for all its calls, in one batch (a ranking round); None
        for policies whose priorities differ between an application's calls."""
        ...

    def on_arrival(self, app: AppView, now: float) -> None: ...

    def on_done(self, app: AppView, now: float) -> None: ...


class BasePolicy:
    """Defaults: static ranks, no bookkeeping."""

    name = "base"
    dynamic = False
    view_ranked = False

    def rank_apps(self, apps: Sequence[AppView], now: float) -> list[float] | None:
        return None

    def on_arrival(self, app: AppView, now: float) -> None:
        return None

    def on_done(self, app: AppView, now: float) -> None:
        return None
