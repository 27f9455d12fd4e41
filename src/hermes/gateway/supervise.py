"""Periodic background tasks that outlive their failures.

A loop that lets one exception escape dies silently: asyncio keeps the exception in the task
until someone awaits it, which is at shutdown. The idle-application reaper died so after one
failed store write, and no application was finished by timeout again. Here a failure is logged
with its traceback, counted in `hermes_background_task_failures_total{task}`, and the loop goes
on at its next period.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable

from prometheus_client import Counter

log = logging.getLogger("hermes.gateway")


async def every(
    name: str,
    period_s: Callable[[], float] | float,
    fn: Callable[[], Awaitable[None] | None],
    failures: Counter,
) -> None:
    """Run `fn` every `period_s` seconds (a callable: read before each sleep) until cancelled;
    its failures are logged and counted under `name`, never fatal."""
    while True:
        await asyncio.sleep(period_s() if callable(period_s) else period_s)
        try:
            result = fn()
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            raise
        except Exception:
            failures.labels(name).inc()
            log.exception("background task %r failed; it runs again in its next period", name)
