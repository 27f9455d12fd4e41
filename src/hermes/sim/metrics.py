"""Summaries of a simulation: latency distributions, throughput, goodput and SLO attainment.

Percentiles use the inverted empirical CDF (the smallest observed value with at least q of the
mass at or below it), with or without weights, so a reported p99 is a latency that happened.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import ArrayLike

from hermes.cluster.tool_pool import ToolPool
from hermes.engine.interface import LLMEngine
from hermes.engine.request import EngineRequest, RequestState

QUANTILES = (50, 90, 95, 99)

Distribution = dict[str, float | int | None]


def distribution(values: ArrayLike, weights: ArrayLike | None = None) -> Distribution:
    """count, mean, p50, p90, p95, p99 and max of `values` (None for each when empty)."""
    v = np.asarray(values, dtype=np.float64)
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    if w is not None and w.shape != v.shape:
        raise ValueError(f"distribution: {w.shape} weights for {v.shape} values")
    total = float(v.size if w is None else w.sum())
    out: Distribution = {"count": int(v.size if w is None else round(total))}
    if v.size == 0 or total <= 0:
        out.update({"mean": None, **{f"p{q}": None for q in QUANTILES}, "max": None})
        return out
    out["mean"] = float(np.average(v, weights=w))
    qs = np.percentile(v, QUANTILES, weights=w, method="inverted_cdf")
    out.update({f"p{q}": float(x) for q, x in zip(QUANTILES, qs, strict=True)})
    out["max"] = float(v.max() if w is None else v[w > 0].max())  # zero weight: never seen
    return out


@dataclass(frozen=True, slots=True)
class SLO:
    """Per-request latency objectives; None means not part of the objective."""

    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None

    def met(self, r: EngineRequest) -> bool:
        if r.state is not RequestState.FINISHED:
            return False
        assert r.first_token_s is not None
        assert r.finish_s is not None
        if self.ttft_s is not None and r.first_token_s - r.arrival_s > self.ttft_s:
            return False
        if self.e2e_s is not None and r.finish_s - r.arrival_s > self.e2e_s:
            return False
        return not (self.tpot_s is not None and _tpot(r) > self.tpot_s)


def _tpot(r: EngineRequest) -> float:
    assert r.finish_s is not None
    assert r.first_token_s is not None
    return (r.finish_s - r.first_token_s) / (r.generated - 1) if r.generated > 1 else 0.0


def request_summary(
    requests: Sequence[EngineRequest],
    itl: tuple[ArrayLike, ArrayLike],
    slo: SLO | None = None,
) -> dict[str, object]:
    """Counts and latency distributions over every request a simulation saw.

    `itl` is (gap values, weights) over all inter-token gaps; tpot is per request
    (decode time / (output tokens - 1), requests of one output token excluded).
    """
    done = [r for r in requests if r.state is RequestState.FINISHED]
    rejected = [r for r in requests if r.state is RequestState.REJECTED]
    ttft = [r.first_token_s - r.arrival_s for r in done if r.first_token_s is not None]
    e2e = [r.finish_s - r.arrival_s for r in done if r.finish_s is not None]
    queued = [r.first_scheduled_s - r.arrival_s for r in done if r.first_scheduled_s is not None]
    tpot = [_tpot(r) for r in done if r.generated > 1]
    start = min((r.arrival_s for r in requests), default=0.0)
    end = max((r.finish_s for r in done if r.finish_s is not None), default=start)
    span = end - start
    output_tokens = sum(r.generated for r in done)
    out: dict[str, object] = {
        "requests": len(requests),
        "completed": len(done),
        "rejected": len(rejected),
        "unfinished": len(requests) - len(done) - len(rejected),
        "rejected_reasons": _reason_counts(rejected),
        "ttft": distribution(ttft),
        "tpot": distribution(tpot),
        "itl": distribution(*itl),
        "e2e": distribution(e2e),
        "queueing": distribution(queued),
        "preemptions": sum(r.preemptions for r in requests),
        "preempted_requests": sum(1 for r in requests if r.preemptions),
        "makespan_s": span,
        "throughput_rps": len(done) / span if span > 0 else None,
        "output_tokens_per_s": output_tokens / span if span > 0 else None,
    }
    if slo is not None:
        met = sum(1 for r in done if slo.met(r))
        judged = len(done) + len(rejected)
        out["slo"] = {"ttft_s": slo.ttft_s, "tpot_s": slo.tpot_s, "e2e_s": slo.e2e_s}
        out["slo_attainment"] = met / judged if judged else None
        out["goodput_rps"] = met / span if span > 0 else None
    return out


def _reason_counts(rejected: Sequence[EngineRequest]) -> dict[str, int]:
    """Rejections grouped by the rule they broke (the text before the numbers)."""
    counts: dict[str, int] = {}
    for r in rejected:
        reason = r.reason or "unknown"
        key = (
            "exceeds max_model_len"
            if "max_model_len" in reason
            else "larger than the KV pool"
            if "KV blocks" in reason
            else reason
        )
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


# --- Applications, engines and tool pools (Hermes study; any study) ---------------------------


class AppOutcome(Protocol):
    """What the application figures read of one application's run."""

    arrival_s: float
    finish_s: float | None
    failed: str | None
    cold_wait_s: float

    @property
    def app_type(self) -> str: ...

    @property
    def run_id(self) -> str: ...


def app_figures(apps: Sequence[AppOutcome]) -> dict[str, object]:
    """Completion time (ACT) overall and per application type, failures, and the cold-start
    wait on each application's critical path (per stage its longest)."""
    done = [a for a in apps if a.finish_s is not None and a.failed is None]
    failed = [a for a in apps if a.failed is not None]
    act = [a.finish_s - a.arrival_s for a in done if a.finish_s is not None]
    by_type: dict[str, list[float]] = {}
    for a, t in zip(done, act, strict=True):
        by_type.setdefault(a.app_type, []).append(t)
    return {
        "apps": len(apps),
        "completed": len(done),
        "failed": len(failed),
        "failures": [f"{a.run_id}: {a.failed}" for a in failed[:20]],
        "act": distribution(act),
        "act_by_app": {k: distribution(v) for k, v in sorted(by_type.items())},
        "cold_wait": distribution([a.cold_wait_s for a in done]),
        "cold_wait_total_s": float(sum(a.cold_wait_s for a in done)),
    }


def engine_figures(name: str, engine: LLMEngine, requests: int, span: float) -> dict[str, object]:
    """One engine replica: work done, utilisation and KV use over `span` seconds."""
    s = engine.stats
    total = engine.kv_total_blocks
    return {
        "name": name,
        "model": engine.cost.name,
        "requests": requests,
        "iterations": s.iterations,
        "utilisation": s.busy_s / span if span > 0 else None,
        "kv_mean_use": s.kv_block_s / (total * span) if span > 0 and total else None,
        "kv_peak_use": s.peak_blocks / total if total else None,
        "kv_blocks": total,
        "prefill_tokens": s.prefill_tokens,
        "decode_tokens": s.decode_tokens,
        "preemptions": s.preemptions,
    }


def tool_figures(pool: ToolPool, cold_wait_s: float, now: float) -> dict[str, object]:
    """One tool backend's calls, cold starts and instance-seconds up to `now`."""
    return {
        "calls": pool.calls_started,
        "cold_starts": pool.cold_starts,
        "cold_wait_s": cold_wait_s,
        "warm_instance_s": pool.warm_instance_seconds(now),
        "busy_instance_s": pool.busy_instance_seconds(now),
        "prewarms": pool.prewarms,
        "prewarms_unused": pool.prewarms_unused,
    }


# --- SLO classes: latency, attainment and throughput per class (BROS study; any study) ---------


def slo_class_figures(
    requests: Sequence[EngineRequest],
    ttft_slo_s: float,
    tpot_slo_s: float,
    start_s: float,
    end_s: float,
    horizon_s: float,
    label: str = "rt",
) -> dict[str, float | int | None]:
    """Latency and SLO attainment of a class's requests that arrived in [start_s, end_s).

    A request meets its SLO if it finished with TTFT <= ttft_slo_s and TPOT <= tpot_slo_s
    (TPOT = (finish - first token) / (output - 1); a one-token answer is judged on TTFT
    alone). One unfinished at `horizon_s` misses it and enters the TTFT and end-to-end figures
    at its age then (a lower bound). Counts are keyed by `label`; see docs/bros.md.
    """
    ttft: list[float] = []
    tpot: list[float] = []
    e2e: list[float] = []
    counted = finished = met = ttft_met = tpot_met = 0
    for r in requests:
        if not start_s <= r.arrival_s < end_s:
            continue
        counted += 1
        first = r.first_token_s
        ttft.append((horizon_s if first is None else first) - r.arrival_s)
        ok_ttft = first is not None and first - r.arrival_s <= ttft_slo_s
        ttft_met += ok_ttft
        if r.state is not RequestState.FINISHED or r.finish_s is None or first is None:
            e2e.append(horizon_s - r.arrival_s)
            continue
        finished += 1
        e2e.append(r.finish_s - r.arrival_s)
        ok_tpot = True
        if r.output_tokens > 1:
            t = (r.finish_s - first) / (r.output_tokens - 1)
            tpot.append(t)
            ok_tpot = t <= tpot_slo_s
        tpot_met += ok_tpot
        met += ok_ttft and ok_tpot
    out: dict[str, float | int | None] = {f"{label}_requests": counted}
    out[f"{label}_finished"] = finished
    out[f"{label}_unfinished"] = counted - finished
    for name, values in (("ttft", ttft), ("tpot", tpot), ("e2e", e2e)):
        d = distribution(values)
        out[f"{name}_mean_s"] = d["mean"]
        out[f"{name}_p99_s"] = d["p99"]
    share = (lambda k: k / counted) if counted else (lambda k: None)
    out["slo_attainment"] = share(met)
    out["ttft_attainment"] = share(ttft_met)
    out["tpot_attainment"] = share(tpot_met)
    return out


def class_throughput(
    tokens: int, finished: int, span_s: float, replicas: int = 1, label: str = "be"
) -> dict[str, float]:
    """A class's output tokens and finished requests per second over `span_s`, times
    `replicas` identical engines (0 over an empty or unbounded span)."""
    if not (span_s > 0 and np.isfinite(span_s)):
        return {f"{label}_tokens_per_s": 0.0, f"{label}_requests_per_s": 0.0}
    return {
        f"{label}_tokens_per_s": replicas * tokens / span_s,
        f"{label}_requests_per_s": replicas * finished / span_s,
    }


# --- Completion SLOs by class, and multi-model instances (QLM study; any study) -------------


def completion_slo_met(arrival_s: float, slo_s: float, finish_s: float | None) -> bool:
    """A request with an SLO on completion meets it by finishing within `slo_s` of arriving."""
    return finish_s is not None and finish_s - arrival_s <= slo_s


def attainment_by_class(
    outcomes: Sequence[tuple[str, bool]],
) -> tuple[float | None, dict[str, float]]:
    """The share of (class, met) outcomes that met their SLO, overall (None when there are
    none) and per class (classes sorted by name)."""
    by_class: dict[str, list[bool]] = {}
    for slo_class, met in outcomes:
        by_class.setdefault(slo_class, []).append(met)
    every = [m for ms in by_class.values() for m in ms]
    overall = float(np.mean(every)) if every else None
    return overall, {c: float(np.mean(ms)) for c, ms in sorted(by_class.items())}


@dataclass(frozen=True, slots=True)
class InstanceFigures:
    """One serving instance's model swaps, the time they took, and its busy share."""

    warm_swaps: int
    cold_swaps: int
    swap_s: float
    utilisation: float


def pooled_instances(figures: Sequence[InstanceFigures]) -> InstanceFigures:
    """A cluster's figures: swaps and swap seconds summed over its instances, utilisation
    their mean (0 with no instance)."""
    return InstanceFigures(
        sum(f.warm_swaps for f in figures),
        sum(f.cold_swaps for f in figures),
        sum(f.swap_s for f in figures),
        float(np.mean([f.utilisation for f in figures])) if figures else 0.0,
    )
