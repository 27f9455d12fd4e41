"""Request streams of an SLO class in a simulation, and what is reported of them: latency,
attainment of each stream's SLOs, and attainment per SLO class over every stream."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from hermes.engine.request import EngineRequest, RequestState
from hermes.sim.metrics import attainment_by_class, completion_slo_met, distribution


@dataclass(slots=True)
class StreamSpec:
    """A stream's class and SLOs, and its requests as they arrive."""

    name: str
    slo_class: str = "be"  # "rt" or "be"
    model: str | None = None
    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None
    requests: list[EngineRequest] = field(default_factory=list)

    def met(self, r: EngineRequest) -> bool | None:
        """Whether `r` met every SLO the stream has (None: it has none)."""
        if self.ttft_s is None and self.tpot_s is None and self.e2e_s is None:
            return None
        if r.state is not RequestState.FINISHED or r.finish_s is None:
            return False
        first = r.first_token_s
        if self.ttft_s is not None and (first is None or first - r.arrival_s > self.ttft_s):
            return False
        slow = (
            self.tpot_s is not None
            and r.output_tokens > 1
            and first is not None
            and (r.finish_s - first) / (r.output_tokens - 1) > self.tpot_s
        )
        if slow:
            return False
        return self.e2e_s is None or completion_slo_met(r.arrival_s, self.e2e_s, r.finish_s)


def _figures(spec: StreamSpec, now: float) -> dict[str, object]:
    reqs = spec.requests
    done = [r for r in reqs if r.state is RequestState.FINISHED and r.finish_s is not None]
    ttft = [r.first_token_s - r.arrival_s for r in done if r.first_token_s is not None]
    tpot = [
        (r.finish_s - r.first_token_s) / (r.output_tokens - 1)
        for r in done
        if r.first_token_s is not None and r.finish_s is not None and r.output_tokens > 1
    ]
    e2e = [r.finish_s - r.arrival_s for r in done if r.finish_s is not None]
    verdicts = [spec.met(r) for r in reqs]
    judged = [v for v in verdicts if v is not None]
    return {
        "slo_class": spec.slo_class,
        "model": spec.model,
        "slo": {"ttft_s": spec.ttft_s, "tpot_s": spec.tpot_s, "e2e_s": spec.e2e_s},
        "requests": len(reqs),
        "finished": len(done),
        "unfinished_at_end": sum(1 for r in reqs if not r.done),
        "ttft": distribution(ttft),
        "tpot": distribution(tpot),
        "e2e": distribution(e2e),
        "slo_attainment": sum(judged) / len(judged) if judged else None,
        "output_tokens": sum(r.generated for r in reqs),
        "end_s": now,
    }


def stream_results(
    streams: Sequence[StreamSpec], default_attainment: object, now: float
) -> dict[str, object]:
    """`streams` (figures per stream) and `slo_attainment` per SLO class over every stream's
    requests that have an SLO; the plain requests' share under the global SLO, if one was
    set, stays as class `default`. Nothing when there is no stream."""
    if not streams:
        return {}
    outcomes: list[tuple[str, bool]] = []
    for spec in streams:
        for r in spec.requests:
            verdict = spec.met(r)
            if verdict is not None:
                outcomes.append((spec.slo_class, verdict))
    _, by_class = attainment_by_class(outcomes)
    attainment: dict[str, object] = dict(by_class)
    if isinstance(default_attainment, float):
        attainment["default"] = default_attainment
    return {
        "streams": {spec.name: _figures(spec, now) for spec in streams},
        "slo_attainment": attainment,
    }
