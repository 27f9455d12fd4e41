"""The same arrivals fed to two gateways, and the order each grants them in: calls sent one by
one (each queued before the next) while a `BlockingUpstream` holds the only slot, then the
upstream opened. Used to check that the gateway on Ray grants in the single-process order."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx

from hermes.testing.blocking_upstream import BlockingUpstream

__all__ = ["ARRIVALS", "grant_order", "wait_until"]

# (first message, headers). Under EDF the deadlines order them (seconds apart, so that arrival
# jitter cannot swap two); rt calls go ahead of best-effort ones, which still get their
# minimum share of the grants.
ARRIVALS: list[tuple[str, dict[str, str]]] = [
    ("blocker", {}),
    *[
        (
            f"c{i}",
            {
                "x-hermes-app-id": f"app{i}",
                "x-hermes-deadline-ms": str(1000 * (60 - 7 * i % 50)),
                **({"x-hermes-slo-class": "rt"} if i % 4 == 0 else {}),
            },
        )
        for i in range(1, 13)
    ],
]


def wait_until(cond: Callable[[], bool], timeout_s: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g} s: {what or 'condition'}")
        time.sleep(0.01)


def grant_order(
    base: str,
    queued: Callable[[], int],
    upstream: BlockingUpstream,
    arrivals: list[tuple[str, dict[str, str]]] = ARRIVALS,
) -> list[str]:
    """Send `arrivals` to the gateway at `base` (`queued()`: how many calls wait there), open
    the upstream, and return the order the calls reached it in; every call must get 200."""
    answers: list[int] = []

    def send(content: str, headers: dict[str, str]) -> None:
        body = {"model": upstream.model, "messages": [{"role": "user", "content": content}]}
        r = httpx.post(base + "/v1/chat/completions", json=body, headers=headers, timeout=120)
        answers.append(r.status_code)

    threads = []
    for n, (content, headers) in enumerate(arrivals):
        t = threading.Thread(target=send, args=(content, headers))
        t.start()
        threads.append(t)

        # The first call runs (it holds the slot); the others wait, in the order sent.
        def ready(n: int = n) -> bool:
            return queued() == n and len(upstream.arrived) == 1

        wait_until(ready, what=f"call {n} queued")
    upstream.open()
    for t in threads:
        t.join(120)
    if answers != [200] * len(arrivals):
        raise AssertionError(f"not every call was answered 200: {answers}")
    return list(upstream.arrived)
