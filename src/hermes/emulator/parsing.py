"""Generation request bodies, checked as vLLM checks them, and the emulator's prompt tokens."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from hermes.emulator.engine import EmulatedEngine
from hermes.emulator.errors import bad
from hermes.emulator.options import Options, chat_options, check_fields, completion_options
from hermes.emulator.tokens import DEFAULT_MAX_TOKENS, prompt_tokens_for_text


def _show(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def opt_int(body: Mapping[str, Any], name: str, minimum: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"`{name}` must be an integer, got {_show(value)}", name)
    if minimum is not None and value < minimum:
        raise bad(f"`{name}` must be >= {minimum}, got {value}", name)
    return value


def opt_bool(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad(f"`{name}` must be a boolean, got {_show(value)}", name)
    return value


@dataclass(frozen=True, slots=True)
class Call:
    model: str
    engine: EmulatedEngine
    prompt_tokens: int
    max_tokens: int
    priority: int
    stream: bool
    include_usage: bool
    options: Options

    @property
    def n(self) -> int:
        return self.options.n


def _content_text(content: object, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = []
        for k, part in enumerate(content):
            if not (isinstance(part, dict) and part.get("type") == "text"):
                raise bad(f"`{where}[{k}]` must be a text part; only text is supported", where)
            text = part.get("text")
            if not isinstance(text, str):
                raise bad(f"`{where}[{k}].text` must be a string", where)
            parts.append(text)
        return "".join(parts)
    raise bad(f"`{where}` must be a string or a list of text parts", where)


def chat_prompt_tokens(body: Mapping[str, Any]) -> int:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("`messages` must be a non-empty list of messages", "messages")
    text = []
    for k, message in enumerate(messages):
        if not isinstance(message, dict):
            raise bad(f"`messages[{k}]` must be an object", "messages")
        if not isinstance(message.get("role"), str):
            raise bad(f"`messages[{k}].role` must be a string", "messages")
        text.append(_content_text(message.get("content"), f"messages[{k}].content"))
        calls = message.get("tool_calls")
        if calls is not None:  # an assistant's earlier tool calls are prompt too
            if not isinstance(calls, list):
                raise bad(f"`messages[{k}].tool_calls` must be a list", "messages")
            text.append(json.dumps(calls))
    if isinstance(body.get("tools"), list):  # as a chat template writes the tools in
        text.append(json.dumps(body["tools"]))
    return prompt_tokens_for_text("".join(text))


def _is_token_ids(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value
    )


def completion_prompt_tokens(body: Mapping[str, Any]) -> int:
    prompt = body.get("prompt")
    # One prompt only: a string, token ids, or a batch of one of either.
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt_tokens_for_text(prompt)
    if _is_token_ids(prompt) and prompt:
        return len(prompt)
    raise bad(
        "`prompt` must be a string or a non-empty list of token ids (one prompt per request)",
        "prompt",
    )


def generation_call(
    body: Mapping[str, Any], model: str, engine: EmulatedEngine, prompt_tokens: int, chat: bool
) -> Call:
    """The generation `body` asks `engine` for; a 400 naming the field when it is malformed
    or asks for what the emulator cannot do."""
    check_fields(body, chat)
    max_tokens = opt_int(body, "max_completion_tokens", 1) if chat else None
    if max_tokens is None:
        max_tokens = opt_int(body, "max_tokens", 1)
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    priority = opt_int(body, "priority") or 0
    options = (chat_options if chat else completion_options)(body, max_tokens)
    stream = opt_bool(body, "stream")
    stream_options = body.get("stream_options")
    include_usage = False
    if stream_options is not None:
        if not stream:
            raise bad("Stream options can only be defined when `stream=True`.", "stream")
        if not isinstance(stream_options, dict):
            raise bad("`stream_options` must be an object", "stream_options")
        include_usage = opt_bool(stream_options, "include_usage")
    return Call(
        model=model,
        engine=engine,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        priority=priority,
        stream=stream,
        include_usage=include_usage,
        options=options,
    )


async def json_object(request: Request) -> dict[str, Any]:
    """The request's body as a JSON object, or a 400 saying why not."""
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"Invalid JSON in request body: {exc}") from None
    if not isinstance(body, dict):
        raise bad(f"The request body must be a JSON object, got {type(body).__name__}")
    return body
