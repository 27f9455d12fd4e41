"""How applications end: by a client's finish, by idling past `app_idle_timeout_s`, or with
the gateway's shutdown (stored unfinished).

An application is forgotten only once its run is safely queued for the run store (`outbox`):
when the outbox is full, a finish is refused (503, the application stays and the client may
retry) and an idle application waits for the next round of the reaper.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from hermes.core.runs import AppRun
from hermes.gateway.apps import AppTracker, GatewayApp
from hermes.gateway.metrics import GatewayMetrics
from hermes.gateway.outbox import RunOutbox
from hermes.policies.base import Policy

log = logging.getLogger("hermes.gateway")


class AppFinisher:
    def __init__(
        self,
        tracker: AppTracker,
        policy: Policy,
        metrics: GatewayMetrics,
        on_run: Callable[[AppRun], None] | None,
    ) -> None:
        self.tracker = tracker
        self.policy = policy
        self.metrics = metrics
        self.on_run = on_run  # learning
        self.outbox: RunOutbox | None = None  # the store's queue, when there is a store
        metrics.count_folded(lambda: tracker.folded)

    def finish(self, app: GatewayApp, now: float) -> bool:
        """End `app`: its run queued for the store, then learned. False, and `app` kept, when
        the store's outbox is full."""
        # A call without headers shows no application structure to learn from; storing one
        # run per plain call would only fill the store.
        run = None if app.ephemeral else self.tracker.run_of(app)
        if run is not None and self.outbox is not None and not self.outbox.offer(run):
            return False
        self.tracker.forget(app)
        act = max(0.0, app.last_seen_s - app.view.arrival_s)
        self.metrics.act.labels(app.app_type).observe(act)
        if not app.ephemeral:
            log.info(
                "application %s (%s) finished: %d stages, %d calls, %.2f s",
                app.app_id[:256],
                app.app_type,
                len(app.stages),
                app.calls,
                act,
            )
        self.policy.on_done(app.view, now)
        if run is not None and self.on_run is not None:
            self.on_run(run)
        return True

    def reap(self, now: float, timeout_s: float) -> int:
        """Finish the applications idle for `timeout_s`; how many are left for later because
        the store is behind."""
        held = 0
        for app in self.tracker.idle(now, timeout_s):
            held += not self.finish(app, now)
        self.metrics.apps_active.set(len(self.tracker.apps))
        return held

    def store_unfinished(self) -> int:
        """At shutdown: queue the applications still in progress as unfinished runs (not
        learned); how many."""
        if self.outbox is None:
            return 0
        n = 0
        for app in list(self.tracker):
            run = None if app.ephemeral else self.tracker.run_of(app)
            if run is not None:
                n += self.outbox.offer(run, finished=False, force=True)
        if n:
            log.info("run store: %d applications in progress stored as unfinished runs", n)
        return n
