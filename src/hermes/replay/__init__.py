"""`hermes replay`: recorded application runs driven through a live gateway. `planning` turns
runs into the requests their applications would send (pure); `driver` sends them and measures
the applications' completion times from outside."""

from hermes.replay.driver import ReplayError, ReplaySettings, replay
from hermes.replay.planning import AppPlan, LLMStep, ToolStep, plan, prompt_text

__all__ = [
    "AppPlan",
    "LLMStep",
    "ReplayError",
    "ReplaySettings",
    "ToolStep",
    "plan",
    "prompt_text",
    "replay",
]
