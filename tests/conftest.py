"""Test-wide settings. Hypothesis's per-example deadline is a wall-clock assertion, which a
busy shared machine breaks (a first example that imports scipy takes a second there):
correctness is what the properties check, speed is what benchmarks/ measures."""

from __future__ import annotations

from hypothesis import settings

settings.register_profile("hermes", deadline=None)
settings.load_profile("hermes")
