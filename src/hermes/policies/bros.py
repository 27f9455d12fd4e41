"""BROS's per-iteration pace lives with its engine (`engine.rt_pace`); re-exported here for
the policy side. Each SLO class's engine priority is `policies.slo_class.class_priority`."""

from __future__ import annotations

from hermes.engine.rt_pace import AdaptiveCap, BrosOptions, next_deadline

__all__ = ["AdaptiveCap", "BrosOptions", "next_deadline"]
