"""Prometheus metrics of the gateway, named by Prometheus's conventions: `hermes_` prefix,
base units in the name (`_seconds`), `_total` on counters (added by prometheus_client), and
labels bounded by the config (upstreams, application types up to `max_app_types`). The vLLM
style `hermes:` names of earlier releases are gone: colons are for recording rules, and an
alias would double every series. The list, with Grafana and alert rules: docs/operating.md.

Each gateway gets its own registry, so that several can live in one process (tests). The
`_created` series are off (process-wide): they double the counters' series and no dashboard
here reads them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from hermes import __version__

_LATENCY = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_ACT = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


class GatewayMetrics:
    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        build = Gauge(
            "hermes_build_info",
            "Always 1; the gateway's version",
            ["version"],
            registry=self.registry,
        )
        build.labels(__version__).set(1)
        self._calls(self.registry)
        self._prewarm(self.registry)
        self._health(self.registry)

    def _calls(self, r: CollectorRegistry) -> None:
        """The queue, the calls' latencies and outcomes, applications and upstream errors."""
        self.waiting = Gauge(
            "hermes_num_requests_waiting", "Calls queued in the gateway", registry=r
        )
        self.running = Gauge(
            "hermes_num_requests_running", "Calls in flight on upstreams", registry=r
        )
        self.apps_active = Gauge("hermes_num_apps_active", "Applications in progress", registry=r)
        self.ttft = Histogram(
            "hermes_time_to_first_token_seconds",
            "From arrival at the gateway to the first token",
            buckets=_LATENCY,
            registry=r,
        )
        self.e2e = Histogram(
            "hermes_e2e_request_latency_seconds",
            "From arrival at the gateway to the last byte",
            buckets=_LATENCY,
            registry=r,
        )
        self.queue_time = Histogram(
            "hermes_request_queue_time_seconds",
            "Time a call waited in the gateway's queue",
            buckets=_LATENCY,
            registry=r,
        )
        self.act = Histogram(
            "hermes_app_completion_time_seconds",
            "Application completion time, first call to finish",
            ["app_type"],
            buckets=_ACT,
            registry=r,
        )
        self.requests = Counter(
            "hermes_request_success",
            "Calls answered, by finish",
            ["finished_reason"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "hermes_prompt_tokens", "Prompt tokens of answered calls", registry=r
        )
        self.generation_tokens = Counter(
            "hermes_generation_tokens", "Generated tokens of answered calls", registry=r
        )
        self.rejections = Counter(
            "hermes_request_rejections",
            "Calls refused by the gateway",
            ["reason"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "hermes_upstream_errors",
            "Upstream failures, by upstream and kind",
            ["upstream", "kind"],
            registry=r,
        )

    def _prewarm(self, r: CollectorRegistry) -> None:
        """What the prewarm actuators did."""
        self.prewarm_orders = Counter(
            "hermes_prewarm_orders",
            "Prewarm orders carried out, by target and reason (prewarm, retain)",
            ["target", "reason"],
            registry=r,
        )
        self.prewarm_actions = Counter(
            "hermes_prewarm_actions",
            "Prewarm actions (hook calls, wake-ups, adapter loads), by target and result",
            ["target", "result"],
            registry=r,
        )
        self.prewarm_on_demand = Counter(
            "hermes_prewarm_on_demand",
            "Calls that had to wake a replica or load an adapter first, by target",
            ["target"],
            registry=r,
        )
        self.prewarm_tool_starts = Counter(
            "hermes_prewarm_tool_starts",
            "Tool stages started on a prewarm target, by what they found (warm, warming, cold)",
            ["target", "state"],
            registry=r,
        )
        self.prewarm_sleeps = Counter(
            "hermes_prewarm_sleeps",
            "Idle replicas put to sleep, by upstream and result",
            ["upstream", "result"],
            registry=r,
        )

    def _health(self, r: CollectorRegistry) -> None:
        """What keeps the gateway's own state sound: background loops, the run store, the
        bounds on what clients may make the gateway hold."""
        self.task_failures = Counter(
            "hermes_background_task_failures",
            "Failures of a periodic background task (logged with a traceback; it goes on)",
            ["task"],
            registry=r,
        )
        self.store_pending = Gauge(
            "hermes_run_store_pending",
            "Finished runs acknowledged and waiting to be written to the run store",
            registry=r,
        )
        self.store_failures = Counter(
            "hermes_run_store_failures",
            "Failed attempts to write runs to the run store (each is retried)",
            registry=r,
        )
        self.store_written = Counter(
            "hermes_run_store_written", "Runs written to the run store", registry=r
        )
        self.runs_not_learned = Counter(
            "hermes_runs_not_learned",
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
                    "hermes_app_types_folded",
                    "Applications counted as type 'other': beyond max_app_types",
                    value=read(),
                )

        self.registry.register(Folded())

    def count_in_flight(self, read: Callable[[], Iterable[tuple[str, int]]]) -> None:
        """Export `read()` (per upstream: calls in flight there, read at each scrape)."""

        class InFlight(Collector):
            def collect(self) -> Iterable[GaugeMetricFamily]:
                family = GaugeMetricFamily(
                    "hermes_upstream_requests_running",
                    "Calls in flight on each upstream (granted a slot, not yet ended)",
                    labels=["upstream"],
                )
                for name, n in read():
                    family.add_metric([name], n)
                yield family

        self.registry.register(InFlight())

    def render(self) -> bytes:
        return generate_latest(self.registry)
