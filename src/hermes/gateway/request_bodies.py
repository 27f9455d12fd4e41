"""The bodies the gateway reads, checked: an OpenAI completion call, and an application's
stage event. Each check raises `BadRequestError` naming the field at fault."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from starlette.requests import Request

from hermes.gateway.errors import BadRequestError


async def read_json(request: Request) -> tuple[bytes, Any]:
    """The body's bytes and their JSON value (its size is `BodyLimit`'s to check)."""
    raw = await request.body()
    try:
        return raw, json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequestError(f"the body is not valid JSON: {e}") from None
    except RecursionError:  # Python's parser recurses per level; ~1,000 levels exhaust it
        raise BadRequestError("the body's JSON nests too deeply to read") from None


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """About one token per four characters of the prompt; only a first guess for ranking:
    the upstream's usage replaces it when the call ends."""
    text = 0
    if "messages" in body:
        for m in body["messages"]:
            c = m.get("content") if isinstance(m, dict) else None
            if isinstance(c, str):
                text += len(c)
            elif isinstance(c, list):
                text += sum(len(p.get("text", "")) for p in c if isinstance(p, dict))
    else:
        p = body.get("prompt")
        text = len(p) if isinstance(p, str) else sum(len(str(x)) for x in p or [])
    return max(1, text // 4)


def check_completion(body: Any, chat: bool) -> dict[str, Any]:
    """`body` if it is a chat (`chat`) or text completion call the gateway can queue."""
    if not isinstance(body, dict):
        raise BadRequestError("the request body must be a JSON object")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise BadRequestError("'model' is required and must be a non-empty string", "model")
    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
            raise BadRequestError("'messages' must be a non-empty list of objects", "messages")
        for i, m in enumerate(msgs):
            _check_content(m.get("content"), f"messages[{i}].content")
    else:
        p = body.get("prompt")
        if not (isinstance(p, str) or (isinstance(p, list) and p)):
            raise BadRequestError("'prompt' must be a string or a non-empty list", "prompt")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise BadRequestError(f"'stream' must be true or false, got {body['stream']!r}", "stream")
    for key in ("max_tokens", "max_completion_tokens"):
        v = body.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise BadRequestError(f"'{key}' must be a positive integer, got {v!r}", key)
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise BadRequestError("'stream_options' must be an object", "stream_options")
    return body


def _check_content(content: Any, where: str) -> None:
    """A message's content: a string, null (an assistant's tool call), or a list of parts,
    each an object whose `text`, if present, is a string (the token estimate reads it)."""
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, list):
        raise BadRequestError(
            f"'{where}' must be a string or a list of content parts, got {type(content).__name__}",
            where,
        )
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise BadRequestError(f"'{where}[{j}]' must be an object", f"{where}[{j}]")
        if "text" in part and not isinstance(part["text"], str):
            text = part["text"]
            raise BadRequestError(
                f"'{where}[{j}].text' must be a string, got {type(text).__name__}",
                f"{where}[{j}].text",
            )


@dataclass(frozen=True, slots=True)
class StageEvent:
    """`POST /v1/apps/{id}/events`: a tool stage started (on `backend`) or finished."""

    kind: Literal["stage_started", "stage_finished"]
    stage: str
    index: int | None  # the stage's index in the run, when the client sends one
    backend: str  # stage_started: where it runs (default: the stage's name)


def check_event(body: Any) -> StageEvent:
    if not isinstance(body, dict):
        raise BadRequestError("the event must be a JSON object")
    kind, stage = body.get("event"), body.get("stage")
    if kind not in ("stage_started", "stage_finished"):
        raise BadRequestError(
            f"'event' must be 'stage_started' or 'stage_finished', got {kind!r}", "event"
        )
    if not isinstance(stage, str) or not stage:
        raise BadRequestError("'stage' must be a non-empty string", "stage")
    index = body.get("stage_index")
    if index is not None and (type(index) is not int or index < 0):
        raise BadRequestError(
            f"'stage_index' must be a non-negative integer, got {index!r}", "stage_index"
        )
    backend = body.get("backend", stage) if kind == "stage_started" else stage
    if not isinstance(backend, str) or not backend:
        raise BadRequestError("'backend' must be a non-empty string", "backend")
    return StageEvent(kind, stage, index, backend)
