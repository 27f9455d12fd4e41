"""The servers' fast path: the event loop on uvloop and HTTP parsed by httptools, both
dependencies of the package where wheels exist (docs/benchmarks.md: more calls per second and
less CPU per call through the gateway). Where either cannot be imported, the pure-Python path
runs: asyncio's own loop, and uvicorn's h11 parser (uvicorn's "auto" picks httptools when it
imports)."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Coroutine
from typing import Any


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules, a broken one
        return False


def run(coro: Coroutine[Any, Any, None]) -> None:
    """Run `coro` to the end on uvloop when it imports, else on asyncio's loop."""
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def path() -> str:
    """The event loop and HTTP parser the servers use here, e.g. "uvloop + httptools"."""
    loop = "uvloop" if _importable("uvloop") else "asyncio"
    http = "httptools" if _importable("httptools") else "h11"
    return f"{loop} + {http}"
