"""Prometheus metrics of the gateway, named as vLLM names its own (`hermes:` for `vllm:`).

Each gateway gets its own registry, so that several can live in one process (tests).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

_LATENCY = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_ACT = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._calls(self.registry)
        self._prewarm(self.registry)
        self._health(self.registry)

    def _calls(self, r: CollectorRegistry) -> None:
        """The queue, the calls' latencies and outcomes, applications and upstream errors."""
        self.waiting = Gauge(
            "hermes:num_requests_waiting", "Calls queued in the gateway", registry=r
        )
        self.running = Gauge(
            "hermes:num_requests_running", "Calls in flight on upstreams", registry=r
        )
        self.apps_active = Gauge("hermes:num_apps_active", "Applications in progress", registry=r)
        self.ttft = Histogram(
            "hermes:time_to_first_token_seconds",
            "From arrival at the gateway to the first token",
            buckets=_LATENCY,
            registry=r,
        )
        self.e2e = Histogram(
            "hermes:e2e_request_latency_seconds",
            "From arrival at the gateway to the last byte",
            buckets=_LATENCY,
            registry=r,
        )
        self.queue_time = Histogram(
            "hermes:request_queue_time_seconds",
            "Time a call waited in the gateway's queue",
            buckets=_LATENCY,
            registry=r,
        )
        self.act = Histogram(
            "hermes:app_completion_time_seconds",
            "Application completion time, first call to finish",
            ["app_type"],
            buckets=_ACT,
            registry=r,
        )
        self.requests = Counter(
            "hermes:request_success",
            "Calls answered, by finish",
            ["finished_reason"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "hermes:prompt_tokens", "Prompt tokens of answered calls", registry=r
        )
        self.generation_tokens = Counter(
            "hermes:generation_tokens", "Generated tokens of answered calls", registry=r
        )
        self.rejections = Counter(
            "hermes:request_rejections",
            "Calls refused by the gateway",
            ["reason"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "hermes:upstream_errors",
            "Upstream failures, by upstream and kind",
            ["upstream", "kind"],
            registry=r,
        )

    def _prewarm(self, r: CollectorRegistry) -> None:
        """What the prewarm actuators did."""
        self.prewarm_orders = Counter(
            "hermes:prewarm_orders",
            "Prewarm orders carried out, by target and reason (prewarm, retain)",
            ["target", "reason"],
            registry=r,
        )
        self.prewarm_actions = Counter(
            "hermes:prewarm_actions",
            "Prewarm actions (hook calls, wake-ups, adapter loads), by target and result",
            ["target", "result"],
            registry=r,
        )
        self.prewarm_on_demand = Counter(
            "hermes:prewarm_on_demand",
            "Calls that had to wake a replica or load an adapter first, by target",
            ["target"],
            registry=r,
        )
        self.prewarm_tool_starts = Counter(
            "hermes:prewarm_tool_starts",
            "Tool stages started on a prewarm target, by what they found (warm, warming, cold)",
            ["target", "state"],
            registry=r,
        )
        self.prewarm_sleeps = Counter(
            "hermes:prewarm_sleeps",
            "Idle replicas put to sleep, by upstream and result",
            ["upstream", "result"],
            registry=r,
        )

    def _health(self, r: CollectorRegistry) -> None:
        """What keeps the gateway's own state sound: background loops, the run store, the
        bounds on what clients may make the gateway hold."""
        self.task_failures = Counter(
            "hermes:background_task_failures",
            "Failures of a periodic background task (logged with a traceback; it goes on)",
            ["task"],
            registry=r,
        )
        self.store_pending = Gauge(
            "hermes:run_store_pending",
            "Finished runs acknowledged and waiting to be written to the run store",
            registry=r,
        )
        self.store_failures = Counter(
            "hermes:run_store_failures",
            "Failed attempts to write runs to the run store (each is retried)",
            registry=r,
        )
        self.store_written = Counter(
            "hermes:run_store_written", "Runs written to the run store", registry=r
        )
        self.runs_not_learned = Counter(
            "hermes:runs_not_learned",
            "Finished runs kept out of the demand graphs, by reason",
            ["reason"],
            registry=r,
        )

    def count_folded(self, read: Callable[[], int]) -> None:
        """Export `read()` (the tracker's count, read at each scrape) as the applications
        whose type was counted as 'other'."""

        class Folded(Collector):
            def collect(self) -> Iterable[CounterMetricFamily]:
                yield CounterMetricFamily(
                    "hermes:app_types_folded",
                    "Applications counted as type 'other': beyond max_app_types",
                    value=read(),
                )

        self.registry.register(Folded())

    def render(self) -> bytes:
        return generate_latest(self.registry)
