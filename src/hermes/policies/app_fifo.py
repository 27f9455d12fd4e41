"""`parrot`: application-level first in, first out: an application's calls all carry its
arrival time, so an earlier application's later stages overtake a newer one's first."""

from __future__ import annotations

from hermes.policies.base import AppView, BasePolicy, CallInfo


class AppFIFO(BasePolicy):
    name = "parrot"

    def priority(self, call: CallInfo, app: AppView | None, now: float) -> float:
        return call.arrival_s if app is None else app.arrival_s
