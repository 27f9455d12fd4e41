"""`bros-gateway` in the BROS study (issue 15, item 5): an unmodified vLLM engine (FCFS at its
defaults) behind a gateway that holds best-effort (BE) calls back, so that the real-time (RT)
calls beside them keep their time per token. The gateway cannot change the engine's
iterations; it only chooses how many BE calls the engine holds (`policies/rt_admission.py`),
measuring RT's pace as it would from the streamed tokens.
"""

from __future__ import annotations

from typing import Any

from hermes.engine.request import EngineRequest, RequestState
from hermes.policies.rt_admission import RtPaceLimit, RtPaceOptions
from hermes.sim.engine_runner import EngineRunner
from hermes.sim.request_streams import Backlog, LengthSource, RequestClass


class GatedBacklog(Backlog):
    """A BE backlog held at the gateway: the engine gets BE calls only while it holds fewer
    than `limit` of them (running or queued in it), and at most `depth` queued."""

    def __init__(
        self, runner: EngineRunner[Any], source: LengthSource, cls: RequestClass, depth: int
    ) -> None:
        super().__init__(runner, source, cls, depth)
        self.limit = 1 << 30

    def top_up(self, now: float) -> None:
        room = self.limit - len(self.live)
        if room <= 0:
            return
        saved = self.depth
        queued = sum(1 for r in self.live.values() if r.state is not RequestState.RUNNING)
        self.depth = min(saved, queued + room)
        try:
            super().top_up(now)
        finally:
            self.depth = saved


class RtPaceGate:
    """The gateway's view of the RT calls in flight: the tokens each made since it was last
    looked at and how long they took, fed to an `RtPaceLimit` that sets the backlog's limit."""

    def __init__(self, tpot_slo_s: float, options: RtPaceOptions | None = None) -> None:
        self.pace = RtPaceLimit(options)
        self.tpot_slo_s = tpot_slo_s
        self._seen: dict[int, tuple[EngineRequest, int, float | None]] = {}
        self._limit_s = 0.0
        self._last: tuple[float, int] | None = None
        self._start: float | None = None

    def add(self, req: EngineRequest) -> None:
        self._seen[id(req)] = (req, 0, None)

    def update(self, now: float, backlog: GatedBacklog) -> None:
        tokens, span = 0, 0.0
        for key, (r, generated, last) in list(self._seen.items()):
            if r.generated > generated and r.last_token_s is not None:
                if last is None:  # the first token is TTFT's: the pace starts after it
                    assert r.first_token_s is not None
                    generated, last = 1, r.first_token_s
                tokens += r.generated - generated
                span += r.last_token_s - last
                self._seen[key] = (r, r.generated, r.last_token_s)
            if r.done:
                del self._seen[key]
        limit = self.pace.observe(
            now, rt_tokens=tokens, rt_token_s=span, tpot_slo_s=self.tpot_slo_s
        )
        if self._last is not None:
            self._limit_s += self._last[1] * (now - self._last[0])
        else:
            self._start = now
        self._last = (now, limit)
        backlog.limit = limit

    def figures(self) -> dict[str, float | int | None]:
        mean = None
        if self._last is not None and self._start is not None and self._last[0] > self._start:
            mean = self._limit_s / (self._last[0] - self._start)
        return {"mean_be_limit": mean, "be_limit_cuts": self.pace.cuts}
