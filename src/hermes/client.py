"""Tagging an application's calls for the Hermes gateway, on the official `openai` client.

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

`tag(client, app_id, ...)` alone is the one-line form: it returns a copy of the client whose
calls carry the headers. Works with `openai.AsyncOpenAI` too for `tag` and `llm`; the tool and
finish reports are plain synchronous HTTP posts.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
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
    """One application run: its LLM stages through the gateway, its tool stages reported."""

    def __init__(
        self,
        client: _Client,
        app_type: str,
        app_id: str | None = None,
        deadline_ms: float | None = None,
        slo_class: SloClass | None = None,
        admin_key: str | None = None,
    ) -> None:
        self.client = client
        self.app_type = app_type
        self.app_id = app_id or f"{app_type}-{uuid.uuid4().hex[:12]}"
        self._context: dict[str, Any] = {"app_type": app_type}
        if deadline_ms is not None:
            # The deadline counts from the application's first call.
            self._context["deadline_ms"] = deadline_ms
        if slo_class is not None:
            self._context["slo_class"] = slo_class
        self._admin_key = admin_key
        self._stages = 0  # stages opened so far: the next one's index
        self._root = str(client.base_url).rstrip("/").removesuffix("/v1")

    def llm(self, stage: str) -> Any:
        """The client for the calls of the next stage, `stage` (issue them in parallel on it
        for a fan-out)."""
        index = self._next_stage()
        return tag(self.client, self.app_id, stage=stage, stage_index=index, **self._context)

    @contextmanager
    def tool(self, stage: str, backend: str | None = None) -> Iterator[None]:
        """Report the next stage, tool stage `stage`, to the gateway for as long as the block
        runs."""
        event = {"stage": stage, "stage_index": self._next_stage()}
        # The context too: the gateway may first see the application here.
        started = {**event, **self._context, "backend": backend or stage}
        # A capacity-managed tool backend answers when the policy grants the stage a slot.
        self._post("events", {**started, "event": "stage_started"}, read_timeout_s=None)
        try:
            yield
        finally:
            self._post("events", {**event, "event": "stage_finished"})

    def _next_stage(self) -> int:
        self._stages += 1
        return self._stages - 1

    def finish(self) -> None:
        """The application is done: the gateway records its run and learns from it."""
        self._post("finish", {})

    def _post(self, what: str, body: dict[str, Any], read_timeout_s: float | None = 10.0) -> None:
        import httpx  # the openai client's own HTTP library

        key = self._admin_key or self.client.api_key
        r = httpx.post(
            f"{self._root}/v1/apps/{self.app_id}/{what}",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=httpx.Timeout(10.0, read=read_timeout_s),
        )
        if r.status_code >= 400:
            raise RuntimeError(
                f"gateway refused the {what} report ({r.status_code}): {r.text[:200]}"
            )
