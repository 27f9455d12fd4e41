"""An admission controller in front of one simulated engine (issue 15).

Calls beyond the limit wait in the engine's own priority-ordered waiting queue (the ranking
policy's order), which is where the gateway's dispatcher would hold them: the limit
(`Engine.admit_limit`) only stops new admissions and never preempts a running call. The
controller observes right before every plan (after each step, and when an idle engine gets
work) and counts the output tokens of every completed step, as a gateway counts them from
responses.
"""

from __future__ import annotations

from hermes.engine.base import EngineBase
from hermes.engine.request import EngineRequest
from hermes.engine.step import StepResult
from hermes.policies.admission import Admission


class EngineAdmission:
    """Drives `admission` from `engine`'s state and sets the engine's admission limit."""

    def __init__(self, engine: EngineBase, admission: Admission) -> None:
        self.engine = engine
        self.admission = admission
        self.output_tokens = 0
        self.max_in_engine = 0
        self._limit_s = 0.0  # integral of the limit over time
        self._last: tuple[float, int] | None = None  # (time, limit) of the last observation
        self._start: float | None = None
        engine.admit_limit = admission.limit

    def before_plan(self, now: float) -> None:
        e = self.engine
        in_engine = len(e.running)
        waiting = e.outstanding - in_engine
        self.max_in_engine = max(self.max_in_engine, in_engine)
        limit = self.admission.observe(
            now, in_engine=in_engine, waiting=waiting, output_tokens=self.output_tokens
        )
        if self._last is not None:
            t, old = self._last
            self._limit_s += old * (now - t)
        else:
            self._start = now
        self._last = (now, limit)
        e.admit_limit = limit

    def on_step(self, result: StepResult, now: float) -> None:
        self.output_tokens += result.tokens
        for r in result.finished:
            self._record(r, now)

    def _record(self, r: EngineRequest, now: float) -> None:
        ttft = None if r.first_token_s is None else r.first_token_s - r.arrival_s
        tpot = None
        if r.first_token_s is not None and r.generated > 1:
            tpot = (now - r.first_token_s) / (r.generated - 1)
        self.admission.record_call(
            now, ttft_s=ttft, tpot_s=tpot, prompt_tokens=r.prompt_tokens, output_tokens=r.generated
        )

    def figures(self) -> dict[str, object]:
        """The controller's state, the time-weighted mean limit and the most calls seen in
        the engine at once."""
        mean = None
        if self._last is not None and self._start is not None and self._last[0] > self._start:
            mean = self._limit_s / (self._last[0] - self._start)
        return {
            **self.admission.describe(),
            "mean_limit": mean,
            "max_in_engine": self.max_in_engine,
        }
