"""BROS's per-iteration pace lives with its engine (`engine.rt_pace`); re-exported here for
the policy side, with the engine priority of each SLO class."""

from __future__ import annotations

from hermes.engine.rt_pace import AdaptiveCap, BrosOptions, next_deadline

__all__ = ["AdaptiveCap", "BrosOptions", "class_priority", "next_deadline"]


def class_priority(policy: str, slo_class: str) -> float:
    """The engine priority a request of `slo_class` gets under `policy`: RT first under
    `vllm-priority`, everything equal (arrival order) otherwise."""
    return 1.0 if policy == "vllm-priority" and slo_class == "be" else 0.0
