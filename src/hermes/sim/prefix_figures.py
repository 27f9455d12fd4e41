"""Prefix caching in a simulation: where a plain request's shareable content comes from, and
how much of the prompt tokens the engines' caches served."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from hermes.engine.prefix import Content, block_hashes, runs_of
from hermes.engine.prefix_cache import PrefixCachedKV
from hermes.engine.request import EngineRequest, RequestState
from hermes.workloads.request_traces import TraceRequest

# Mooncake's hash_ids stand for 512-token blocks.
MOONCAKE_BLOCK_TOKENS = 512


def trace_content(t: TraceRequest) -> Content | None:
    """A trace request's shareable prompt: its full 512-token prefix blocks (Mooncake's
    `hash_ids`; a last partial block is the request's own); None when the trace says none."""
    if not t.prefix_blocks:
        return None
    full = min(len(t.prefix_blocks), t.prompt_tokens // MOONCAKE_BLOCK_TOKENS)
    return runs_of(t.prefix_blocks[:full], MOONCAKE_BLOCK_TOKENS) or None


def prefix_cache_figures(runners: Sequence[Any]) -> dict[str, object]:
    """Prompt tokens served from the cache over prompt tokens of completed requests (the hit
    rate), with the capacities behind it (GPU cache and CPU tier, tokens, summed)."""
    hit = prompt = gpu = cpu = evictions = reloaded = 0
    for runner in runners:
        engine = runner.engine
        done = [r for r in runner.requests if r.state is RequestState.FINISHED]
        hit += sum(r.cached_tokens for r in done)
        prompt += sum(r.prompt_tokens for r in done)
        kv = getattr(engine, "kv", None)
        if isinstance(kv, PrefixCachedKV):
            gpu += kv.total_blocks * kv.block_size
            cpu += kv.cpu_tier_blocks * kv.block_size
            evictions += kv.evictions
            reloaded += kv.reloaded * kv.block_size
    return {
        "hit_rate": hit / prompt if prompt else None,
        "hit_tokens": hit,
        "prompt_tokens": prompt,
        "gpu_capacity_tokens": gpu,
        "cpu_capacity_tokens": cpu,
        "evicted_blocks": evictions,
        "reloaded_tokens": reloaded,
    }


def cached_lookup(runners: Sequence[Any], r: EngineRequest) -> Callable[[int], int] | None:
    """For a router: the tokens of `r`'s prompt that runner i's prefix cache holds (computed
    when asked; None when `r` shares nothing)."""
    if r.content is None or len(runners) < 2:
        return None
    hashes: list[int] | None = None

    def cached(i: int) -> int:
        nonlocal hashes
        kv = getattr(runners[i].engine, "kv", None)
        if not isinstance(kv, PrefixCachedKV):
            return 0
        if hashes is None:
            cap = max(0, r.prompt_tokens - 1)
            hashes = block_hashes(r.content, kv.block_size, cap)
        return kv.cached_blocks(hashes) * kv.block_size

    return cached
