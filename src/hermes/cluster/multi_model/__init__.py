"""Multi-model LLM instances (QLM): one active model on the GPU, others warm in CPU memory or
cold on disk; model swaps, KV eviction to CPU memory, busy time and throughput. docs/qlm.md
describes the model; `instance.ModelInstance` is the instance."""

from hermes.cluster.multi_model.config import (
    DEFAULT_DISK_BYTES_PER_S,
    DEFAULT_HOST_TO_GPU_BYTES_PER_S,
    InstanceStats,
    KvTransfer,
    MultiModelConfig,
    Residence,
    SwapInProgress,
    SwapKind,
)
from hermes.cluster.multi_model.instance import ModelInstance

__all__ = [
    "DEFAULT_DISK_BYTES_PER_S",
    "DEFAULT_HOST_TO_GPU_BYTES_PER_S",
    "InstanceStats",
    "KvTransfer",
    "ModelInstance",
    "MultiModelConfig",
    "Residence",
    "SwapInProgress",
    "SwapKind",
]
