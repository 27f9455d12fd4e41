"""Request streams fed to an `EngineRunner` on the event loop: a trace of timed arrivals, and a
standing backlog kept topped up right before every plan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from hermes.engine.request import EngineRequest, RequestState
from hermes.sim.engine_runner import EngineRunner
from hermes.sim.kernel import EventLoop
from hermes.types import FloatArray, IntArray


class TimedRequests(Protocol):
    """Requests in arrival order: arrival (s), prompt and output tokens (`RtTrace`)."""

    @property
    def arrival_s(self) -> FloatArray: ...

    @property
    def prompt_tokens(self) -> IntArray: ...

    @property
    def output_tokens(self) -> IntArray: ...


class LengthSource(Protocol):
    """An endless supply of (prompt, output) lengths (`BeStream`, `PoolStream`)."""

    taken: int

    def take(self, n: int) -> list[tuple[int, int]]: ...


@dataclass(frozen=True, slots=True)
class RequestClass:
    """What every request of a stream carries: its SLO class (also the first part of its id),
    engine priority and latency SLOs."""

    name: str
    priority: float = 0.0
    ttft_slo_s: float | None = None
    tpot_slo_s: float | None = None

    def request(self, k: int, prompt: int, output: int, arrival_s: float) -> EngineRequest:
        return EngineRequest(
            (self.name, k),
            prompt,
            output,
            arrival_s,
            priority=self.priority,
            slo_class=self.name,
            ttft_slo_s=self.ttft_slo_s,
            tpot_slo_s=self.tpot_slo_s,
        )


class TraceFeeder:
    """Submits the i-th request of `trace` at its arrival time (those of one instant together).

    `requests` holds every request submitted so far, rejected ones included.
    """

    def __init__(
        self,
        loop: EventLoop,
        runner: EngineRunner[Any],
        trace: TimedRequests,
        cls: RequestClass,
    ) -> None:
        self._loop = loop
        self._runner = runner
        self._cls = cls
        self._arrivals: list[float] = trace.arrival_s.tolist()
        self._prompts: list[int] = trace.prompt_tokens.tolist()
        self._outputs: list[int] = trace.output_tokens.tolist()
        self.requests: list[EngineRequest] = []
        if self._arrivals:
            loop.at(self._arrivals[0], self._arrive)

    @property
    def exhausted(self) -> bool:
        """Every request of the trace was submitted."""
        return len(self.requests) == len(self._arrivals)

    def _arrive(self, now: float) -> None:
        i = start = len(self.requests)
        while i < len(self._arrivals) and self._arrivals[i] <= now:
            req = self._cls.request(i, self._prompts[i], self._outputs[i], self._arrivals[i])
            self.requests.append(req)
            i += 1
        self._runner.submit_all(self.requests[start:], now)
        if i < len(self._arrivals):
            self._loop.at(self._arrivals[i], self._arrive)


class Backlog:
    """Keeps `depth` requests from `source` queued (submitted, not running) whenever
    `top_up(now)` is called: from the runner's `before_plan` hook, right before each plan.

    Call `done(req)` from the runner's `on_done` for this stream's requests: it keeps the
    count of finished requests and of their tokens.
    """

    def __init__(
        self, runner: EngineRunner[Any], source: LengthSource, cls: RequestClass, depth: int
    ) -> None:
        if depth < 1:
            raise ValueError(f"Backlog: depth must be >= 1, got {depth}")
        self._runner = runner
        self._source = source
        self.cls = cls
        self.depth = depth
        self.live: dict[int, EngineRequest] = {}  # submitted, not finished: by id()
        self.finished = 0
        self.finished_tokens = 0

    def top_up(self, now: float) -> None:
        queued = sum(1 for r in self.live.values() if r.state is not RequestState.RUNNING)
        base = self._source.taken
        lengths = self._source.take(max(0, self.depth - queued))
        for k, (p, o) in enumerate(lengths, start=base):
            req = self.cls.request(k, p, o, now)
            if not self._runner.submit(req, now):
                raise ValueError(f"a {self.cls.name} backlog request was rejected: {req.reason}")
            self.live[id(req)] = req

    def done(self, req: EngineRequest) -> None:
        if req.state is not RequestState.FINISHED:
            return  # rejected: `top_up` raises
        del self.live[id(req)]
        self.finished += 1
        self.finished_tokens += req.generated

    @property
    def tokens(self) -> int:
        """Output tokens generated so far, by finished and live requests."""
        return self.finished_tokens + sum(r.generated for r in self.live.values())
