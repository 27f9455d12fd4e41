"""An application as the simulator tracks it: its run, the stage it is in, the calls still
out, the service it has had, and when it finished (or why it failed)."""

from __future__ import annotations

from dataclasses import dataclass, field

from hermes.core.runs import AppRun
from hermes.engine.request import EngineRequest
from hermes.policies.base import AppView


@dataclass(slots=True, eq=False)
class AppState:
    app_id: int
    run: AppRun
    arrival_s: float
    view: AppView
    stage: int = 0
    pending: int = 0
    live: list[EngineRequest] = field(default_factory=list)  # the stage's unfinished LLM calls
    stage_done_s: float = 0.0  # demand cost of the stage's finished calls
    done_s: float = 0.0  # demand cost of the finished stages
    finish_s: float | None = None
    failed: str | None = None
    stage_cold_wait_s: float = 0.0  # the longest cold-start wait among the stage's calls
    cold_wait_s: float = 0.0  # critical-path cold-start wait: stage_cold_wait_s summed
    reserved: list[str] = field(default_factory=list)  # backends prewarmed for its next stage

    @property
    def app_type(self) -> str:
        return self.run.app

    @property
    def run_id(self) -> str:
        return self.run.run_id


@dataclass(frozen=True, slots=True)
class ToolCallId:
    app_id: int
    stage: int
    index: int
