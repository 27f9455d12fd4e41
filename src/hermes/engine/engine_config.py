"""Engine knobs, named as vLLM names them, validated on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

PreemptionMode = Literal["recompute", "swap"]

# PCIe 4.0 x16 host<->device copies run at ~25 GB/s in practice (docs/calibration.md,
# "Cold starts, model loads and swaps").
DEFAULT_SWAP_BYTES_PER_S = 25e9
# vLLM's default swap space: 4 GiB of pinned CPU memory per GPU.
DEFAULT_SWAP_SPACE_BYTES_PER_GPU = 4 * 2**30


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Defaults follow vLLM V1 online serving: a 2,048-token budget and 256 sequences.

    `num_gpu_blocks=None` sizes the pool from the cost model's memory figures at
    `gpu_memory_utilization`, as vLLM's profiling run does; `num_cpu_blocks=None` takes
    `swap_space_bytes_per_gpu` of CPU memory per GPU.
    """

    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    max_model_len: int = 4096
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    num_gpu_blocks: int | None = None
    preemption_mode: PreemptionMode = "recompute"
    swap_space_bytes_per_gpu: float = DEFAULT_SWAP_SPACE_BYTES_PER_GPU
    num_cpu_blocks: int | None = None
    swap_bytes_per_s: float = DEFAULT_SWAP_BYTES_PER_S
    # vLLM V1 caches prefixes by default and preempts by recompute only: None means on
    # unless preemption is by swap.
    enable_prefix_caching: bool | None = None
    # A CPU tier for the prefix cache (bytes of CPU memory for evicted cached blocks); 0: none.
    cpu_kv_cache_bytes: float = 0.0

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_model_len", "block_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"EngineConfig.{name} must be an integer >= 1, got {value!r}")
        for name in ("num_gpu_blocks", "num_cpu_blocks"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise ValueError(
                    f"EngineConfig.{name} must be an integer >= 0 or None, got {value!r}"
                )
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(
                "EngineConfig.gpu_memory_utilization must be in (0, 1], "
                f"got {self.gpu_memory_utilization!r}"
            )
        if self.preemption_mode not in ("recompute", "swap"):
            raise ValueError(
                "EngineConfig.preemption_mode must be 'recompute' or 'swap', "
                f"got {self.preemption_mode!r}"
            )
        for name in ("swap_space_bytes_per_gpu", "swap_bytes_per_s", "cpu_kv_cache_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"EngineConfig.{name} must be finite and >= 0, got {value!r}")
        if self.swap_bytes_per_s == 0:
            raise ValueError("EngineConfig.swap_bytes_per_s must be > 0")
        if self.enable_prefix_caching and self.preemption_mode == "swap":
            raise ValueError(
                "EngineConfig: prefix caching preempts by recompute (as vLLM V1); "
                "preemption_mode 'swap' needs enable_prefix_caching false"
            )

    @property
    def prefix_caching(self) -> bool:
        if self.enable_prefix_caching is None:
            return self.preemption_mode == "recompute"
        return self.enable_prefix_caching
