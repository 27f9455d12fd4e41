"""Automatic prefix caching in the engine model (vLLM V1's): hits serve a request's leading
blocks, blocks are shared while held and kept on an LRU free queue after, tail first."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from hermes.engine.engine_config import EngineConfig
from hermes.engine.prefix import Content, block_hashes
from hermes.engine.prefix_cache import PrefixCachedKV
from hermes.engine.request import EngineRequest, RequestState
from hermes.engine.scheduler import Engine
from hermes.profiles import load_profile

MODEL = load_profile("llama-2-7b@a100")
BS = 16


def engine(blocks: int = 1000, caching: bool | None = None, seqs: int = 256) -> Engine:
    cfg = EngineConfig(num_gpu_blocks=blocks, enable_prefix_caching=caching, max_num_seqs=seqs)
    return Engine(MODEL, cfg)


def request(rid: str, content: Content | None, prompt: int, output: int = 4) -> EngineRequest:
    return EngineRequest(rid, prompt, output, 0.0, content=content)


def run(e: Engine, now: float = 0.0) -> float:
    while not e.idle:
        step = e.plan(now)
        assert step is not None
        now = step.end_s
        e.complete(step)
        e.check_invariants()
    return now


def kv(e: Engine) -> PrefixCachedKV:
    assert isinstance(e.kv, PrefixCachedKV)
    return e.kv


def test_a_repeated_prefix_is_served_from_the_cache_and_not_prefilled_again() -> None:
    e = engine()
    system = (("system", 320),)
    first = request("a", (*system, ("run-a", 200)), 500)
    e.add(first, 0.0)
    run(e)
    assert first.cached_tokens == 0
    prefill_before = e.stats.prefill_tokens
    second = request("b", (*system, ("run-b", 200)), 500)
    e.add(second, 1.0)
    run(e, 1.0)
    assert second.cached_tokens == 320  # the system prompt's 20 full blocks
    assert e.stats.prefill_tokens - prefill_before == 500 - 320
    assert second.state is RequestState.FINISHED
    assert second.generated == second.output_tokens


def test_an_agent_call_hits_its_previous_call_prompt_and_completion() -> None:
    e = engine()
    first = request("c1", (("sys", 100), ("run", 300 + 50)), 400, output=50)
    e.add(first, 0.0)
    run(e)
    # The next call resends the history: the previous prompt and completion, then more.
    second = request("c2", (("sys", 100), ("run", 500 + 20)), 620, output=20)
    e.add(second, 1.0)
    run(e, 1.0)
    # Every full block of the first call's 450 tokens, generated ones included.
    assert second.cached_tokens == (450 // BS) * BS


def test_requests_running_at_once_share_blocks_and_count_them_once() -> None:
    e = engine()
    shared = (("system", 640),)
    a = request("a", (*shared, ("a", 10)), 650, output=200)
    e.add(a, 0.0)
    step = e.plan(0.0)
    assert step is not None
    e.complete(step)  # a's prompt is computed and cached
    b = request("b", (*shared, ("b", 10)), 650, output=200)
    e.add(b, step.end_s)
    step = e.plan(step.end_s)
    assert step is not None
    assert b.cached_tokens == 640
    cache = kv(e)
    assert all(cache.refs[h] == 2 for h in block_hashes(shared, BS, 640))
    # 40 shared blocks once, plus each request's own blocks.
    assert e.gpu.used == 40 + (a.blocks - 40) + (b.blocks - 40)
    e.complete(step)
    e.check_invariants()
    run(e, step.end_s)


def test_at_least_one_prompt_token_is_computed_on_a_full_hit() -> None:
    e = engine()
    content = (("doc", 160),)
    e.add(request("a", content, 160), 0.0)
    run(e)
    again = request("b", content, 160)
    e.add(again, 1.0)
    run(e, 1.0)
    assert again.cached_tokens == 144  # 9 of the 10 blocks: the last token is computed
    assert again.first_token_s is not None


def test_freed_blocks_are_evicted_least_recently_used_and_tail_first() -> None:
    e = engine(blocks=12)
    a = request("a", (("a", 96),), 97, output=1)  # 6 cached blocks (and a partial one)
    e.add(a, 0.0)
    run(e)
    cache = kv(e)
    hashes = block_hashes((("a", 96),), BS, 97)
    assert list(cache.lru) == list(reversed(hashes))  # the tail is first in line to go
    b = request("b", None, 128, output=1)  # 8 blocks: 6 free ones, then 2 cached ones go
    e.add(b, 1.0)
    run(e, 1.0)
    assert cache.evictions == 2
    assert set(cache.refs) == set(hashes[:4])  # the head of a's prompt is still cached
    c = request("c", (("a", 96),), 97, output=1)
    e.add(c, 2.0)
    run(e, 2.0)
    assert c.cached_tokens == 4 * BS


def test_prefix_caching_can_be_switched_off_and_refuses_swap_preemption() -> None:
    e = engine(caching=False)
    content = (("system", 320),)
    for k in range(2):
        e.add(request(f"r{k}", content, 400), float(k))
        run(e, float(k))
    assert e.kv.__class__.__name__ == "PagedKV"
    with pytest.raises(ValueError, match="preempts by recompute"):
        EngineConfig(enable_prefix_caching=True, preemption_mode="swap")
    assert not EngineConfig(preemption_mode="swap").prefix_caching
    assert EngineConfig().prefix_caching


STREAMS = ("s0", "s1", "s2")


class CacheMachine(RuleBasedStateMachine):
    """Random arrivals, steps and aborts on a small pool: the cache's books always balance,
    no block is both free and held, and every hit was stored before."""

    def __init__(self) -> None:
        super().__init__()
        self.e = engine(blocks=60, seqs=6)
        self.now = 0.0
        self.k = 0
        self.stored: set[int] = set()
        self.live: list[EngineRequest] = []

    @rule(
        stream=st.sampled_from(STREAMS),
        shared=st.integers(0, 300),
        prompt=st.integers(1, 400),
        output=st.integers(1, 60),
    )
    def arrive(self, stream: str, shared: int, prompt: int, output: int) -> None:
        content: Content = ((stream, shared + 200),) if shared else ()
        r = request(f"r{self.k}", content or None, prompt, output)
        r.priority = float(self.k % 11)
        self.k += 1
        if self.e.add(r, self.now):
            self.live.append(r)

    @rule()
    def step(self) -> None:
        cache = kv(self.e)
        before = set(cache.refs)
        step = self.e.plan(self.now)
        if step is None:
            return
        hit = {h for r in self.live for h in cache._held.get(id(r), ())}
        assert hit <= before | self.stored | set(cache.refs)
        self.now = step.end_s
        self.e.complete(step)
        self.stored |= set(cache.refs)

    @rule(i=st.integers(0, 50))
    def abort(self, i: int) -> None:
        if self.live:
            self.e.abort(self.live[i % len(self.live)], self.now)

    @rule(stream=st.sampled_from(STREAMS), rank=st.none() | st.floats(0, 10), way=st.floats(0, 9))
    def pin(self, stream: str, rank: float | None, way: float) -> None:
        """An application pins what its stream has cached (ranked or not), as retention does;
        the requests that come after are ranked too, so ranked pins give way to some."""
        cache = kv(self.e)
        cache.pin((stream, self.k), block_hashes(((stream, 500),), BS, 500), way, rank)
        self.k += 1

    @rule(i=st.integers(0, 50))
    def unpin(self, i: int) -> None:
        cache = kv(self.e)
        if cache.pins:
            cache.unpin(list(cache.pins)[i % len(cache.pins)])

    @invariant()
    def books_balance(self) -> None:
        self.e.check_invariants()
        cache = kv(self.e)
        assert len(cache.lru) <= self.e.gpu.free + len(cache.lru)
        for r in self.live:
            assert r.cached_tokens <= max(0, r.prompt_tokens - 1)
            assert r.cached_tokens % BS == 0


CacheMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40)
TestCacheMachine = CacheMachine.TestCase


def test_a_cpu_tier_keeps_evicted_blocks_and_loads_them_back_over_pcie() -> None:
    def second_prefill_time(tier_bytes: float) -> tuple[int, int, float]:
        cfg = EngineConfig(num_gpu_blocks=70, cpu_kv_cache_bytes=tier_bytes)
        e = Engine(MODEL, cfg)
        e.add(request("a", (("a", 960),), 961, output=1), 0.0)
        now = run(e)
        e.add(request("b", None, 1120, output=1), now)  # fills the GPU: a's blocks evicted
        now = run(e, now)
        c = request("c", (("a", 960),), 961, output=1)
        e.add(c, now)
        step = e.plan(now)
        assert step is not None
        e.complete(step)
        run(e, step.end_s)
        return c.cached_tokens, kv(e).reloaded, step.end_s - step.start_s

    block_bytes = BS * MODEL.kv_bytes_per_token
    none = second_prefill_time(0.0)
    tier = second_prefill_time(100 * block_bytes)
    assert none[:2] == (0, 0)  # evicted and gone
    assert tier[:2] == (960, 60)  # evicted to the CPU tier and loaded back
    # Copying 60 blocks over PCIe costs less than computing their 960 tokens again.
    assert tier[2] < none[2]


def test_a_pin_keeps_an_idle_prefix_until_let_go_and_gives_way_under_pressure() -> None:
    e = engine(blocks=12)
    content = (("agent", 96),)
    e.add(request("a", content, 97, output=1), 0.0)
    now = run(e)
    cache = kv(e)
    hashes = block_hashes(content, BS, 97)
    assert cache.pin("app", hashes) == 6
    assert not cache.lru  # pinned: off the free queue
    assert e.gpu.used == 6
    e.check_invariants()
    # A request that needs the whole pool: the pin gives way rather than stall the engine.
    big = request("big", None, 190, output=1)
    e.add(big, now)
    now = run(e, now)
    assert big.state is RequestState.FINISHED
    assert cache.pins_broken == 1
    assert not cache.pins
    cache.unpin("app")  # already gone: nothing happens
    e.check_invariants()


def test_offload_and_prefetch_move_cached_blocks_through_the_cpu_tier() -> None:
    cfg = EngineConfig(num_gpu_blocks=40, cpu_kv_cache_bytes=100 * BS * MODEL.kv_bytes_per_token)
    e = Engine(MODEL, cfg)
    content = (("agent", 160),)
    e.add(request("a", content, 161, output=1), 0.0)
    now = run(e)
    cache = kv(e)
    hashes = block_hashes(content, BS, 161)
    assert cache.offload(hashes) == 10
    assert not set(hashes) & set(cache.refs)
    assert set(hashes) <= set(cache.cpu_lru)
    assert cache.prefetch(hashes) == 10
    again = request("b", content, 161, output=1)
    e.add(again, now)
    run(e, now)
    assert again.cached_tokens == 160
    assert cache.reloaded == 10  # the prefetch copied them; the hit found them on the GPU


def test_forget_drops_free_cached_blocks_on_both_tiers_and_never_held_ones() -> None:
    cfg = EngineConfig(num_gpu_blocks=40, cpu_kv_cache_bytes=100 * BS * MODEL.kv_bytes_per_token)
    e = Engine(MODEL, cfg)
    content = (("agent", 160),)
    e.add(request("a", content, 161, output=1), 0.0)
    now = run(e)
    cache = kv(e)
    hashes = block_hashes(content, BS, 161)
    assert cache.offload(hashes[:4]) == 4  # four on the CPU tier, six free on the GPU
    cache.pin("app", hashes[8:])  # two held
    free_before = e.gpu.free
    assert cache.forget(hashes) == 8
    assert cache.forgotten == 8
    assert set(cache.refs) == set(hashes[8:])  # the held ones stay
    assert not cache.cpu_lru
    assert not cache.lru
    assert e.gpu.free == free_before  # dropping content frees no block: they were free
    e.check_invariants()
    again = request("b", content, 161, output=1)
    e.add(again, now)
    run(e, now)
    assert again.cached_tokens == 0  # the chain breaks at the first block dropped


def test_under_pressure_the_pin_marked_to_give_way_first_goes_first() -> None:
    e = engine(blocks=30)
    cache = kv(e)
    now = 0.0
    contents = {name: ((name, 96),) for name in ("early", "late", "mid")}
    for name, content in contents.items():
        e.add(request(name, content, 97, output=1), now)
        now = run(e, now)
    for name, way in (("early", 5.0), ("late", 50.0), ("mid", 20.0)):
        assert cache.pin(name, block_hashes(contents[name], BS, 97), give_way=way) == 6
    assert cache.break_a_pin()
    assert list(cache.pins) == ["early", "mid"]  # the one expected back latest went
    assert cache.break_a_pin()
    assert list(cache.pins) == ["early"]
    e.check_invariants()
    assert cache.pin("none", [12345]) == 0  # nothing cached to hold: no pin
    assert list(cache.pins) == ["early"]


def test_a_ranked_pin_gives_way_only_to_a_waiting_request_ranked_ahead_of_its_owner() -> None:
    # 20 blocks: two pinned prefixes of 6 and a running request of 2 leave 6 free, and a
    # waiting request needs 10. One iteration per step, so that the runner keeps running.
    e = Engine(MODEL, EngineConfig(num_gpu_blocks=20), decode_runs=False)
    cache = kv(e)
    now = 0.0
    contents = {name: ((name, 96),) for name in ("ranked-5", "unranked")}
    for name, content in contents.items():
        e.add(request(name, content, 97, output=1), now)
        now = run(e, now)
    assert cache.pin("ranked-5", block_hashes(contents["ranked-5"], BS, 97), rank=5.0) == 6
    assert cache.pin("unranked", block_hashes(contents["unranked"], BS, 97)) == 6
    assert not cache.break_a_pin_ranked_below(5.0)  # ranked level with the owner: no
    runner = request("runner", None, 17, output=50)
    e.add(runner, now)
    step = e.plan(now)
    assert step is not None
    now = step.end_s
    e.complete(step)

    behind, ahead = request("behind", None, 150, 1), request("ahead", None, 150, 1)
    behind.priority, ahead.priority = 9.0, 1.0
    e.add(behind, now)
    step = e.plan(now)
    assert step is not None
    assert behind not in [c[0] for c in step.chunks]  # ranked behind the owner: it waits
    assert set(cache.pins) == {"ranked-5", "unranked"}
    now = step.end_s
    e.complete(step)
    e.check_invariants()

    e.add(ahead, now)
    step = e.plan(now)
    assert step is not None
    assert ahead in [c[0] for c in step.chunks]  # ranked ahead: the ranked pin made room
    assert behind not in [c[0] for c in step.chunks]
    assert set(cache.pins) == {"unranked"}  # a pin without a rank yields only to memory
    assert cache.pins_broken == 1
    e.complete(step)
    e.check_invariants()
    run(e, step.end_s)
    assert {r.state for r in (runner, behind, ahead)} == {RequestState.FINISHED}
