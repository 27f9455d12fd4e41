"""The scheduling-policy interface shared by the simulator and the gateway.

A policy turns what it knows about a call (and the application it belongs to) into an engine
priority: lower runs first. It is pure: time arrives as `now`.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class CallInfo:
    """One LLM call as a policy sees it at submission."""

    call_id: Hashable
    arrival_s: float
    prompt_tokens: int
    app_id: Hashable | None = None  # None for a plain request outside any application
    app_arrival_s: float | None = None


class Policy(Protocol):
    name: str

    def priority(self, call: CallInfo, now: float) -> float: ...
