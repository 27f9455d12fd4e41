"""Made-up log probabilities in vLLM's shapes: per token of a chat answer (OpenAI's
`logprobs.content`) or of a completion (`tokens`, `token_logprobs`, `top_logprobs`,
`text_offset`). The sampled token is the likeliest (p = 0.9); the alternatives ` alt1`,
` alt2`, ... share the rest, halving each time, so the top list is sorted and sums below 1."""

from __future__ import annotations

import math
from typing import Any

CHOSEN_P = 0.9


def _alternatives(k: int) -> list[tuple[str, float]]:
    """The `k` likeliest tokens other than the sampled one, with their log probabilities."""
    rest = 1.0 - CHOSEN_P
    return [(f" alt{j}", math.log(rest / 2**j)) for j in range(1, k + 1)]


def _entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def chat_logprobs(pieces: list[str], top: int) -> dict[str, Any]:
    """`choice.logprobs` of a chat answer (or chunk) made of `pieces`, `top` alternatives
    each (the sampled token first among them, as OpenAI lists it)."""
    chosen = math.log(CHOSEN_P)
    content = []
    for piece in pieces:
        entry = _entry(piece, chosen)
        tops = [_entry(piece, chosen)] + [_entry(t, lp) for t, lp in _alternatives(top - 1)]
        entry["top_logprobs"] = tops[:top]
        content.append(entry)
    return {"content": content}


def completion_logprobs(pieces: list[str], top: int, offset: int = 0) -> dict[str, Any]:
    """`choice.logprobs` of a completion (or chunk) made of `pieces` whose text starts at
    `offset` characters; each token's top dict holds it and `top` alternatives."""
    chosen = math.log(CHOSEN_P)
    offsets = []
    for piece in pieces:
        offsets.append(offset)
        offset += len(piece)
    return {
        "text_offset": offsets,
        "token_logprobs": [chosen] * len(pieces),
        "tokens": list(pieces),
        "top_logprobs": [{p: chosen} | dict(_alternatives(top)) for p in pieces],
    }
