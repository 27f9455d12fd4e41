"""vLLM's development-mode controls, emulated: sleep and wake-up, and LoRA adapters loaded at
run time. Waking takes `wake_s` and loading an adapter `lora_load_s` of wall time."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from hermes.emulator.engine import EmulatedEngine
from hermes.emulator.errors import ApiError, bad
from hermes.emulator.parsing import json_object


class Controls:
    """The server's sleep level and loaded adapters, and their endpoints."""

    def __init__(
        self, engines: Mapping[str, EmulatedEngine], wake_s: float, lora_load_s: float
    ) -> None:
        self.engines = engines
        self.wake_s = wake_s
        self.lora_load_s = lora_load_s
        self.sleep_level = 0  # 0: awake
        self.adapters: dict[str, str] = {}  # LoRA name -> path
        # What the controls were asked to do, in order, for tests and the demo to read.
        self.control_log: list[tuple[str, str]] = []

    async def is_sleeping(self, request: Request) -> Response:
        return JSONResponse({"is_sleeping": self.sleep_level > 0})

    async def sleep(self, request: Request) -> Response:
        raw = request.query_params.get("level", "1")
        if raw not in ("1", "2"):
            raise bad(f"`level` must be 1 or 2, got {raw[:20]!r}", "level")
        busy = sum(e.outstanding for e in self.engines.values())
        if busy:
            raise ApiError(409, f"{busy} requests are in progress; sleep when idle")
        self.sleep_level = int(raw)
        self.control_log.append(("sleep", raw))
        return Response(status_code=200)

    async def wake_up(self, request: Request) -> Response:
        if self.sleep_level:
            self.control_log.append(("wake_up", str(self.sleep_level)))
            await asyncio.sleep(self.wake_s)
            self.sleep_level = 0
        return Response(status_code=200)

    async def load_lora(self, request: Request) -> Response:
        name, path = _lora_fields(await json_object(request), need_path=True)
        if name in self.adapters or name in self.engines:
            raise bad(f"The lora adapter '{name}' has already been loaded.", "lora_name")
        self.control_log.append(("load_lora_adapter", name))
        await asyncio.sleep(self.lora_load_s)
        self.adapters[name] = path
        return Response(f"Success: LoRA adapter '{name}' added successfully.", status_code=200)

    async def unload_lora(self, request: Request) -> Response:
        name, _ = _lora_fields(await json_object(request), need_path=False)
        if self.adapters.pop(name, None) is None:
            raise ApiError(404, f"The lora adapter '{name}' cannot be found.", "lora_name")
        self.control_log.append(("unload_lora_adapter", name))
        return Response(f"Success: LoRA adapter '{name}' removed successfully.", status_code=200)


def _lora_fields(body: dict[str, Any], need_path: bool) -> tuple[str, str]:
    name, path = body.get("lora_name"), body.get("lora_path", "")
    if not isinstance(name, str) or not name:
        raise bad("`lora_name` must be a non-empty string", "lora_name")
    if not isinstance(path, str) or (need_path and not path):
        raise bad("`lora_path` must be a non-empty string", "lora_path")
    return name, path
