"""Admission in the gateway (issue 15, item 3): the dispatcher under a moving limit, the
`concurrency` field, reading vLLM's /metrics, and the feed that drives each upstream's
controller."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from hermes.config_base import ConfigError
from hermes.emulator.engine import EmulatedEngine
from hermes.emulator.metrics import metrics_text
from hermes.engine.engine_config import EngineConfig
from hermes.gateway.admission_feed import STALE_S, AdmissionFeed, parse_vllm_metrics
from hermes.gateway.config import Backend, emulated_default, gateway_config_from_dict
from hermes.gateway.dispatch import Dispatcher, Grant, Upstream, Waiting
from hermes.gateway.upstream import UpstreamClient
from hermes.policies.admission import AutoLimit, FixedLimit
from hermes.profiles import load_profile
from hermes.testing.prometheus_text import metric_sum

# The dispatcher under a moving limit ----------------------------------------------------------


def _one(limit: int) -> Dispatcher:
    return Dispatcher([Upstream("a", frozenset({"m"}), limit)])


def test_a_raised_limit_grants_waiting_calls_at_once() -> None:
    d = _one(1)
    grants = [d.submit(i, "m", float(i))[1] for i in range(5)]
    assert [len(g) for g in grants] == [1, 0, 0, 0, 0]
    assert d.waiting_for("a") == 4
    raised = d.set_limit("a", 3)
    assert [g.call.key for g in raised] == [1, 2]  # the best-ranked ones, in order
    assert (d.busy("a"), d.queued, d.waiting_for("a"), d.room("a")) == (3, 2, 2, 0)


def test_a_lowered_limit_cuts_nothing_and_holds_new_grants() -> None:
    d = _one(4)
    for i in range(6):
        d.submit(i, "m", float(i))
    assert d.busy("a") == 4
    assert d.set_limit("a", 2) == []
    assert (d.busy("a"), d.room("a")) == (4, 0)  # the four run on
    assert d.release("a") == []  # 3 left, over the limit: no grant
    assert d.release("a") == []  # 2 left: at the limit
    grants = d.release("a")  # 1 left: one slot under the limit
    assert [g.call.key for g in grants] == [4]
    assert d.busy("a") == 2


def test_a_limit_below_one_is_refused() -> None:
    d = _one(2)
    with pytest.raises(ValueError, match="upstream 'a': a limit must be a whole number >= 1"):
        d.set_limit("a", 0)
    with pytest.raises(ValueError, match="upstream 'b'"):
        Dispatcher([Upstream("b", frozenset({"m"}), 0)])
    assert d.limit_of("a") == 2


def test_most_free_routes_by_the_current_limit() -> None:
    d = Dispatcher([Upstream("a", frozenset({"m"}), 2), Upstream("b", frozenset({"m"}), 2)])
    d.set_limit("b", 8)
    _, grants = d.submit(0, "m", 0.0)
    assert grants[0].upstream == "b"  # 8 free there against 2


_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.sampled_from(["m", "n"]), st.floats(0, 10)),
        st.tuples(st.just("release"), st.sampled_from(["a", "b"]), st.just(0.0)),
        st.tuples(st.just("limit"), st.sampled_from(["a", "b"]), st.integers(1, 6)),
        st.tuples(st.just("cancel"), st.just(""), st.integers(0, 50)),
        st.tuples(st.just("health"), st.sampled_from(["a", "b"]), st.booleans()),
    ),
    max_size=80,
)


def _check(d: Dispatcher, before: dict[str, int], grants: list[Grant]) -> None:
    waiting = list(d.waiting())
    assert d.queued == len(waiting)
    for u in d.upstreams:
        name = u.name
        # A grant only ever fills a slot under the limit; a lower limit cuts nothing.
        if d.busy(name) > before[name]:
            assert d.busy(name) <= d.limit_of(name)
        assert d.waiting_for(name) == sum(1 for w in waiting if w.model in d.loaded(name))
        # Work-conserving: no call waits that a healthy upstream with room could take.
        if d.healthy(name) and d.room(name) > 0:
            assert d.waiting_for(name) == 0
    assert all(g.call.granted for g in grants)


@settings(max_examples=150, deadline=None)
@given(ops=_OPS)
def test_a_moving_limit_never_deadlocks(ops: list[tuple[str, str, float]]) -> None:
    d = Dispatcher([Upstream("a", frozenset({"m"}), 2), Upstream("b", frozenset({"m", "n"}), 1)])
    calls: list[Waiting] = []
    for op, arg, x in ops:
        before = {u.name: d.busy(u.name) for u in d.upstreams}
        grants: list[Grant] = []
        if op == "submit":
            w, grants = d.submit(len(calls), arg, x)
            calls.append(w)
        elif op == "release" and d.busy(arg):
            grants = d.release(arg)
        elif op == "limit":
            grants = d.set_limit(arg, int(x))
        elif op == "cancel" and calls:
            d.cancel(calls[int(x) % len(calls)])
        elif op == "health":
            grants = d.set_health(arg, bool(x))
        _check(d, before, grants)
    # However the limits moved, with the upstreams healthy every call is served in the end.
    for name in ("a", "b"):
        d.set_health(name, True)
    for _ in range(len(calls) + 2):
        for name in ("a", "b"):
            if d.busy(name):
                d.release(name)
    assert d.queued == 0
    assert all(w.granted or w.cancelled for w in calls)


# The config ------------------------------------------------------------------------------------


def _backend(**kw: object) -> dict[str, object]:
    return {"name": "a", "url": "http://127.0.0.1:1", "models": ["m"]} | kw


def test_concurrency_is_auto_by_default_and_takes_numbers() -> None:
    cfg = gateway_config_from_dict({"backends": [_backend(), _backend(name="b", concurrency=6)]})
    a, b = cfg.backends
    assert (a.concurrency, a.max_concurrency, a.max_limit) == ("auto", 256, 256)
    assert (b.concurrency, b.max_limit) == (6, 6)
    c = gateway_config_from_dict({"backends": [_backend(max_concurrency=32)]})
    assert c.backends[0].max_limit == 32
    assert emulated_default().backends[0].concurrency == "auto"  # hermes serve --emulate


@pytest.mark.parametrize("bad", [0, -3, "fast", "16", True, 2.5, None])
def test_a_bad_concurrency_says_what_was_expected(bad: object) -> None:
    with pytest.raises(ConfigError) as e:
        gateway_config_from_dict({"backends": [_backend(concurrency=bad)]}, "gw.yaml")
    where = "gw.yaml: backends[0].concurrency: "
    assert where + 'concurrency must be a whole number >= 1 or "auto"' in str(e.value)


def test_max_concurrency_must_be_positive() -> None:
    with pytest.raises(ConfigError, match=r"backends\[0\]\.max_concurrency"):
        gateway_config_from_dict({"backends": [_backend(max_concurrency=0)]})


# vLLM's /metrics -------------------------------------------------------------------------------

_VLLM_PAGE = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
vllm:num_requests_running{engine="1",model_name="m"} 2.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 4.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{engine="0",model_name="m"} 1500.0
vllm:generation_tokens_total{engine="1",model_name="m"} 500.0
vllm:generation_tokens_created{engine="0",model_name="m"} 1.7e9
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="m"} 7.0
vllm:time_to_first_token_seconds_count{model_name="m"} 9.0
"""


def test_vllm_metrics_are_read_and_summed_over_engines() -> None:
    s = parse_vllm_metrics(_VLLM_PAGE, at=5.0)
    assert s is not None
    assert (s.at, s.running, s.waiting, s.generation_tokens, s.kv_usage) == (
        5.0,
        5,
        4,
        2000.0,
        0.25,
    )
    old = _VLLM_PAGE.replace("kv_cache_usage_perc", "gpu_cache_usage_perc")
    assert parse_vllm_metrics(old, 0.0).kv_usage == 0.25  # type: ignore[union-attr]
    assert parse_vllm_metrics("# TYPE up gauge\nup 1.0\n", 0.0) is None
    assert parse_vllm_metrics("", 0.0) is None


def test_the_emulator_exports_vllm_style_metrics() -> None:
    asyncio.run(_the_emulator_exports_vllm_style_metrics())


async def _the_emulator_exports_vllm_style_metrics() -> None:
    engine = EmulatedEngine(
        load_profile("llama-2-7b", "a100", None), EngineConfig(), time_scale=0.01
    )
    async with engine:
        handle = engine.submit(64, 12)
        await handle.result()
        s = parse_vllm_metrics(metrics_text({"m": engine, "alias": engine}), 0.0)
    assert s is not None
    assert (s.running, s.waiting, s.generation_tokens) == (0, 0, 12.0)
    assert s.kv_usage is not None
    assert 0.0 <= s.kv_usage <= 1.0


# The feed --------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Call:
    """What the feed reads of a call."""

    chunks: int = 0
    rt: bool = False
    granted_s: float | None = None
    first_token_s: float | None = None


class _Recorder(FixedLimit):
    """A fixed limit that keeps what it observed, and whose limit a test moves."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.seen: list[dict[str, float]] = []
        self.calls: list[dict[str, float | None]] = []

    def set(self, n: int) -> None:
        self._n = n

    def observe(
        self, now: float, *, in_engine: int, waiting: int, output_tokens: int, rt_in_engine: int = 0
    ) -> int:
        self.seen.append(
            {"now": now, "in": in_engine, "wait": waiting, "tok": output_tokens, "rt": rt_in_engine}
        )
        return self._n

    def record_call(
        self,
        now: float,
        *,
        ttft_s: float | None,
        tpot_s: float | None,
        prompt_tokens: int,
        output_tokens: int,
    ) -> None:
        self.calls.append({"ttft": ttft_s, "tpot": tpot_s, "out": output_tokens})


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


_REGISTRIES: dict[int, CollectorRegistry] = {}


def _text(feed: AdmissionFeed) -> str:
    return generate_latest(_REGISTRIES[id(feed)]).decode()


def _feed(
    url: str = "http://127.0.0.1:1", limit: int = 1
) -> tuple[AdmissionFeed, Dispatcher, _Recorder, _Clock, list[Grant]]:
    backend = Backend(name="a", kind="vllm", url=url, models=["m"])
    rec, clock, registry = _Recorder(limit), _Clock(), CollectorRegistry()
    clients = {"a": UpstreamClient(backend, 1.0)}
    feed = AdmissionFeed([backend], clients, registry, clock, {"a": rec})
    _REGISTRIES[id(feed)] = registry
    d = Dispatcher([Upstream("a", frozenset({"m"}), feed.limit("a"))])
    granted: list[Grant] = []
    feed.attach(d, granted.extend)
    return feed, d, rec, clock, granted


def test_a_limit_the_controller_raises_grants_waiting_calls() -> None:
    feed, d, rec, clock, granted = _feed(limit=1)
    for i in range(4):
        d.submit(i, "m", float(i))
    rec.set(3)
    clock.t = 1.0
    feed.tick()
    assert [g.call.key for g in granted] == [1, 2]
    assert d.limit_of("a") == 3
    assert rec.seen[-1] == {"now": 1.0, "in": 1, "wait": 3, "tok": 0, "rt": 0}


def test_tokens_come_from_streamed_chunks_and_usage_and_never_go_back() -> None:
    feed, _, rec, clock, _ = _feed()
    a, b = _Call(granted_s=0.0), _Call(rt=True, granted_s=0.0)
    feed.started(a, "a")  # type: ignore[arg-type]
    feed.started(b, "a")  # type: ignore[arg-type]
    a.chunks, b.chunks = 11, 4  # a role chunk, then tokens
    a.first_token_s = 0.5
    clock.t = 1.0
    feed.tick()
    assert (rec.seen[-1]["tok"], rec.seen[-1]["rt"]) == (13, 1)
    clock.t = 2.5
    feed.left(a, "a")  # type: ignore[arg-type]
    feed.finished(a, "a", 100, 12, ok=True)  # type: ignore[arg-type]
    assert rec.seen[-1]["tok"] == 15  # 12 of a, 3 of b
    assert rec.calls[-1] == {"ttft": 0.5, "tpot": pytest.approx(2.0 / 11), "out": 12}
    assert rec.seen[-1]["rt"] == 1  # b, real-time, still runs
    feed.started(b, "a")  # type: ignore[arg-type]  # told twice: still one call
    feed.left(b, "a")  # type: ignore[arg-type]
    feed.finished(b, "a", 10, 1, ok=False)  # type: ignore[arg-type]  # usage: fewer than the chunks
    assert rec.seen[-1]["tok"] == 15
    assert rec.seen[-1]["rt"] == 0
    feed.left(b, "a")  # type: ignore[arg-type]  # told twice: not below none
    feed.tick()
    assert rec.seen[-1]["rt"] == 0
    assert len(rec.calls) == 1  # a failed call's timings are not the engine's


async def _serve_metrics(pages: list[tuple[int, str]]) -> tuple[web.AppRunner, str]:
    """A loopback server whose /metrics answers `pages` in turn (the last one again)."""

    async def metrics(request: web.Request) -> web.Response:
        status, text = pages.pop(0) if len(pages) > 1 else pages[0]
        return web.Response(status=status, text=text)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


def test_scraped_engine_counts_are_preferred_and_a_failure_falls_back() -> None:
    asyncio.run(_scraped_engine_counts_are_preferred_and_a_failure_falls_back())


async def _scraped_engine_counts_are_preferred_and_a_failure_falls_back() -> None:
    page2 = _VLLM_PAGE.replace("1500.0", "1700.0")
    runner, url = await _serve_metrics([(200, _VLLM_PAGE), (200, page2), (500, "boom")])
    feed, d, rec, clock, _ = _feed(url)
    await feed.clients["a"].start()
    try:
        d.submit(0, "m", 0.0)  # one call in flight by the gateway's count
        assert await feed.scrape("a") is not None
        feed.tick()
        assert (rec.seen[-1]["in"], rec.seen[-1]["tok"]) == (5, 0)  # the engine's running
        clock.t = 1.0
        assert await feed.scrape("a") is not None
        feed.tick()
        assert rec.seen[-1]["tok"] == 200  # the engine's counter moved by 200
        clock.t = 2.0
        assert await feed.scrape("a") is None  # 500: logged, counted
        text = _text(feed)
        failures = "hermes_upstream_metrics_scrape_failures_total"
        assert metric_sum(text, failures, upstream="a") == 1.0
        # What the engine said last, on the gateway's /metrics too.
        assert metric_sum(text, "hermes_upstream_engine_requests_running", upstream="a") == 5
        assert metric_sum(text, "hermes_upstream_engine_requests_waiting", upstream="a") == 4
        assert metric_sum(text, "hermes_upstream_engine_kv_cache_usage", upstream="a") == 0.25
        clock.t = 1.0 + STALE_S + 0.1  # the last good sample has gone stale
        feed.tick()
        assert (rec.seen[-1]["in"], rec.seen[-1]["tok"]) == (1, 200)  # the gateway's counts
    finally:
        await feed.clients["a"].close()
        await runner.cleanup()


def test_an_upstream_not_marked_vllm_is_asked_once() -> None:
    asyncio.run(_an_upstream_not_marked_vllm_is_asked_once())


async def _an_upstream_not_marked_vllm_is_asked_once() -> None:
    runner, url = await _serve_metrics([(200, "# TYPE up gauge\nup 1.0\n")])
    backend = Backend(name="a", kind="sglang", url=url, models=["m"])
    registry = CollectorRegistry()
    feed = AdmissionFeed([backend], {"a": UpstreamClient(backend, 1.0)}, registry, _Clock())
    await feed.clients["a"].start()
    try:
        assert await feed.scrape("a") is None
        assert feed._up["a"].scrape is False  # no vLLM series: not asked again
        text = generate_latest(registry).decode()
        assert metric_sum(text, "hermes_upstream_metrics_scrape_failures_total") == 0.0
    finally:
        await feed.clients["a"].close()
        await runner.cleanup()


class _Described(_Recorder):
    def describe(self) -> dict[str, float | int | str]:
        return {"kind": "test", "limit": self._n, "knee": 5, "Demand tokens/s": 2.5}


def test_metrics_export_each_upstreams_limit_and_controller_state() -> None:
    backends = [
        Backend(name="fixed", url="http://127.0.0.1:1", models=["m"], concurrency=6),
        Backend(name="auto", url="http://127.0.0.1:1", models=["m"], max_concurrency=64),
        Backend(name="t", url="http://127.0.0.1:1", models=["m"]),
    ]
    registry, clock = CollectorRegistry(), _Clock()
    clients = {b.name: UpstreamClient(b, 1.0) for b in backends}
    feed = AdmissionFeed(backends, clients, registry, clock, {"t": _Described(3)})
    assert isinstance(feed.admission("auto"), AutoLimit)
    d = Dispatcher([Upstream(b.name, frozenset(b.models), feed.limit(b.name)) for b in backends])
    feed.attach(d, lambda grants: None)
    assert [d.limit_of(b.name) for b in backends] == [6, 64, 3]  # auto starts at its max
    feed.tick()
    text = generate_latest(registry).decode()
    limit = "hermes_upstream_concurrency_limit"
    assert [metric_sum(text, limit, upstream=b.name) for b in backends] == [6, 64, 3]
    assert metric_sum(text, "hermes_upstream_admission_knee", upstream="t") == 5
    assert metric_sum(text, "hermes_upstream_admission_demand_tokens_s", upstream="t") == 2.5
    assert "hermes_upstream_admission_limit" not in text  # the limit has its own gauge


def test_a_whole_answer_spanning_a_scrape_is_not_counted_twice() -> None:
    asyncio.run(_a_whole_answer_spanning_a_scrape_is_not_counted_twice())


async def _a_whole_answer_spanning_a_scrape_is_not_counted_twice() -> None:
    later = _VLLM_PAGE.replace("1500.0", "1600.0")  # the engine made 100 tokens since
    runner, url = await _serve_metrics([(200, _VLLM_PAGE), (200, later)])
    feed, _, rec, clock, _ = _feed(url)
    await feed.clients["a"].start()
    try:
        call = _Call(granted_s=0.0)  # not streamed: its tokens come with its end
        feed.started(call, "a")  # type: ignore[arg-type]
        clock.t = 1.0
        await feed.scrape("a")
        clock.t = 2.0
        feed.left(call, "a")  # type: ignore[arg-type]
        feed.finished(call, "a", 50, 100, ok=True)  # type: ignore[arg-type]
        # Half its time in the engine came after the scrape: half its tokens are new.
        assert rec.seen[-1]["tok"] == 50
        clock.t = 2.5
        await feed.scrape("a")
        feed.tick()
        assert rec.seen[-1]["tok"] == 100  # what the engine made, not 150
    finally:
        await feed.clients["a"].close()
        await runner.cleanup()


def test_a_metrics_page_that_arrives_in_pieces_is_read_whole() -> None:
    asyncio.run(_a_metrics_page_that_arrives_in_pieces_is_read_whole())


async def _a_metrics_page_that_arrives_in_pieces_is_read_whole() -> None:
    filler = "".join(
        f'vllm:e2e_request_latency_seconds_bucket{{le="{i}",model_name="m"}} {i}.0\n'
        for i in range(4000)
    )  # vLLM's page is mostly histograms, the series the feed wants among them

    async def metrics(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for k in range(0, len(filler), 40_000):
            await resp.write(filler[k : k + 40_000].encode())
            await asyncio.sleep(0.01)  # each piece its own read
        await resp.write(_VLLM_PAGE.encode())
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    feed, _, _, _, _ = _feed(f"http://127.0.0.1:{runner.addresses[0][1]}")
    await feed.clients["a"].start()
    try:
        sample = await feed.scrape("a")
        assert sample is not None
        assert (sample.running, sample.generation_tokens) == (5, 2000.0)
    finally:
        await feed.clients["a"].close()
        await runner.cleanup()
