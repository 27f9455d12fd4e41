"""Finished runs on their way to the run store: acknowledged once queued here, written from a
thread, retried with backoff until the store takes them, flushed on shutdown.

The store's troubles (another process holding its lock, a full disk, a read-only file) used to
lose runs: the application was forgotten before its write, which ran on the event loop (a
locked store stalled every request for its busy timeout) and failed the finish with a 500.
Now a finish is acknowledged once its run is in this queue, the queue is bounded (a full one
refuses the finish with 503, and the application stays, so a retry loses nothing), and a
failing store shows in /healthz and /metrics while the writer keeps trying.

What a queued run survives: any store error, for as long as the gateway runs, and an orderly
shutdown (the queue is flushed for up to `flush_s`; what the store still refuses then is logged
as JSON lines, one per run, that `hermes learn --store` takes back). What it does not survive:
the gateway process being killed while the run waits here, which is milliseconds when the
store is healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Iterable
from typing import Protocol

from hermes.core.runs import AppRun, run_to_dict
from hermes.gateway.metrics import GatewayMetrics

log = logging.getLogger("hermes.gateway")

BATCH = 256  # runs per transaction
FLUSH_S = 10.0  # how long shutdown waits for the store to take what is queued
BACKOFF_S = (0.05, 5.0)  # first and longest wait between failed writes


class RunWriter(Protocol):
    """What the outbox needs of a store (`RunStore`, or a test's stand-in)."""

    def add_marked(self, runs: Iterable[tuple[AppRun, bool]]) -> int: ...


class StoreBehindError(Exception):
    """The outbox is full: the store has not taken runs for a while."""


class RunOutbox:
    def __init__(
        self,
        store: RunWriter,
        metrics: GatewayMetrics,
        limit: int,
        backoff_s: tuple[float, float] = BACKOFF_S,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.limit = limit
        self.backoff_s = backoff_s
        self.last_error: str | None = None  # the latest write's failure, until one succeeds
        self._pending: deque[tuple[AppRun, bool]] = deque()
        self._wake = asyncio.Event()  # a run queued, or shutdown begun
        self._closed = asyncio.Event()  # shutdown begun: a backoff ends early
        self._closing = False
        self._deadline = float("inf")
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def offer(self, run: AppRun, finished: bool = True, force: bool = False) -> bool:
        """Queue `run` for the store; False (nothing queued) when the queue is full, unless
        `force` (shutdown: the applications in progress, bounded by `max_apps`)."""
        if len(self._pending) >= self.limit and not force:
            return False
        self._pending.append((run, finished))
        self.metrics.store_pending.set(len(self._pending))
        self._wake.set()
        return True

    def problem(self) -> str | None:
        """Why the store is degraded, or None."""
        n = len(self._pending)
        full = n >= self.limit
        if self.last_error is None and not full:
            return None
        why = "" if self.last_error is None else f"writes fail ({self.last_error}); "
        room = ", the most the outbox holds: finishes get 503" if full else ""
        return f"run store: {why}{n} runs wait to be written{room}"

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._write_loop())

    async def close(self, flush_s: float | None = None) -> None:
        """Write what is queued, trying for up to `flush_s` (default FLUSH_S); log what the
        store refused."""
        self._closing = True
        self._deadline = time.monotonic() + (FLUSH_S if flush_s is None else flush_s)
        self._wake.set()
        self._closed.set()
        if self._task is not None:
            # Not cancelled: a write in its thread would go on and commit what the outbox
            # still holds. The loop ends itself once empty or past the deadline.
            await self._task
        if self._pending:
            log.error(
                "run store: %d runs could not be written (%s); they follow, one JSON line "
                "each, for `hermes learn RUNS --store`",
                len(self._pending),
                self.last_error,
            )
            for run, _ in self._pending:
                log.error("%s", json.dumps(run_to_dict(run), separators=(",", ":")))

    async def _write_loop(self) -> None:
        delay = self.backoff_s[0]
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._pending[i] for i in range(min(BATCH, len(self._pending)))]
            try:
                await asyncio.to_thread(self.store.add_marked, batch)
            except Exception as e:  # locked, full, read-only, closed: all retried
                self.metrics.store_failures.inc()
                # Every failure: the backoff (up to backoff_s[1]) bounds how many lines.
                log.warning(
                    "run store: a write of %d runs failed (%s); %d wait; retrying in %.1f s",
                    len(batch),
                    e,
                    len(self._pending),
                    delay,
                )
                self.last_error = f"{type(e).__name__}: {e}"
                if self._closing:
                    delay = min(delay, self._deadline - time.monotonic())
                    if delay <= 0:
                        return
                await self._sleep(delay)
                delay = min(2 * delay, self.backoff_s[1])
                continue
            for _ in batch:
                self._pending.popleft()
            self.metrics.store_pending.set(len(self._pending))
            self.metrics.store_written.inc(len(batch))
            if self.last_error is not None:
                log.warning("run store: writes succeed again")
            self.last_error = None
            delay = self.backoff_s[0]

    async def _sleep(self, delay: float) -> None:
        """Back off; a shutdown that begins meanwhile tries again at once."""
        if self._closing:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closed.wait(), delay)
