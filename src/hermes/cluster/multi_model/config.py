"""A multi-model instance's settings and the records it hands out: the memory budgets and
bandwidths (`MultiModelConfig`), a model load in progress, a KV transfer, the counters.

Rates and times are discussed in docs/qlm.md and sourced in docs/calibration.md ("Cold
starts, model loads and swaps").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from hermes.engine.request import EngineRequest

# docs/calibration.md: host DRAM -> GPU over PCIe 4, and NVMe five times slower.
DEFAULT_HOST_TO_GPU_BYTES_PER_S = 25e9
DEFAULT_DISK_BYTES_PER_S = 5e9

Residence = Literal["active", "warm", "cold"]
SwapKind = Literal["warm", "cold"]


def _finite_non_negative(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"MultiModelConfig.{name} must be a finite number, got {value!r}")
    if value < 0:
        raise ValueError(f"MultiModelConfig.{name} must be >= 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class MultiModelConfig:
    """Memory budgets, bandwidths and throughput smoothing of a `ModelInstance`.

    `cpu_memory_bytes`: CPU memory for warm model weights; `cpu_kv_bytes`: CPU memory for the
    KV cache of evicted requests (separate budgets). `host_links`: PCIe links a transfer uses
    in parallel; None means `tp` (one per GPU). `engine_init_s` is charged on cold swaps only.
    The `throughput_*` fields set Θ's prior and memory (see `throughput.Throughput`).
    """

    cpu_memory_bytes: float
    cpu_kv_bytes: float
    host_to_gpu_bytes_per_s: float = DEFAULT_HOST_TO_GPU_BYTES_PER_S
    disk_bytes_per_s: float = DEFAULT_DISK_BYTES_PER_S
    host_links: int | None = None
    engine_init_s: float = 0.0
    throughput_prior_batch: int = 32
    throughput_prior_context_tokens: int = 1024
    throughput_prior_weight_s: float = 5.0
    throughput_memory_s: float = 60.0

    def __post_init__(self) -> None:
        for name in ("cpu_memory_bytes", "cpu_kv_bytes", "engine_init_s"):
            _finite_non_negative(name, getattr(self, name))
        for name in (
            "host_to_gpu_bytes_per_s",
            "disk_bytes_per_s",
            "throughput_prior_weight_s",
            "throughput_memory_s",
        ):
            value = getattr(self, name)
            _finite_non_negative(name, value)
            if value == 0:
                raise ValueError(f"MultiModelConfig.{name} must be > 0, got {value!r}")
        for name in ("throughput_prior_batch", "throughput_prior_context_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MultiModelConfig.{name} must be an integer >= 1, got {value!r}")
        links = self.host_links
        if links is not None and (
            isinstance(links, bool) or not isinstance(links, int) or links < 1
        ):
            raise ValueError(
                f"MultiModelConfig.host_links must be None or an integer >= 1, got {links!r}"
            )


@dataclass(frozen=True, slots=True)
class SwapInProgress:
    """A model load: `model` arrives on the GPU from `kind` memory over [start_s, end_s]."""

    model: str
    kind: SwapKind
    start_s: float
    end_s: float


@dataclass(frozen=True, slots=True)
class KvTransfer:
    """What an `evict` or a `restore` did.

    `bytes_copied` crossed PCIe over [start_s, done_s] (`seconds` long; the GPU is busy with
    it). `recompute`: the requests whose computed KV was dropped (evict: no room in the CPU KV
    budget) or comes back empty (restore), so their tokens are computed again.
    """

    requests: tuple[EngineRequest, ...]
    bytes_copied: float
    seconds: float
    start_s: float
    done_s: float
    recompute: tuple[EngineRequest, ...]


@dataclass(slots=True)
class InstanceStats:
    warm_swaps: int = 0
    cold_swaps: int = 0
    swap_s: float = 0.0
    evictions: int = 0
    recomputed: int = 0  # evicted requests whose computed KV was dropped
    kv_bytes_out: float = 0.0  # GPU -> CPU on eviction
    kv_bytes_in: float = 0.0  # CPU -> GPU on restore
    transfer_s: float = 0.0  # time the KV copies took
    steps_s: float = 0.0  # time completed engine steps took
