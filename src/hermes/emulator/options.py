"""The fields of a generation request beyond its prompt, checked: what the emulator honours
(`n`, `stop`, `tools`, `response_format`, `logprobs`, `echo`, ...), what it accepts and has no
use for (sampling fields: its text is synthetic), and what it refuses with a 400 naming the
field (anything else: a field it ignored would make a client believe it had an effect)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hermes.emulator.errors import bad
from hermes.emulator.output import Mode, OutputSpec

# Logprobs per token at most, as vLLM's default `max_logprobs`.
MAX_LOGPROBS = 20
# Choices per request at most: each is an engine request.
MAX_N = 128

_COMMON = {
    "model", "max_tokens", "stream", "stream_options", "n", "stop", "priority", "min_tokens",
    "include_stop_str_in_output", "logprobs",
}  # fmt: skip
_CHAT = _COMMON | {
    "messages", "max_completion_tokens", "tools", "tool_choice", "parallel_tool_calls",
    "response_format", "top_logprobs",
}  # fmt: skip
_COMPLETION = _COMMON | {"prompt", "echo"}


def _number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _string(v: object) -> bool:
    return isinstance(v, str)


# Accepted, with no effect on synthetic text; checked for type as vLLM checks them.
_NO_OPS: dict[str, tuple[Callable[[object], bool], str]] = {
    **dict.fromkeys(
        (
            "temperature",
            "top_p",
            "top_k",
            "min_p",
            "presence_penalty",
            "frequency_penalty",
            "repetition_penalty",
        ),
        (_number, "a number"),
    ),
    "seed": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    **dict.fromkeys(
        ("user", "prompt_cache_key", "safety_identifier", "request_id"), (_string, "a string")
    ),
    "metadata": (lambda v: isinstance(v, dict), "an object"),
    **dict.fromkeys(
        ("store", "skip_special_tokens", "spaces_between_special_tokens", "ignore_eos"),
        (lambda v: isinstance(v, bool), "a boolean"),
    ),
}
# Accepted only at the value that asks for nothing the emulator lacks.
_ONLY: dict[str, tuple[Callable[[object], bool], str]] = {
    "logit_bias": (lambda v: v == {}, "an empty object"),
    "best_of": (lambda v: v == 1, "1"),
    "stop_token_ids": (lambda v: v == [], "an empty list"),
    "use_beam_search": (lambda v: v is False, "false"),
    "suffix": (lambda v: v == "", "empty"),
}


def check_fields(body: Mapping[str, Any], chat: bool) -> None:
    """A 400 for a field the emulator cannot honour (a null counts as absent)."""
    known = _CHAT if chat else _COMPLETION
    for name, value in body.items():
        if value is None or name in known:
            continue
        if name in _NO_OPS:
            ok, what = _NO_OPS[name]
            if not ok(value):
                raise bad(f"`{name}` must be {what}, got {_show(value)}", name)
        elif name in _ONLY:
            ok, what = _ONLY[name]
            if not ok(value):
                raise bad(
                    f"`{name}` is not supported by the emulator (only {what} is accepted); "
                    "see docs/gateway.md, 'The emulator'",
                    name,
                )
        else:
            raise bad(
                f"`{name}` is not supported by the emulator's "
                f"{'chat completions' if chat else 'completions'} endpoint; "
                "see docs/gateway.md, 'The emulator'",
                name,
            )


def _show(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _int(body: Mapping[str, Any], name: str, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"`{name}` must be an integer, got {_show(value)}", name)
    if value < low or (high is not None and value > high):
        span = f">= {low}" if high is None else f"between {low} and {high}"
        raise bad(f"`{name}` must be {span}, got {value}", name)
    return value


def _bool(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise bad(f"`{name}` must be a boolean, got {_show(value)}", name)
    return bool(value)


@dataclass(frozen=True, slots=True)
class Options:
    """How to answer, besides the prompt and `max_tokens`."""

    n: int = 1
    mode: Mode = "text"
    stop: tuple[str, ...] = ()
    min_tokens: int = 0
    include_stop: bool = False
    schema: Any = None
    tool: str | None = None
    logprobs: int | None = None  # None: none asked; k: the top k per token
    echo: str | None = None  # completions: the prompt, written before the answer

    def spec(self, max_tokens: int) -> OutputSpec:
        return OutputSpec(
            max_tokens, self.mode, self.stop, self.min_tokens, self.include_stop, self.schema,
            self.tool,
        )  # fmt: skip


def _stop(body: Mapping[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise bad("`stop` must be a non-empty string or a list of non-empty strings", "stop")
    return tuple(stops)


def common_options(body: Mapping[str, Any], max_tokens: int) -> dict[str, Any]:
    """The fields both endpoints share, as `Options` keywords."""
    min_tokens = _int(body, "min_tokens", 0) or 0
    if min_tokens > max_tokens:
        raise bad(
            f"`min_tokens` ({min_tokens}) must be at most `max_tokens` ({max_tokens})",
            "min_tokens",
        )
    return {
        "n": _int(body, "n", 1, MAX_N) or 1,
        "stop": _stop(body),
        "min_tokens": min_tokens,
        "include_stop": _bool(body, "include_stop_str_in_output"),
    }


def completion_options(body: Mapping[str, Any], max_tokens: int) -> Options:
    logprobs = _int(body, "logprobs", 0, MAX_LOGPROBS)
    echo = None
    if _bool(body, "echo"):
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise bad("`echo` needs a text prompt: the emulator has no vocabulary", "echo")
        if logprobs is not None:
            raise bad("`echo` with `logprobs` is not supported by the emulator", "echo")
        echo = prompt
    return Options(logprobs=logprobs, echo=echo, **common_options(body, max_tokens))


def chat_options(body: Mapping[str, Any], max_tokens: int) -> Options:
    from hermes.emulator.tool_fields import chat_mode

    logprobs = _bool(body, "logprobs")
    top = _int(body, "top_logprobs", 0, MAX_LOGPROBS)
    if top is not None and not logprobs:
        raise bad("`top_logprobs` needs `logprobs` set to true", "top_logprobs")
    mode, schema, tool = chat_mode(body)
    return Options(
        mode=mode,
        schema=schema,
        tool=tool,
        logprobs=(top or 0) if logprobs else None,
        **common_options(body, max_tokens),
    )
