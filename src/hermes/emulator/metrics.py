"""The emulator's /metrics: the few vLLM series a gateway reads to admit calls (running and
waiting requests, generated tokens, KV-cache use), named and typed as vLLM names them, so that
the gateway's admission feed (`gateway.admission_feed`) reads an emulated engine as it reads
vLLM."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hermes.emulator.engine import EmulatedEngine

_SERIES = (
    ("vllm:num_requests_running", "gauge", "Number of requests in model execution batches."),
    ("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed."),
    ("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage."),
    ("vllm:generation_tokens", "counter", "Number of generation tokens processed."),
)


def metrics_text(engines: Mapping[str, EmulatedEngine]) -> str:
    """Prometheus text for each engine behind `engines` (one per engine, named by its first
    model)."""
    seen: dict[int, tuple[str, EmulatedEngine]] = {}
    for name, engine in engines.items():
        seen.setdefault(id(engine), (name, engine))
    values: dict[str, list[tuple[str, float]]] = {name: [] for name, _, _ in _SERIES}
    for name, engine in seen.values():
        running = len(engine.engine.running)
        values["vllm:num_requests_running"].append((name, running))
        values["vllm:num_requests_waiting"].append((name, max(0, engine.outstanding - running)))
        values["vllm:kv_cache_usage_perc"].append((name, engine.engine.kv_used_fraction))
        values["vllm:generation_tokens"].append((name, engine.generated_tokens))
    lines = []
    for series, kind, help_ in _SERIES:
        lines += [f"# HELP {series} {help_}", f"# TYPE {series} {kind}"]
        sample = series + ("_total" if kind == "counter" else "")
        for model, value in values[series]:
            label = model.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
            lines.append(f'{sample}{{model_name="{label}"}} {float(value)!r}')
    return "\n".join(lines) + "\n"
