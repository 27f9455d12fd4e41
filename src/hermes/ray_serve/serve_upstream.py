"""Upstreams that are Ray Serve deployments (`url: serve://APP/DEPLOYMENT`, `hermes serve
--ray` only). A granted call goes to the deployment through a `DeploymentHandle`, not HTTP,
in the call shape of Ray Serve LLM's `LLMServer`: `chat(request, raw_request_info)` or
`completions(...)` on a streaming handle, which yields the whole answer (an object, or a dict)
or, for a streamed call, its SSE text (strings, or lists of them, or chunk objects). The
client gets the OpenAI shapes, as from a URL upstream: the same usage accounting, the same
errors.

The application id goes as the handle's `session_id` and the policy's rank as the request's
`priority` (as the engine's `kind` takes it): `HermesRequestRouter` on the deployment places
the call by the first, the engine orders its queue by the second. The request is Ray Serve
LLM's request class where it imports (vLLM installed), else the JSON body as a dict (the
emulator deployment takes both).

No Ray import here (the ingress runs without Ray in tests): the handles come from a function,
Serve's `get_deployment_handle` on Ray (`deployment.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncGenerator, Callable
from typing import Any

from starlette.responses import JSONResponse, Response

from hermes.gateway.config import GatewayConfig
from hermes.gateway.config_parts import SERVE_SCHEME
from hermes.gateway.errors import BadRequestError, UpstreamError, error_body, sse_error
from hermes.gateway.relay import Relay, RelayedStream
from hermes.gateway.upstream import UpstreamClient, engine_priority, late
from hermes.ray_serve.protocol import Granted, Submit

HandleFor = Callable[[str, str], Any]  # (application, deployment) -> a DeploymentHandle
Release = Callable[[int, str, dict[str, Any]], None]  # SchedulerLink.release
_DONE = b"data: [DONE]\n\n"


def serve_target(url: str) -> tuple[str, str] | None:
    """(application, deployment) of a `serve://APP/DEPLOYMENT` URL; None for another URL."""
    if not url.startswith(SERVE_SCHEME):
        return None
    app, _, deployment = url.removeprefix(SERVE_SCHEME).partition("/")
    return app, deployment


@functools.cache
def _llm_request_classes() -> tuple[Any, Any] | None:
    try:  # Ray Serve LLM's classes import only with vLLM (or SGLang) installed
        from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest
    except Exception:
        return None
    return ChatCompletionRequest, CompletionRequest


def request_object(body: dict[str, Any], chat: bool) -> Any:
    """What the deployment is given: Ray Serve LLM's request object, or the body itself."""
    classes = _llm_request_classes()
    if classes is None:
        return body
    try:
        return classes[0 if chat else 1].model_validate(body)
    except ValueError as e:  # pydantic's ValidationError: a field the engine refuses
        raise BadRequestError(f"the engine's request model refused the body: {e}") from None


def as_json(item: Any) -> Any:
    """A whole answer as JSON-able data (a pydantic object's dump, or the dict itself)."""
    dump = getattr(item, "model_dump", None)
    return dump(mode="json") if callable(dump) else item


def error_of(item: Any) -> tuple[int, str, str] | None:
    """(status, type, message) if `item` is an error answer: Ray Serve LLM's `ErrorResponse`
    (`{"error": {"message", "type", "code"}}`), or vLLM's older flat one (`object: error`)."""
    data = as_json(item)
    if not isinstance(data, dict) or "choices" in data:
        return None
    if isinstance(data.get("error"), dict):
        data = data["error"]
    elif data.get("object") != "error":
        return None
    code = data.get("code")
    status = code if isinstance(code, int) and 400 <= code < 600 else 500
    kind = data.get("type") if isinstance(data.get("type"), str) else "upstream_error"
    return status, kind, str(data.get("message", ""))


def sse_bytes(item: Any) -> bytes:
    """A streamed item as SSE text, as Ray Serve LLM's ingress writes it: strings as they are,
    objects and dicts as one `data:` event each, lists joined."""
    if isinstance(item, list):
        return b"".join(sse_bytes(i) for i in item)
    if isinstance(item, str):
        return item.encode()
    if isinstance(item, bytes):
        return item
    if callable(getattr(item, "model_dump_json", None)):
        return b"data: " + str(item.model_dump_json()).encode() + b"\n\n"
    if isinstance(item, dict):
        return b"data: " + json.dumps(item).encode() + b"\n\n"
    raise UpstreamError(f"the deployment streamed a {type(item).__name__}, not SSE text")


class ServeUpstreams:
    """The Serve-deployment backends of `config`, each reached by a handle from `handle_for`."""

    def __init__(
        self,
        config: GatewayConfig,
        clients: dict[str, UpstreamClient],
        handle_for: HandleFor | None,
    ) -> None:
        self.targets = {
            b.name: t for b in config.backends if (t := serve_target(b.url)) is not None
        }
        if self.targets and handle_for is None:
            names = ", ".join(sorted(self.targets))
            raise ValueError(f"backends {names} are Ray Serve deployments: hermes serve --ray")
        self.clients = clients
        self.handle_for = handle_for
        self._handles: dict[tuple[str, bool], Any] = {}

    def __contains__(self, upstream: str) -> bool:
        return upstream in self.targets

    def _handle(self, upstream: str, chat: bool, session: str | None) -> Any:
        # Serve's advice: a handle configured once and kept (each `.options()` makes one).
        base = self._handles.get((upstream, chat))
        if base is None:
            assert self.handle_for is not None
            app, deployment = self.targets[upstream]
            method = "chat" if chat else "completions"
            base = self.handle_for(app, deployment).options(stream=True, method_name=method)
            self._handles[(upstream, chat)] = base
        # The session per call, as Ray Serve LLM's own ingress sets it.
        return base if not session else base.options(session_id=session)

    async def forward(
        self,
        sub: Submit,
        grant: Granted,
        body: dict[str, Any],
        chat: bool,
        release: Release,
        headers: dict[str, str],
    ) -> Response:
        """The deployment's answer to the call, with `headers`; the call is released however
        it ends except by an exception (the caller's to release and answer)."""
        client = self.clients[grant.upstream]
        fields = dict(grant.extra)
        priority = engine_priority(client.backend.kind, grant.rank)
        if priority is not None:
            fields["priority"] = priority
        stream = bool(body.get("stream"))
        if stream:  # usage always, to account it; stripped if not asked for
            opts = body.get("stream_options") or {}
            fields["stream_options"] = {**opts, "include_usage": True}
        request = request_object({**body, **fields}, chat)
        gen = self._handle(grant.upstream, chat, sub.ctx.app_id).remote(request, None)
        try:
            first = await self._first(gen, client)
        except BaseException:
            gen.cancel()
            raise
        error = error_of(first)
        if error is not None:
            gen.cancel()
            release(sub.call_id, "error", {})
            status, kind, message = error
            return JSONResponse(error_body(status, kind, message), status_code=status)
        if not stream:
            gen.cancel()  # one item is the whole answer
            data = as_json(first)
            usage = data.get("usage") if isinstance(data, dict) else None
            release(sub.call_id, "stop", usage if isinstance(usage, dict) else {})
            return Response(json.dumps(data), media_type="application/json", headers=headers)
        state = RelayedStream(body)

        def end() -> None:
            gen.cancel()
            release(sub.call_id, state.finish, state.usage or {})

        relay = Relay(self._events(gen, first, client, state), end)
        relay.headers.update(headers)
        return relay

    async def _first(self, gen: Any, client: UpstreamClient) -> Any:
        name = client.backend.name
        try:
            async with asyncio.timeout(client.first_byte_timeout_s):
                return await gen.__anext__()
        except StopAsyncIteration:
            raise UpstreamError(f"upstream {name!r} sent no answer") from None
        except (TimeoutError, asyncio.CancelledError, UpstreamError):
            raise
        except Exception as e:  # Ray's: the replica died, the application is not running
            raise UpstreamError(f"upstream {name!r} failed: {type(e).__name__}: {e}") from None

    async def _events(
        self, gen: Any, first: Any, client: UpstreamClient, state: RelayedStream
    ) -> AsyncGenerator[bytes, None]:
        """The deployment's events as they come (its usage-only event dropped unless asked
        for, `[DONE]` added if it sends none); a failure becomes an SSE error event."""
        try:
            item, done = first, False
            while True:
                for event in state.feed(sse_bytes(item)):
                    done = done or event.strip() == _DONE.strip()
                    yield event
                try:
                    async with asyncio.timeout(client.chunk_timeout_s):
                        item = await gen.__anext__()
                except StopAsyncIteration:
                    break
            if state.rest:
                yield state.rest
            if not done:
                yield _DONE
            state.finish = "stop"
        except TimeoutError:
            state.finish = "error"
            yield sse_error(late(client, first=False))
        except UpstreamError as e:
            state.finish = "error"
            yield sse_error(e)
        except Exception as e:  # Ray's, mid-stream
            state.finish = "error"
            yield sse_error(UpstreamError(f"upstream failed mid-stream: {type(e).__name__}: {e}"))
        finally:
            with contextlib.suppress(Exception):
                gen.cancel()
