"""What the emulated model writes for one choice: its tokens as the client sees them, where
they end and why. Pure: the same request always gets the same answer.

The model writes one of three things (docs/gateway.md, "The emulator"):
- text: filler tokens ` tok0 tok1 ...`. It never ends on its own (vLLM's `ignore_eos`), unless
  the request has `stop` strings: then it writes the first stop string after
  `max(min_tokens, ceil(max_tokens / 2))` filler tokens, so a client sees a stop happen;
- JSON (`response_format`): one value shaped by the schema, then the end of sequence;
- a tool call: the arguments of one call as JSON, then the end of sequence.
Stop strings are then checked, for real, on the text as it is generated (a stop string that
occurs in the filler ends it there too, e.g. `stop: ["tok3"]`), and `max_tokens` cuts
whatever is longer (`finish_reason: length`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import count, islice
from typing import Any, Literal

from hermes.emulator.synthetic_json import synthetic_value
from hermes.emulator.tokens import CHARS_PER_TOKEN, filler_token

Mode = Literal["text", "json", "tool"]
Finish = Literal["stop", "length", "tool_calls"]


@dataclass(frozen=True, slots=True)
class OutputSpec:
    """What a request asks the model to write (checked by `emulator.options`)."""

    max_tokens: int
    mode: Mode = "text"
    stop: tuple[str, ...] = ()
    min_tokens: int = 0
    include_stop: bool = False
    schema: Any = None  # json: the response schema (None: any object); tool: its parameters
    tool: str | None = None  # tool: the function called


@dataclass(frozen=True, slots=True)
class Plan:
    """One choice: `pieces[i]` is what token i shows (a stop string's cut may leave it short
    or empty); `tool` names the function whose arguments the pieces spell."""

    pieces: tuple[str, ...]
    finish_reason: Finish
    stop_reason: str | None = None
    tool: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def json_text(spec: OutputSpec) -> str:
    """The JSON the model writes in json or tool mode."""
    if spec.mode == "json" and spec.schema is None:
        value: Any = {"answer": "text"}  # `json_object`: any object will do
    else:
        value = synthetic_value(spec.schema if spec.schema is not None else {"type": "object"})
    return json.dumps(value, separators=(", ", ": "))


def _natural(spec: OutputSpec) -> Iterator[str]:
    """The tokens the model would write with no limit; the iterator ends at its end of
    sequence."""
    if spec.mode != "text":
        text = json_text(spec)
        for start in range(0, len(text), CHARS_PER_TOKEN):
            yield text[start : start + CHARS_PER_TOKEN]
        return
    if not spec.stop:
        yield from map(filler_token, count())  # never ends
        return
    said = max(spec.min_tokens, -(-spec.max_tokens // 2))
    yield from map(filler_token, range(said))
    yield spec.stop[0]


def plan_output(spec: OutputSpec) -> Plan:
    """The tokens `spec` gets, cut at the first stop string or at `max_tokens`."""
    if spec.max_tokens < 1:
        raise ValueError(f"plan_output: max_tokens must be >= 1, got {spec.max_tokens}")
    stops = spec.stop if spec.mode != "tool" else ()  # a tool call's arguments run to the end
    text = ""
    pieces: list[str] = []
    tokens = list(islice(_natural(spec), spec.max_tokens + 1))
    for i, token in enumerate(tokens[: spec.max_tokens]):
        before = len(text)
        text += token
        pieces.append(token)
        # As vLLM: only stops completed by this token count, and none before min_tokens.
        if stops and i + 1 >= spec.min_tokens:
            hit = _first_stop(text, stops, before)
            if hit is not None:
                at, stop = hit
                keep = at + (len(stop) if spec.include_stop else 0)
                return Plan(_clip(pieces, keep), "stop", stop)
    if len(tokens) > spec.max_tokens:
        return Plan(tuple(pieces), "length", tool=spec.tool)
    if spec.mode == "tool":
        return Plan(tuple(pieces), "tool_calls", tool=spec.tool)
    return Plan(tuple(pieces), "stop")


def _first_stop(text: str, stops: tuple[str, ...], before: int) -> tuple[int, str] | None:
    """The earliest stop string that ends after `text[:before]`, and where it starts."""
    found = [(at, s) for s in stops if (at := text.find(s, max(0, before - len(s) + 1))) >= 0]
    return min(found, key=lambda hit: hit[0]) if found else None


def _clip(pieces: list[str], keep: int) -> tuple[str, ...]:
    """`pieces` with their text cut to the first `keep` characters, one piece per token."""
    out = []
    for piece in pieces:
        out.append(piece[: max(0, keep)])
        keep -= len(piece)
    return tuple(out)
