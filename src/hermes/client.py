"""Tagging an application's calls for the Hermes gateway: on the official `openai` client, or
on any client that sends extra headers per call (LangChain, LiteLLM: `HermesApp.headers`).

    import openai
    from hermes.client import HermesApp

    client = openai.OpenAI(base_url="http://gateway:8080/v1", api_key="...")
    app = HermesApp(client, app_type="code_assistant")      # a fresh application id
    app.llm("plan").chat.completions.create(model=..., messages=...)
    with app.tool("run_tests", backend="docker"):            # reported to the gateway
        run_the_tests()
    app.llm("fix").chat.completions.create(model=..., messages=...)
    app.finish()

Each `llm(...)` and `tool(...)` opens the application's next stage and sends its index, so two
consecutive stages of one name (an agent thinking twice) stay apart: call `llm` once per stage
and issue a fan-out's calls on the client it returns.

One `HermesApp` per application run, not per client: the client is shared, each run gets its
own id. For a framework that builds its own client, `app.headers("plan")` opens the next stage
and returns its headers, to pass per call (LangChain: `llm.invoke(msgs, extra_headers=...)`;
LiteLLM: `completion(..., extra_headers=...)`); give `HermesApp(None, ..., base_url=...,
api_key=...)` the gateway's address instead of a client. Examples: `examples/clients/`.

`tag(client, app_id, ...)` alone is the one-line form: it returns a copy of the client whose
calls carry the headers. Works with `openai.AsyncOpenAI` too for `tag` and `llm`, with `atool`
and `afinish` for the reports. The reports use only the standard library (no dependency beyond
the client you already use).
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Protocol, TypeVar

from hermes.types import SloClass


class _Client(Protocol):
    base_url: Any
    api_key: str

    def with_options(self, *, default_headers: dict[str, str]) -> Any: ...


C = TypeVar("C", bound=_Client)


def app_headers(
    app_id: str,
    app_type: str | None = None,
    stage: str | None = None,
    deadline_ms: float | None = None,
    slo_class: SloClass | None = None,
    stage_index: int | None = None,
) -> dict[str, str]:
    """The `x-hermes-*` headers of one call."""
    h = {"x-hermes-app-id": app_id}
    if app_type is not None:
        h["x-hermes-app-type"] = app_type
    if stage is not None:
        h["x-hermes-stage"] = stage
    if deadline_ms is not None:
        h["x-hermes-deadline-ms"] = f"{deadline_ms:g}"
    if slo_class is not None:
        h["x-hermes-slo-class"] = slo_class
    if stage_index is not None:
        h["x-hermes-stage-index"] = str(stage_index)
    return h


def tag(client: C, app_id: str, **context: Any) -> C:
    """A copy of `client` whose calls belong to application `app_id` (see `app_headers`)."""
    tagged: C = client.with_options(default_headers=app_headers(app_id, **context))
    return tagged


class HermesApp:
    """One application run: its LLM stages through the gateway, its tool stages reported.

    `client` is an `openai.OpenAI` (or `AsyncOpenAI`) pointed at the gateway; without one, give
    the gateway's `base_url` (with or without `/v1`) and `api_key`, and tag calls with
    `headers`.
    """

    def __init__(
        self,
        client: _Client | None,
        app_type: str,
        app_id: str | None = None,
        deadline_ms: float | None = None,
        slo_class: SloClass | None = None,
        admin_key: str | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
    ) -> None:
        if client is None and base_url is None:
            raise ValueError("HermesApp: give an openai client or the gateway's base_url")
        self.client = client
        self.app_type = app_type
        self.app_id = app_id or f"{app_type}-{uuid.uuid4().hex[:12]}"
        self._context: dict[str, Any] = {"app_type": app_type}
        if deadline_ms is not None:
            # The deadline counts from the application's first call.
            self._context["deadline_ms"] = deadline_ms
        if slo_class is not None:
            self._context["slo_class"] = slo_class
        key = api_key if api_key is not None else (client.api_key if client else None)
        self._key = admin_key or key
        self._stages = 0  # stages opened so far: the next one's index
        url = str(base_url if base_url is not None else client.base_url)  # type: ignore[union-attr]
        self._root = url.rstrip("/").removesuffix("/v1")
        self.finished = False

    def headers(self, stage: str) -> dict[str, str]:
        """Open the next stage, LLM stage `stage`, and return the headers of its calls (send
        them with each of the stage's calls, e.g. as `extra_headers`)."""
        index = self._next_stage()
        return app_headers(self.app_id, stage=stage, stage_index=index, **self._context)

    def llm(self, stage: str) -> Any:
        """The client for the calls of the next stage, `stage` (issue them in parallel on it
        for a fan-out)."""
        if self.client is None:
            raise ValueError("HermesApp.llm needs an openai client; use headers(stage) instead")
        return self.client.with_options(default_headers=self.headers(stage))

    @contextmanager
    def tool(self, stage: str, backend: str | None = None) -> Iterator[None]:
        """Report the next stage, tool stage `stage`, to the gateway for as long as the block
        runs."""
        event = self._tool_event(stage)
        # A capacity-managed tool backend answers when the policy grants the stage a slot.
        self._post("events", self._started(event, backend), read_timeout_s=None)
        try:
            yield
        finally:
            self._post("events", {**event, "event": "stage_finished"})

    @asynccontextmanager
    async def atool(self, stage: str, backend: str | None = None) -> AsyncIterator[None]:
        """`tool` for asyncio code: the reports run in a thread, not on the event loop."""
        event = self._tool_event(stage)
        await asyncio.to_thread(
            self._post, "events", self._started(event, backend), read_timeout_s=None
        )
        try:
            yield
        finally:
            await asyncio.to_thread(self._post, "events", {**event, "event": "stage_finished"})

    def _tool_event(self, stage: str) -> dict[str, Any]:
        return {"stage": stage, "stage_index": self._next_stage()}

    def _started(self, event: dict[str, Any], backend: str | None) -> dict[str, Any]:
        # The context too: the gateway may first see the application here.
        stage = event["stage"]
        return {**event, **self._context, "backend": backend or stage, "event": "stage_started"}

    def _next_stage(self) -> int:
        self._stages += 1
        return self._stages - 1

    def finish(self) -> None:
        """The application is done: the gateway records its run and learns from it."""
        self._post("finish", {})
        self.finished = True

    async def afinish(self) -> None:
        """`finish` for asyncio code."""
        await asyncio.to_thread(self.finish)

    def __enter__(self) -> HermesApp:
        return self

    def __exit__(self, kind: object, *rest: object) -> None:
        # A run that raised is not reported finished: the caller may still retry or finish
        # it; otherwise the gateway's idle timeout ends it.
        if kind is None and not self.finished:
            self.finish()

    def _post(self, what: str, body: dict[str, Any], read_timeout_s: float | None = 10.0) -> None:
        url = f"{self._root}/v1/apps/{self.app_id}/{what}"
        request = urllib.request.Request(
            url,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"}
            | ({"Authorization": f"Bearer {self._key}"} if self._key else {}),
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=read_timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as e:
            text = e.read().decode("utf-8", "replace")[:200]
            raise RuntimeError(f"gateway refused the {what} report ({e.code}): {text}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise RuntimeError(f"gateway at {self._root} unreachable ({what}): {reason}") from None
