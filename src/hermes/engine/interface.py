"""The engine contract: what a shell (the simulator's runners, the emulator, a test) may ask
of an engine model, whichever batch selection it implements.

The shell owns time. It `add`s requests, `plan`s a step at `now`, lets time pass to the
step's end (or `shorten`s a decode run when something arrives), then `complete`s it and
learns which requests sampled tokens or finished. `set_priority` and `abort` may come at any
time; they take effect at the next iteration boundary. Nothing here reads a clock.
"""

from __future__ import annotations

from typing import Protocol

from hermes.engine.cost_model import StepCostModel
from hermes.engine.engine_config import EngineConfig
from hermes.engine.request import EngineRequest
from hermes.engine.step import EngineStats, Step, StepResult
from hermes.types import FloatArray


class LLMEngine(Protocol):
    cost: StepCostModel
    config: EngineConfig
    stats: EngineStats
    running: list[EngineRequest]

    def add(self, req: EngineRequest, now: float) -> bool:
        """Queue `req`; False (state REJECTED, `reason` set) if it can never run here."""
        ...

    def abort(self, req: EngineRequest, now: float) -> bool:
        """Drop `req` for good; False if it is not queued, running or preempted here."""
        ...

    def set_priority(self, req: EngineRequest, priority: float) -> None:
        """Re-rank `req` (lower first), for engines that order by priority."""
        ...

    def plan(self, now: float) -> Step | None:
        """The next step starting at `now`; None when there is no work."""
        ...

    def shorten(self, step: Step, now: float) -> float:
        """Cut the step in flight at the first iteration boundary at or after `now`."""
        ...

    def complete(self, step: Step) -> StepResult:
        """Apply the step in flight at its end."""
        ...

    @property
    def idle(self) -> bool: ...

    @property
    def outstanding(self) -> int: ...

    @property
    def kv_total_blocks(self) -> int: ...

    @property
    def kv_used_fraction(self) -> float: ...

    @property
    def queued_tokens(self) -> int: ...

    def itl_samples(self) -> tuple[FloatArray, FloatArray]: ...

    def check_invariants(self) -> None: ...
