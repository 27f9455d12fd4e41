"""`vtc`: virtual token counter fairness between applications (Sheng et al., OSDI 2024).

Each application's counter is the tokens served to it; the least-served goes first. A newcomer
starts level with the least-served active application, so it cannot claim the service it
missed before arriving.
"""

from __future__ import annotations

from collections.abc import Hashable

from hermes.policies.base import AppView, BasePolicy, CallInfo


class VTC(BasePolicy):
    name = "vtc"
    dynamic = True
    view_ranked = True  # tokens served, over a lift fixed at arrival

    def __init__(self) -> None:
        self._lift: dict[Hashable, int] = {}
        self._active: dict[Hashable, AppView] = {}

    def on_arrival(self, app: AppView, now: float) -> None:
        floor = min((self._counter(a) for a in self._active.values()), default=0)
        self._lift[app.app_id] = floor
        self._active[app.app_id] = app

    def on_done(self, app: AppView, now: float) -> None:
        self._active.pop(app.app_id, None)
        self._lift.pop(app.app_id, None)

    def _counter(self, app: AppView) -> int:
        return self._lift.get(app.app_id, 0) + app.served_tokens

    def priority(self, call: CallInfo, app: AppView | None, now: float) -> float:
        return call.arrival_s if app is None else float(self._counter(app))
