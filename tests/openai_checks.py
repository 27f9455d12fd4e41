"""Checks through the official openai client that several gateway tests share."""

from __future__ import annotations

from typing import Any

import openai


def streamed_completion(
    client: openai.OpenAI, max_tokens: int = 5, prompt: str = "x" * 400, model: str = "m"
) -> list[Any]:
    """A streamed completion that asks for usage: one chunk per token, then the usage chunk;
    the chunks."""
    chunks = list(
        client.completions.create(
            model=model,
            prompt=prompt,
            max_tokens=max_tokens,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len(chunks) == max_tokens + 1
    assert chunks[-1].usage is not None
    return chunks
