"""What a request's tokens are, as far as another request can share them: the key to
automatic prefix caching.

A request's `content` is a tuple of runs `(stream, tokens)`: its token sequence (prompt, then
output) begins with the first `tokens` tokens of `stream`, then the first tokens of the next
run's stream, and so on; what follows the runs is its own. Two requests share a prefix as
far as their runs agree: an agent's calls of one run all read `(run id, n)` for a growing n,
every run of an application type reads `(type's system prompt, n)`, and a Mooncake request
reads its `hash_ids` as runs of 512 tokens each.

A full KV block's identity is a hash chained over the blocks before it (as vLLM's block
hashes are), so that equal hashes mean equal prefixes up to and including the block.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

Content = tuple[tuple[Hashable, int], ...]


def shared_tokens(content: Content | None) -> int:
    """How many leading tokens `content` describes."""
    return 0 if not content else sum(n for _, n in content)


def block_hashes(content: Content | None, block_size: int, limit: int) -> list[int]:
    """The chained hashes of the full blocks among the first `limit` tokens that `content`
    describes (a block that reaches past the described tokens is the request's own)."""
    if not content:
        return []
    end = min(limit, shared_tokens(content))
    out: list[int] = []
    parent = 0
    pieces: list[tuple[Hashable, int, int]] = []  # (stream, from, to) inside the block
    pos = 0  # tokens placed so far
    for stream, n in content:
        start = 0
        while start < n and pos < end:
            room = block_size - pos % block_size
            take = min(room, n - start, end - pos)
            pieces.append((stream, start, start + take))
            start += take
            pos += take
            if pos % block_size == 0:
                parent = hash((parent, *pieces))
                out.append(parent)
                pieces = []
        if pos >= end:
            break
    return out


def runs_of(ids: Sequence[int], block_tokens: int) -> Content:
    """Mooncake's `hash_ids` (each `block_tokens` tokens, equal ids equal content) as runs."""
    return tuple((("mooncake", i), block_tokens) for i in ids)
