"""The emulator's made-up text: a tokenizer of four characters per token, and filler output."""

from __future__ import annotations

CHARS_PER_TOKEN = 4
DEFAULT_MAX_TOKENS = 16


def prompt_tokens_for_text(text: str) -> int:
    """The emulator's tokenizer: one token per 4 characters, rounded up, at least 1."""
    return max(1, -(-len(text) // CHARS_PER_TOKEN))


def filler_token(index: int) -> str:
    """The text of generated token `index` (0-based)."""
    return f" tok{index}"
