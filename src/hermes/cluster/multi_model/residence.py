"""Where a multi-model instance's models live and what moving one onto the GPU costs.

The warm set is the models whose weights are held in CPU memory: least recently used first,
within `cpu_memory_bytes`. A swap copies a warm model's weights from host memory over the
PCIe links, or reads a cold one from disk and pays `engine_init_s` (docs/qlm.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from hermes.cluster.multi_model.config import MultiModelConfig, Residence


def swap_seconds(
    weight_bytes: float, where: Residence, links: int, config: MultiModelConfig
) -> float:
    """Seconds to make a model with `weight_bytes` of weights active from `where`."""
    if where == "active":
        return 0.0
    if where == "warm":
        return weight_bytes / (links * config.host_to_gpu_bytes_per_s)
    return weight_bytes / (links * config.disk_bytes_per_s) + config.engine_init_s


class WarmSet:
    """Models with their weights in CPU memory, least recently used first, within a budget."""

    __slots__ = ("_models", "_weights", "budget_bytes")

    def __init__(self, weight_bytes: Mapping[str, float], budget_bytes: float) -> None:
        self._weights = weight_bytes
        self.budget_bytes = budget_bytes
        self._models: dict[str, None] = {}  # insertion order = LRU order

    def __contains__(self, model: object) -> bool:
        return model in self._models

    def __iter__(self) -> Iterator[str]:
        return iter(self._models)

    @property
    def used_bytes(self) -> float:
        return sum(self._weights[m] for m in self._models)

    def add(self, model: str) -> None:
        """List a model as warm as it is (the caller checks the budget)."""
        self._models[model] = None

    def push(self, model: str) -> None:
        """`model` was swapped out: it becomes the most recently used warm model if it fits
        the budget at all, and the least recently used ones go cold until the set fits."""
        if self._weights[model] > self.budget_bytes:
            return  # cannot be warm at all: it goes to disk
        self._models[model] = None
        while self.used_bytes > self.budget_bytes:
            del self._models[next(iter(self._models))]

    def discard(self, model: str) -> None:
        self._models.pop(model, None)
