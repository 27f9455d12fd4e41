"""Admission in the gateway: each upstream's limit, moved by its admission controller
(`policies.admission`, the simulator's object) from what the gateway sees.

One `Admission` per upstream (`concurrency: auto`: the adaptive controller, between 1 and
`max_concurrency`; a number: a fixed limit). The controller is fed

- on every call's start (its grant) and end: the calls in flight, so that none is missed; at
  its end, its time to first token and time per output token (streams; both measured from
  the grant, so queueing in the gateway is not counted) and its tokens;
- every `TICK_S`: the calls in the engine, the calls waiting that the upstream could take, and
  the cumulative output tokens the upstream has produced (ended calls' usage plus the chunks
  relayed so far of those still streaming).

Where the upstream is vLLM (kind vllm or emulated, or any whose /metrics answers with `vllm:`
series) its /metrics is scraped every `SCRAPE_S` in the background, and while a scrape is
fresh its `vllm:generation_tokens_total` is preferred to the gateway's own count (it sees
every token as it is made, and other clients' calls), and its `vllm:num_requests_running`
counts when it exceeds the gateway's calls in flight (other clients again; the gateway's own
count is exact and current, the engine's a second old). The token series the controller gets
is then the engine's counter as of the last scrape plus the tokens the gateway saw made since
(a whole answer's tokens spread evenly over its time in the engine), so that it moves between
scrapes rather than in steps that the controller's windows would alias; it never goes back.
A failed scrape is logged (once until one succeeds again) and counted; the gateway falls back
to its own counts.

Each observation returns the limit; a changed one goes to the dispatcher (`set_limit`), whose
grants (a raise grants waiting calls at once) are carried out here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from hermes.gateway.config import Backend
from hermes.gateway.dispatch import Dispatcher, Grant
from hermes.gateway.supervise import every
from hermes.gateway.upstream import UpstreamClient
from hermes.policies.admission import Admission, make_admission
from hermes.types import Clock

if TYPE_CHECKING:
    from hermes.gateway.calls import Call

log = logging.getLogger("hermes.gateway")

TICK_S = 0.5  # the controller's timer (it decides at its own interval, from these)
SCRAPE_S = 1.0  # between scrapes of an upstream's /metrics
SCRAPE_TIMEOUT_S = 2.0
STALE_S = 3.0  # an engine sample older than this is not used: the gateway's counts are
_MAX_METRICS_BYTES = 4 << 20  # a /metrics page larger than this is not read
_VLLM_KINDS = ("vllm", "emulated")

_RUNNING = "vllm:num_requests_running"
_WAITING = "vllm:num_requests_waiting"
_TOKENS = "vllm:generation_tokens_total"
_KV = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")  # the latter: before v0.10
_WANTED = (_RUNNING, _WAITING, _TOKENS, *_KV)


@dataclass(frozen=True, slots=True)
class EngineSample:
    """What a vLLM engine's /metrics said, summed over its label sets (models, engines)."""

    at: float
    running: int
    waiting: int
    generation_tokens: float  # cumulative since the engine started
    kv_usage: float | None  # 0..1


def parse_vllm_metrics(text: str, at: float) -> EngineSample | None:
    """The engine sample in a Prometheus text page, or None if it has no `vllm:` running
    count or token counter. Only the few wanted lines are parsed (vLLM's page is mostly
    histograms)."""
    lines = [ln for ln in text.splitlines() if ln.startswith(_WANTED)]
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families("\n".join(lines) + "\n"):
        for s in family.samples:
            if s.name in _WANTED:
                sums[s.name] = sums.get(s.name, 0.0) + s.value
    if _RUNNING not in sums or _TOKENS not in sums:
        return None
    kv = next((sums[k] for k in _KV if k in sums), None)
    return EngineSample(at, int(sums[_RUNNING]), int(sums.get(_WAITING, 0)), sums[_TOKENS], kv)


@dataclass(slots=True, eq=False)
class _Upstream:
    name: str
    admission: Admission
    scrape: bool | None  # True: vLLM; None: probe once; False: never
    running: dict[Call, int] = field(default_factory=dict)  # call -> its tokens counted
    rt_running: int = 0  # of `running`, the real-time calls (kept, not counted per call end)
    own_tokens: float = 0.0  # output tokens the gateway has seen from this upstream
    tokens: float = 0.0  # the series the controller gets (monotone)
    base_own: float = 0.0  # own_tokens at the last observation
    engine: EngineSample | None = None
    anchor: float = 0.0  # the series at the last scrape, advanced by the engine's counter
    since_scrape: float = 0.0  # of own_tokens, those made after the last scrape (estimated)
    last_tick: float | None = None
    scrape_failing: bool = False
    described: Mapping[str, float | int | str] = field(default_factory=dict)


def _streamed_tokens(call: Call) -> int:
    """Tokens a stream has relayed so far: its chunks less the first (vLLM's role-only one)."""
    return max(0, call.chunks - 1)


class AdmissionFeed:
    """The admission controllers of `backends` (made from each one's `concurrency`, unless
    `admissions` gives one by name), fed and obeyed. `attach` gives the dispatcher they set
    limits on and what carries out the grants a raised limit makes."""

    def __init__(
        self,
        backends: Sequence[Backend],
        clients: Mapping[str, UpstreamClient],
        registry: CollectorRegistry,
        clock: Clock,
        admissions: Mapping[str, Admission] | None = None,
    ) -> None:
        self.clients = clients
        self.clock = clock
        self.dispatcher: Dispatcher | None = None
        self.grant: Callable[[list[Grant]], None] = lambda grants: None
        self._up: dict[str, _Upstream] = {}
        for b in backends:
            given = (admissions or {}).get(b.name)
            adm = given if given is not None else make_admission(b.concurrency, b.max_limit)
            scrape = None if b.concurrency == "auto" else False
            if scrape is None and b.kind in _VLLM_KINDS:
                scrape = True
            self._up[b.name] = up = _Upstream(b.name, adm, scrape)
            up.described = adm.describe()
        self._tasks: list[asyncio.Task[None]] = []
        self.scrape_failures = Counter(
            "hermes_upstream_metrics_scrape_failures",
            "Failed scrapes of an upstream engine's /metrics (admission falls back to the "
            "gateway's own counts)",
            ["upstream"],
            registry=registry,
        )
        registry.register(_LimitCollector(self))

    def limit(self, upstream: str) -> int:
        """`upstream`'s limit now (the dispatcher's limit at first)."""
        return max(1, self._up[upstream].admission.limit)

    def admission(self, upstream: str) -> Admission:
        return self._up[upstream].admission

    def engine_sample(self, upstream: str) -> EngineSample | None:
        """The last sample scraped from `upstream`'s /metrics, if any."""
        return self._up[upstream].engine

    def attach(self, dispatcher: Dispatcher, grant: Callable[[list[Grant]], None]) -> None:
        self.dispatcher = dispatcher
        self.grant = grant

    # Life cycle ------------------------------------------------------------------------------

    def start(self, failures: Counter) -> None:
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(every("admission", TICK_S, self.tick, failures)))
        for up in self._up.values():
            if up.scrape is not False:
                self._tasks.append(loop.create_task(self._scrape_loop(up)))

    async def close(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    # Calls -----------------------------------------------------------------------------------

    def started(self, call: Call, upstream: str) -> None:
        """`call` was granted a slot on `upstream`: observed, so that the controller sees
        every change of the calls in flight (a call shorter than a tick would be missed); a
        new limit waits for the next observation (this runs inside the grants' loop)."""
        up = self._up[upstream]
        if call not in up.running:
            up.running[call] = 0
            up.rt_running += call.rt
        self._observe(up, self.clock(), apply=False)

    def left(self, call: Call, upstream: str) -> None:
        """`call` gave its slot on `upstream` back (ended, or to be retried elsewhere)."""
        up = self._up[upstream]
        counted = up.running.pop(call, None)
        if counted is not None:
            up.rt_running -= call.rt
            self._credit(up, _streamed_tokens(call) - counted, up.last_tick, self.clock())

    def finished(self, call: Call, upstream: str, prompt: int, completion: int, ok: bool) -> None:
        """`call` ended on `upstream` with `completion` output tokens (`ok`: answered in
        full): its timings to the controller, then an observation."""
        up = self._up[upstream]
        now = self.clock()
        streamed = _streamed_tokens(call)  # counted already
        # Made since the last tick (a stream), or since its grant (a whole answer).
        since = up.last_tick if streamed else (call.first_token_s or call.granted_s)
        self._credit(up, completion - streamed, since, now)
        if ok:
            ttft = tpot = None
            if call.first_token_s is not None and call.granted_s is not None:
                ttft = max(0.0, call.first_token_s - call.granted_s)
                if completion > 1:
                    tpot = max(0.0, now - call.first_token_s) / (completion - 1)
            up.admission.record_call(
                now, ttft_s=ttft, tpot_s=tpot, prompt_tokens=prompt, output_tokens=completion
            )
        self._observe(up, now)

    # Observations ----------------------------------------------------------------------------

    def tick(self) -> None:
        """The timer's observation of every upstream."""
        now = self.clock()
        for up in self._up.values():
            for call, counted in up.running.items():
                streamed = _streamed_tokens(call)
                if streamed > counted:
                    self._credit(up, streamed - counted, up.last_tick, now)
                    up.running[call] = streamed
            up.last_tick = now
            self._observe(up, now)
            up.described = up.admission.describe()

    @staticmethod
    def _credit(up: _Upstream, tokens: float, since: float | None, now: float) -> None:
        """`tokens` made between `since` and `now`. Of them, the share made after the last
        scrape (made evenly, as far as the gateway knows) is not in the engine's counter yet."""
        if tokens <= 0:
            return
        up.own_tokens += tokens
        scraped = up.engine.at if up.engine is not None else None
        if scraped is None or since is None or since >= scraped or now <= since:
            up.since_scrape += tokens
        elif now > scraped:
            up.since_scrape += tokens * (now - scraped) / (now - since)

    def _observe(self, up: _Upstream, now: float, apply: bool = True) -> None:
        d = self.dispatcher
        if d is None:
            return
        engine = up.engine
        if engine is not None and now - engine.at <= STALE_S:
            up.tokens = max(up.tokens, up.anchor + up.since_scrape)
            # The gateway's own count is exact and current; the engine's, a second old, also
            # sees other clients' calls.
            in_engine = max(d.busy(up.name), engine.running)
        else:
            up.tokens += up.own_tokens - up.base_own
            in_engine = d.busy(up.name)
        up.base_own = up.own_tokens
        limit = up.admission.observe(
            now,
            in_engine=in_engine,
            waiting=d.waiting_for(up.name),
            output_tokens=int(up.tokens),
            rt_in_engine=up.rt_running,
        )
        limit = max(1, limit)  # never 0: a call must not wait on an empty engine
        if apply and limit != d.limit_of(up.name):
            self.grant(d.set_limit(up.name, limit))

    # Scraping --------------------------------------------------------------------------------

    async def _scrape_loop(self, up: _Upstream) -> None:
        while up.scrape is not False:
            try:
                await self.scrape(up.name)
            except Exception:  # a bug here must not end the scrapes for good
                log.exception("scrape of upstream %s's /metrics failed; it runs again", up.name)
            await asyncio.sleep(SCRAPE_S)

    async def scrape(self, upstream: str) -> EngineSample | None:
        """Scrape `upstream`'s /metrics once: its sample, kept for the next observations, or
        None (a failure, logged; or no vLLM series: an upstream not marked vLLM is then not
        scraped again)."""
        up = self._up[upstream]
        client = self.clients[upstream]
        try:
            async with client.session.get(
                client.url + "/metrics", timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_S)
            ) as resp:
                if resp.status != 200:
                    raise ValueError(f"it answered {resp.status}")
                raw = await _read_at_most(resp, _MAX_METRICS_BYTES)
            sample = parse_vllm_metrics(raw.decode("utf-8", "replace"), self.clock())
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            self._scrape_failed(up, str(e) or type(e).__name__)
            return None
        if sample is None:
            self._scrape_failed(up, "no vllm:num_requests_running or generation tokens")
            return None
        if up.scrape_failing:
            log.info("upstream %s's /metrics answers again: admission uses it", upstream)
        last = up.engine
        if last is None or sample.generation_tokens < last.generation_tokens:  # (re)started
            up.anchor = up.tokens
        else:
            up.anchor += sample.generation_tokens - last.generation_tokens
        up.since_scrape = 0.0
        up.scrape, up.scrape_failing, up.engine = True, False, sample
        return sample

    def _scrape_failed(self, up: _Upstream, why: str) -> None:
        if up.scrape is None:  # not marked vLLM, and its /metrics is not vLLM's: stop asking
            log.info("upstream %s has no vLLM /metrics (%s): admission uses calls", up.name, why)
            up.scrape = False
            return
        self.scrape_failures.labels(up.name).inc()
        if not up.scrape_failing:
            log.warning(
                "scrape of upstream %s's /metrics failed (%s): admission falls back to the "
                "gateway's own counts until it answers",
                up.name,
                why,
            )
        up.scrape_failing = True

    def snapshot(
        self,
    ) -> Iterable[tuple[str, int, Mapping[str, float | int | str], EngineSample | None]]:
        """Per upstream: its limit, its controller's state as of the last tick, and the last
        sample of its engine's /metrics."""
        for name, up in list(self._up.items()):
            yield name, up.admission.limit, up.described, up.engine


async def _read_at_most(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body (ValueError past `limit` bytes): `content.read(n)` would return the
    first piece that arrived, and a page cut short would look like one without the series."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise ValueError(f"its /metrics is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


_KEY = re.compile(r"[^a-z0-9_]+")


class _LimitCollector(Collector):
    """`hermes_upstream_concurrency_limit{upstream}`, each upstream controller's numeric state
    (`hermes_upstream_admission_<key>{upstream}`) and what its engine's /metrics said last
    (`hermes_upstream_engine_*`), read at each scrape from what the last tick saw (scrapes
    run in a thread: they read a snapshot, never the controller)."""

    def __init__(self, feed: AdmissionFeed) -> None:
        self.feed = feed

    def collect(self) -> Iterable[GaugeMetricFamily]:
        limit = GaugeMetricFamily(
            "hermes_upstream_concurrency_limit",
            "Calls an upstream may hold at once now (concurrency, or what auto found)",
            labels=["upstream"],
        )
        state: dict[str, GaugeMetricFamily] = {}
        engine = {
            key: GaugeMetricFamily(
                f"hermes_upstream_engine_{key}",
                f"An upstream engine's {what}, as its /metrics said at the last scrape",
                labels=["upstream"],
            )
            for key, what in (
                ("requests_running", "requests running (vllm:num_requests_running)"),
                ("requests_waiting", "requests waiting (vllm:num_requests_waiting)"),
                ("kv_cache_usage", "KV-cache use, 0 to 1 (vllm:kv_cache_usage_perc)"),
            )
        }
        for name, value, described, sample in self.feed.snapshot():
            limit.add_metric([name], value)
            if sample is not None:
                engine["requests_running"].add_metric([name], sample.running)
                engine["requests_waiting"].add_metric([name], sample.waiting)
                if sample.kv_usage is not None:
                    engine["kv_cache_usage"].add_metric([name], sample.kv_usage)
            for key, v in described.items():
                if isinstance(v, str) or key == "limit":
                    continue
                metric = "hermes_upstream_admission_" + _KEY.sub("_", key.lower())
                if metric not in state:
                    state[metric] = GaugeMetricFamily(
                        metric, f"The admission controller's {key}", labels=["upstream"]
                    )
                state[metric].add_metric([name], float(v))
        yield limit
        yield from state.values()
        yield from engine.values()
