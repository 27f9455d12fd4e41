"""A multi-model LLM instance (QLM): one active model on the GPU, others warm or cold.

An instance is a GPU (a type and a tensor-parallel degree `tp`) that serves one ACTIVE model
at a time through one `Engine`. Every other model it may serve is either WARM, its weights
held in CPU memory (a fast swap over PCIe), or COLD, on disk (a slow swap). Requests taken
off the GPU by `evict` can keep their KV cache in CPU memory and continue later (`restore`).

Pure: no I/O, no clock; every method that changes state takes `now`. The shell drives it as
it drives an `Engine`: `plan(now)` -> `Step | None`, let time pass, `complete(step)`;
`begin_swap(model, now)` returns when the swap ends, and the shell calls `complete_swap` then.

Timing (shared/docs/CALIBRATION.md, "Cold starts, model loads and swaps"):

- A warm swap copies the weights host DRAM -> GPU at `host_to_gpu_bytes_per_s` (PCIe 4,
  25 GB/s) per link; a cold one reads them from NVMe at `disk_bytes_per_s` (5 GB/s, five
  times slower) per link, plus `engine_init_s`. The weights travel over `host_links` links in
  parallel, by default `tp`: each GPU loads its own shard over its own PCIe link, as the
  engine's KV swap assumes. So Llama-2-7B (13.5 GB) takes 0.54 s warm and 2.7 s cold, and
  Llama-2-70B on TP4 (138 GB) 1.38 s warm. CALIBRATION's "70B ≈ 5.5 s" is the same load
  over one link: `host_links=1` reproduces it.
- `engine_init_s` (default 0) is charged on cold swaps only. 0 models vLLM's sleep/wake
  (sleep level 1 offloads the weights to CPU memory, the engine process and its CUDA graphs
  stay), so only weights move. A fresh vLLM process per cold start costs about 30-40 s more
  (CALIBRATION: 36-51 s start-up for a 7B model, of which 7.5 s is weight loading).
- Swapping a model out costs nothing: its CPU copy is kept from the load (pinned), or the
  device-to-host copy overlaps the next load (PCIe is full duplex).

CPU memory holds two separately budgeted things:

- warm weights, within `cpu_memory_bytes`: an LRU set. The model swapped out becomes the most
  recently used warm model if its weights fit the budget at all, pushing least recently used
  warm models out to disk until the set fits; a model swapped in leaves the warm set. The
  active model is never in the warm set.
- the KV of evicted requests, within `cpu_kv_bytes`.

Eviction and restore. `evict(requests, now)` aborts the requests in the engine and keeps
their computed KV (`num_computed` tokens) in CPU memory if the KV budget has room, in the
order given; past it, their KV is dropped and recomputed on restore, as vLLM recomputes a
preempted request. Only a running request's KV is copied over PCIe (a waiting one has none; an
engine-swapped one already sits in CPU memory). `restore(requests, now)` puts the same request
objects back into the (same model's) engine with their progress: `generated`, `first_token_s`
and `num_tokens = prompt + generated` are kept, and `num_computed` stays at the restored KV
(or 0 after a drop). The engine then admits a restored request as vLLM V1 admits a waiting
request with a prefix-cache hit: only the tokens past `num_computed` are computed, so a
decoding request resumes with a one-token step and the caller sees it finish with its full
`output_tokens`. (`Engine.check_invariants` expects waiting requests to have no computed
tokens; between `restore` and admission a restored request is the exception.)

Transfers block the GPU. The KV copy of `evict` and of `restore` and a model swap occupy the
instance one after another: each starts at `max(now, free_at_s)` and pushes `free_at_s` to its
end; `plan(now)` returns None while `now < free_at_s` (the shell plans again at `free_at_s`).
Evicting, restoring and swapping need no step in flight (complete it, or shorten and complete
it, first). Swapping the active model out needs its engine idle: a swap with requests still
queued or running is refused with an error, and the caller evicts them first.

Busy time: step durations, swaps and KV transfers; `utilisation(now)` is busy time over the
wall time since `start_s`.

Throughput Θ (for a planner's waiting-time estimate): output tokens per busy second of each
model, an exponentially weighted ratio over `throughput_memory_s` busy seconds, seeded with a
prior of `throughput_prior_weight_s` seconds at the cost model's decode throughput for a
batch of `throughput_prior_batch` sequences of `throughput_prior_context_tokens` context.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from hermes.engine.cost_model import StepCostModel
from hermes.engine.engine_config import EngineConfig
from hermes.engine.request import EngineRequest, RequestState
from hermes.engine.scheduler import Engine, Step, StepResult

__all__ = [
    "DEFAULT_DISK_BYTES_PER_S",
    "DEFAULT_HOST_TO_GPU_BYTES_PER_S",
    "InstanceStats",
    "KvTransfer",
    "ModelInstance",
    "MultiModelConfig",
    "Residence",
    "SwapInProgress",
]

# CALIBRATION.md: host DRAM -> GPU over PCIe 4, and NVMe five times slower.
DEFAULT_HOST_TO_GPU_BYTES_PER_S = 25e9
DEFAULT_DISK_BYTES_PER_S = 5e9

Residence = Literal["active", "warm", "cold"]
SwapKind = Literal["warm", "cold"]


def _finite_non_negative(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"MultiModelConfig.{name} must be a finite number, got {value!r}")
    if value < 0:
        raise ValueError(f"MultiModelConfig.{name} must be >= 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class MultiModelConfig:
    """Memory budgets, bandwidths and throughput smoothing of a `ModelInstance`.

    `cpu_memory_bytes`: CPU memory for warm model weights; `cpu_kv_bytes`: CPU memory for the
    KV cache of evicted requests (separate budgets). `host_links`: PCIe links a transfer uses
    in parallel; None means `tp` (one per GPU).
    """

    cpu_memory_bytes: float
    cpu_kv_bytes: float
    host_to_gpu_bytes_per_s: float = DEFAULT_HOST_TO_GPU_BYTES_PER_S
    disk_bytes_per_s: float = DEFAULT_DISK_BYTES_PER_S
    host_links: int | None = None
    engine_init_s: float = 0.0
    throughput_prior_batch: int = 32
    throughput_prior_context_tokens: int = 1024
    throughput_prior_weight_s: float = 5.0
    throughput_memory_s: float = 60.0

    def __post_init__(self) -> None:
        for name in ("cpu_memory_bytes", "cpu_kv_bytes", "engine_init_s"):
            _finite_non_negative(name, getattr(self, name))
        for name in (
            "host_to_gpu_bytes_per_s",
            "disk_bytes_per_s",
            "throughput_prior_weight_s",
            "throughput_memory_s",
        ):
            value = getattr(self, name)
            _finite_non_negative(name, value)
            if value == 0:
                raise ValueError(f"MultiModelConfig.{name} must be > 0, got {value!r}")
        for name in ("throughput_prior_batch", "throughput_prior_context_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MultiModelConfig.{name} must be an integer >= 1, got {value!r}")
        links = self.host_links
        if links is not None and (
            isinstance(links, bool) or not isinstance(links, int) or links < 1
        ):
            raise ValueError(
                f"MultiModelConfig.host_links must be None or an integer >= 1, got {links!r}"
            )


@dataclass(frozen=True, slots=True)
class SwapInProgress:
    """A model load: `model` arrives on the GPU from `kind` memory over [start_s, end_s]."""

    model: str
    kind: SwapKind
    start_s: float
    end_s: float


@dataclass(frozen=True, slots=True)
class KvTransfer:
    """What an `evict` or a `restore` did.

    `bytes_copied` crossed PCIe over [start_s, done_s] (`seconds` long; the GPU is busy with
    it). `recompute`: the requests whose computed KV was dropped (evict: no room in the CPU KV
    budget) or comes back empty (restore), so their tokens are computed again.
    """

    requests: tuple[EngineRequest, ...]
    bytes_copied: float
    seconds: float
    start_s: float
    done_s: float
    recompute: tuple[EngineRequest, ...]


@dataclass(slots=True)
class InstanceStats:
    warm_swaps: int = 0
    cold_swaps: int = 0
    swap_s: float = 0.0
    evictions: int = 0
    recomputed: int = 0  # evicted requests whose computed KV was dropped
    kv_bytes_out: float = 0.0  # GPU -> CPU on eviction
    kv_bytes_in: float = 0.0  # CPU -> GPU on restore
    transfer_s: float = 0.0  # time the KV copies took
    steps_s: float = 0.0  # time completed engine steps took


@dataclass(slots=True)
class _Evicted:
    req: EngineRequest
    model: str
    kv_bytes: float  # held in CPU memory (0: nothing computed, or dropped)


class ModelInstance:
    """One GPU (or TP group) serving one active model at a time; see the module docstring.

    `costs` maps each model this instance may serve to its cost model; all must share one GPU
    type and tp. `active` is loaded at `start_s` at no cost (None: the GPU starts empty, and
    the first `begin_swap` is a cold start unless the model is warm). `warm` lists the models
    already in CPU memory, least recently used first; they must fit `cpu_memory_bytes`.
    `engine_config` configures every model's engine (one engine per model, made when the model
    is first loaded and kept, idle, while it is not active). `name` is a label for the shell.

    For a planner's view (e.g. `hermes.policies.qlm.estimator.InstanceView`): `active_model`,
    `warm_models`, `swap_times()`, `throughput()` and, for the time to finish what already
    runs, `drain_time_s(now)` (not `busy_s(now)`, which is busy time accumulated so far).
    """

    def __init__(
        self,
        costs: Mapping[str, StepCostModel],
        config: MultiModelConfig,
        *,
        active: str | None = None,
        warm: Sequence[str] = (),
        engine_config: EngineConfig | None = None,
        start_s: float = 0.0,
        name: str = "",
    ) -> None:
        if not costs:
            raise ValueError("ModelInstance: costs must name at least one model")
        self._costs = dict(costs)
        first = next(iter(self._costs.values()))
        for model, cost in self._costs.items():
            if (cost.gpu, cost.tp) != (first.gpu, first.tp):
                raise ValueError(
                    f"ModelInstance: all models must share one GPU type and tp; {model!r} is "
                    f"({cost.gpu}, tp {cost.tp}), not ({first.gpu}, tp {first.tp})"
                )
        if not math.isfinite(start_s):
            raise ValueError(f"ModelInstance: start_s must be finite, got {start_s!r}")
        self.name = name
        self.gpu: str = first.gpu
        self.tp: int = first.tp
        self.config = config
        self.engine_config = engine_config or EngineConfig()
        self.start_s = float(start_s)
        self._links = config.host_links if config.host_links is not None else self.tp
        self._engines: dict[str, Engine] = {}
        self._active: str | None = None
        self._warm: dict[str, None] = {}  # insertion order = LRU order, least recent first
        self._swap: SwapInProgress | None = None
        self._step: Step | None = None
        self._free_at_s = self.start_s
        self._evicted: dict[int, _Evicted] = {}
        self._kv_used = 0.0
        self._busy_closed_s = 0.0
        self._busy_open: list[tuple[float, float]] = []  # swaps and transfers not yet folded
        self._theta: dict[str, list[float]] = {}  # model -> [decayed tokens, decayed seconds]
        self.stats = InstanceStats()

        if active is not None:
            self._check_model(active)
            self._active = active
            self._engine(active)
        for model in warm:
            self._check_model(model)
            if model == active or model in self._warm:
                raise ValueError(f"ModelInstance: {model!r} listed twice (active or warm)")
            self._warm[model] = None
        if self.cpu_memory_used_bytes > config.cpu_memory_bytes:
            raise ValueError(
                f"ModelInstance: warm models {list(self._warm)} need "
                f"{self.cpu_memory_used_bytes:.4g} bytes; cpu_memory_bytes is "
                f"{config.cpu_memory_bytes:.4g}"
            )

    # Models and residence -------------------------------------------------------------------

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(self._costs)

    def cost(self, model: str) -> StepCostModel:
        self._check_model(model)
        return self._costs[model]

    @property
    def active_model(self) -> str | None:
        """The model on the GPU, or being loaded onto it during a swap."""
        return self._active

    @property
    def warm_models(self) -> tuple[str, ...]:
        """Models whose weights are in CPU memory, least recently used first."""
        return tuple(self._warm)

    @property
    def cold_models(self) -> tuple[str, ...]:
        return tuple(m for m in self._costs if m != self._active and m not in self._warm)

    def residence(self, model: str) -> Residence:
        self._check_model(model)
        if model == self._active:
            return "active"
        return "warm" if model in self._warm else "cold"

    @property
    def cpu_memory_used_bytes(self) -> float:
        """CPU memory the warm models' weights take (at most `cpu_memory_bytes`)."""
        return sum(self._costs[m].weight_bytes for m in self._warm)

    @property
    def cpu_kv_used_bytes(self) -> float:
        """CPU memory the KV of evicted requests takes (at most `cpu_kv_bytes`)."""
        return self._kv_used

    # Swap timing ----------------------------------------------------------------------------

    def swap_time_s(self, model: str) -> float:
        """Seconds a swap to `model` would take now: 0 if active (or being loaded)."""
        where = self.residence(model)
        if where == "active":
            return 0.0
        weights = self._costs[model].weight_bytes
        cfg = self.config
        if where == "warm":
            return weights / (self._links * cfg.host_to_gpu_bytes_per_s)
        return weights / (self._links * cfg.disk_bytes_per_s) + cfg.engine_init_s

    def swap_times(self) -> dict[str, float]:
        """`swap_time_s` of every model."""
        return {m: self.swap_time_s(m) for m in self._costs}

    def ready_s(self, model: str, now: float) -> float:
        """The earliest time the instance could run `model`'s next step if asked at `now`
        (once pending transfers, a swap in progress, and the swap to `model`, are done)."""
        return max(now, self._free_at_s) + self.swap_time_s(model)

    @property
    def free_at_s(self) -> float:
        """When the swap or KV transfers already started are over."""
        return self._free_at_s

    @property
    def swapping(self) -> bool:
        return self._swap is not None

    @property
    def swap_in_progress(self) -> SwapInProgress | None:
        return self._swap

    # Swaps ----------------------------------------------------------------------------------

    def begin_swap(self, model: str, now: float) -> float:
        """Start loading `model` (at `max(now, free_at_s)`); returns when the load completes.

        The active model's engine must be idle (evict its requests first); no step may be in
        flight and no other swap in progress. The outgoing model joins the warm set if its
        weights fit the CPU budget (least recently used warm models go cold to make room);
        `model` leaves the warm set. Requests may be `add`ed for `model` at once; nothing is
        served until `complete_swap`.
        """
        self._check_model(model)
        if self._swap is not None:
            raise RuntimeError(
                f"ModelInstance.begin_swap({model!r}): a swap to {self._swap.model!r} is in "
                f"progress until {self._swap.end_s}; complete_swap first"
            )
        if self._step is not None:
            raise RuntimeError(
                f"ModelInstance.begin_swap({model!r}): a step is in flight; complete it first"
            )
        if model == self._active:
            raise ValueError(f"ModelInstance.begin_swap: {model!r} is already the active model")
        old = self._active
        if old is not None:
            engine = self._engines[old]
            if not engine.idle:
                raise RuntimeError(
                    f"ModelInstance.begin_swap({model!r}): the active model {old!r} still has "
                    f"{len(engine.running)} running, {len(engine.waiting)} waiting and "
                    f"{len(engine.swapped)} swapped requests; evict() them first"
                )
        kind: SwapKind = "warm" if model in self._warm else "cold"
        duration = self.swap_time_s(model)
        start = max(now, self._free_at_s)
        end = start + duration
        self._fold(now)
        self._warm.pop(model, None)
        if old is not None:
            self._make_warm(old)
        self._active = model
        self._engine(model)
        self._swap = SwapInProgress(model, kind, start, end)
        self._free_at_s = end
        self._busy_open.append((start, end))
        if kind == "warm":
            self.stats.warm_swaps += 1
        else:
            self.stats.cold_swaps += 1
        self.stats.swap_s += duration
        return end

    def complete_swap(self, now: float) -> None:
        """Finish the swap in progress; `now` must be at or after its end."""
        swap = self._swap
        if swap is None:
            raise RuntimeError("ModelInstance.complete_swap: no swap in progress")
        if now < swap.end_s:
            raise ValueError(
                f"ModelInstance.complete_swap: the swap to {swap.model!r} ends at {swap.end_s}, "
                f"not yet at {now}"
            )
        self._swap = None
        self._fold(now)

    def _make_warm(self, model: str) -> None:
        budget = self.config.cpu_memory_bytes
        if self._costs[model].weight_bytes > budget:
            return  # cannot be warm at all: it goes to disk
        self._warm[model] = None
        while self.cpu_memory_used_bytes > budget:
            del self._warm[next(iter(self._warm))]

    # Serving --------------------------------------------------------------------------------

    @property
    def engine(self) -> Engine | None:
        """The active model's engine (None before any model is loaded). Read it; drive the
        instance through its own `add` / `plan` / `complete` so that time is accounted."""
        return None if self._active is None else self._engines[self._active]

    @property
    def idle(self) -> bool:
        """No request queued or running in the active engine (evicted ones do not count)."""
        engine = self.engine
        return engine is None or engine.idle

    @property
    def outstanding(self) -> int:
        engine = self.engine
        return 0 if engine is None else engine.outstanding

    def add(self, req: EngineRequest, now: float, model: str | None = None) -> bool:
        """Queue a new request on the active model (also during its swap); as `Engine.add`.

        `model`, if given, must be the active model. Evicted requests come back by `restore`.
        """
        engine = self._active_engine("add")
        if model is not None and model != self._active:
            raise ValueError(
                f"ModelInstance.add: the request is for {model!r}, the active model is "
                f"{self._active!r}"
            )
        if id(req) in self._evicted:
            raise ValueError(f"ModelInstance.add: request {req.id!r} is evicted; restore() it")
        return engine.add(req, now)

    def abort(self, req: EngineRequest, now: float) -> bool:
        """Drop a request for good: queued in the active engine, or evicted (its CPU KV freed)."""
        entry = self._evicted.pop(id(req), None)
        if entry is not None:
            self._kv_used = self._kv_used - entry.kv_bytes if self._evicted else 0.0
            req.finish_s = now
            return True
        engine = self.engine
        return engine is not None and engine.abort(req, now)

    def plan(self, now: float) -> Step | None:
        """The active engine's next step from `now`; None while swapping or transferring KV
        (`now < free_at_s`), with no active model, or when there is no work."""
        if self._active is None or self._swap is not None or now < self._free_at_s:
            return None
        step = self._engines[self._active].plan(now)
        self._step = step
        return step

    def shorten(self, step: Step, now: float) -> float:
        """As `Engine.shorten`."""
        return self._active_engine("shorten").shorten(step, now)

    def complete(self, step: Step) -> StepResult:
        """As `Engine.complete`; also accounts busy time and measured throughput."""
        if step is not self._step:
            raise RuntimeError("ModelInstance.complete: not the step in flight")
        assert self._active is not None
        result = self._engines[self._active].complete(step)
        self._step = None
        duration = step.end_s - step.start_s
        self.stats.steps_s += duration
        self._busy_closed_s += duration
        self._observe(self._active, result.tokens, duration)
        return result

    # Eviction and restore -------------------------------------------------------------------

    @property
    def evicted(self) -> tuple[EngineRequest, ...]:
        """Requests taken out by `evict` and not yet restored or aborted, oldest first."""
        return tuple(e.req for e in self._evicted.values())

    def evicted_model(self, req: EngineRequest) -> str:
        """The model an evicted request belongs to."""
        entry = self._evicted.get(id(req))
        if entry is None:
            raise ValueError(f"ModelInstance.evicted_model: request {req.id!r} is not evicted")
        return entry.model

    def evict(self, requests: Iterable[EngineRequest], now: float) -> KvTransfer:
        """Take queued or running requests of the active model out of its engine.

        Each request's computed KV is kept in CPU memory if the `cpu_kv_bytes` budget has
        room (in the order given), else dropped (the request recomputes it on `restore`). A
        running request's kept KV is copied GPU -> CPU, which occupies the instance from
        `max(now, free_at_s)`. No step may be in flight.
        """
        reqs = tuple(requests)
        engine = self._active_engine("evict")
        self._no_step("evict")
        self._fold(now)
        queued = {id(r) for r in (*engine.running, *engine.waiting, *engine.swapped)}
        seen: set[int] = set()
        for r in reqs:
            if id(r) not in queued:
                raise ValueError(
                    f"ModelInstance.evict: request {r.id!r} is not queued or running on the "
                    f"active model {self._active!r}"
                )
            if id(r) in seen:
                raise ValueError(f"ModelInstance.evict: request {r.id!r} listed twice")
            seen.add(id(r))
        assert self._active is not None
        per_token = self._costs[self._active].kv_bytes_per_token
        budget = self.config.cpu_kv_bytes
        copied = 0.0
        dropped: list[EngineRequest] = []
        for r in reqs:
            on_gpu = r.state is RequestState.RUNNING
            kv = float(r.num_computed * per_token)
            engine.abort(r, now)
            r.finish_s = None
            if kv > 0 and self._kv_used + kv > budget:
                dropped.append(r)
                kv = 0.0
            elif on_gpu:
                copied += kv
            self._kv_used += kv
            self._evicted[id(r)] = _Evicted(r, self._active, kv)
        self.stats.evictions += len(reqs)
        self.stats.recomputed += len(dropped)
        self.stats.kv_bytes_out += copied
        return self._transfer(reqs, copied, now, tuple(dropped))

    def restore(self, requests: Iterable[EngineRequest], now: float) -> KvTransfer:
        """Put evicted requests of the active model back into its engine, progress kept.

        Kept KV is copied CPU -> GPU (occupying the instance from `max(now, free_at_s)`) and
        counts as computed; dropped KV is recomputed by the engine. The requests rejoin the
        waiting queue in their usual order (priority, then arrival).
        """
        reqs = tuple(requests)
        engine = self._active_engine("restore")
        self._no_step("restore")
        self._fold(now)
        seen: set[int] = set()
        for r in reqs:
            entry = self._evicted.get(id(r))
            if entry is None:
                raise ValueError(f"ModelInstance.restore: request {r.id!r} is not evicted here")
            if entry.model != self._active:
                raise ValueError(
                    f"ModelInstance.restore: request {r.id!r} is for {entry.model!r}; the "
                    f"active model is {self._active!r}"
                )
            if id(r) in seen:
                raise ValueError(f"ModelInstance.restore: request {r.id!r} listed twice")
            seen.add(id(r))
        copied = 0.0
        recompute: list[EngineRequest] = []
        for r in reqs:
            entry = self._evicted.pop(id(r))
            self._kv_used -= entry.kv_bytes
            copied += entry.kv_bytes
            computed = r.num_computed if entry.kv_bytes > 0 else 0
            if computed == 0 and r.num_computed > 0:
                recompute.append(r)
            if not engine.add(r, now):  # it was accepted by this very engine before
                raise RuntimeError(f"ModelInstance.restore: the engine rejected {r.id!r}")
            r.num_tokens = r.prompt_tokens + r.generated
            r.num_computed = computed
        if not self._evicted:
            self._kv_used = 0.0  # no float drift once the store is empty
        self.stats.kv_bytes_in += copied
        return self._transfer(reqs, copied, now, tuple(recompute))

    def _transfer(
        self,
        reqs: tuple[EngineRequest, ...],
        copied: float,
        now: float,
        recompute: tuple[EngineRequest, ...],
    ) -> KvTransfer:
        seconds = copied / (self._links * self.config.host_to_gpu_bytes_per_s)
        start = max(now, self._free_at_s)
        done = start + seconds
        if seconds > 0:
            self._free_at_s = done
            self._busy_open.append((start, done))
            self.stats.transfer_s += seconds
        return KvTransfer(reqs, copied, seconds, start, done, recompute)

    # What a planner reads -------------------------------------------------------------------

    def throughput(self, model: str | None = None) -> float:
        """Θ: smoothed output tokens per busy second of `model` (default: the active one).

        A model never run here gets the prior: its decode throughput at the configured batch
        and context (the batch capped by `max_num_seqs` and the KV pool)."""
        name = self._active if model is None else model
        if name is None:
            raise RuntimeError("ModelInstance.throughput: no active model; name one")
        self._check_model(name)
        tokens, seconds = self._theta_state(name)
        return tokens / seconds

    def drain_time_s(self, now: float) -> float:
        """Estimated seconds from `now` until the active engine has finished its requests.

        Pending swaps and transfers first, then the larger of the remaining output tokens over
        Θ and the longest request's remaining tokens at one-sequence decode speed. 0 when
        idle and free. Evicted requests are not counted.
        """
        wait = max(0.0, self._free_at_s - now)
        engine = self.engine
        if engine is None or engine.idle:
            return wait
        assert self._active is not None
        cost = self._costs[self._active]
        fixed, per_kv = cost.decode_step_terms(1)
        total = 0
        longest = 0.0
        for r in (*engine.running, *engine.waiting, *engine.swapped):
            left = max(0, r.output_tokens - r.generated)
            total += left
            ctx = r.prompt_tokens + r.output_tokens
            longest = max(longest, left * (fixed + per_kv * ctx))
        return wait + max(total / self.throughput(self._active), longest)

    def busy_s(self, now: float) -> float:
        """Seconds up to `now` spent on steps, swaps and KV transfers (the step in flight
        counts up to `now`)."""
        busy = self._busy_closed_s
        for start, end in self._busy_open:
            busy += max(0.0, min(end, now) - start)
        step = self._step
        if step is not None:
            busy += max(0.0, min(step.end_s, now) - step.start_s)
        return busy

    def utilisation(self, now: float) -> float:
        """Busy time over wall time since `start_s` (0 at `start_s`)."""
        wall = now - self.start_s
        return 0.0 if wall <= 0 else self.busy_s(now) / wall

    # Internals ------------------------------------------------------------------------------

    def _check_model(self, model: str) -> None:
        if model not in self._costs:
            raise ValueError(
                f"ModelInstance: unknown model {model!r}; this instance serves "
                f"{', '.join(self._costs)}"
            )

    def _engine(self, model: str) -> Engine:
        engine = self._engines.get(model)
        if engine is None:
            engine = self._engines[model] = Engine(self._costs[model], self.engine_config)
        return engine

    def _active_engine(self, what: str) -> Engine:
        if self._active is None:
            raise RuntimeError(f"ModelInstance.{what}: no model is loaded; begin_swap first")
        return self._engines[self._active]

    def _no_step(self, what: str) -> None:
        if self._step is not None:
            raise RuntimeError(
                f"ModelInstance.{what}: a step is in flight; complete it (or shorten and "
                "complete it) first"
            )

    def _fold(self, now: float) -> None:
        """Move swaps and transfers that ended by `now` into the closed busy total."""
        still: list[tuple[float, float]] = []
        for start, end in self._busy_open:
            if end <= now:
                self._busy_closed_s += end - start
            else:
                still.append((start, end))
        self._busy_open = still

    def _theta_state(self, model: str) -> list[float]:
        state = self._theta.get(model)
        if state is None:
            cfg = self.config
            prior = self._prior_throughput(model)
            state = self._theta[model] = [
                prior * cfg.throughput_prior_weight_s,
                cfg.throughput_prior_weight_s,
            ]
        return state

    def _prior_throughput(self, model: str) -> float:
        cfg = self.config
        cost = self._costs[model]
        ctx = cfg.throughput_prior_context_tokens
        engine = self._engine(model)
        fit = engine.gpu.total * engine.gpu.block_size // ctx
        batch = max(1, min(cfg.throughput_prior_batch, self.engine_config.max_num_seqs, fit))
        fixed, per_kv = cost.decode_step_terms(batch)
        return batch / (fixed + per_kv * batch * ctx)

    def _observe(self, model: str, tokens: int, seconds: float) -> None:
        if seconds <= 0:
            return
        state = self._theta_state(model)
        keep = math.exp(-seconds / self.config.throughput_memory_s)
        state[0] = state[0] * keep + tokens
        state[1] = state[1] * keep + seconds
