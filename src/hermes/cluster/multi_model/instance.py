"""A multi-model LLM instance (QLM): one active model on the GPU, others warm or cold.

Pure: no I/O, no clock; every method that changes state takes `now`. A shell drives it as it
drives an `Engine`: `plan(now)` -> `Step | None`, let time pass, `complete(step)`;
`begin_swap(model, now)` returns when the swap ends, and the shell calls `complete_swap` then.
docs/qlm.md explains the timing, the two CPU memory budgets, eviction and restore, busy time
and the throughput Θ.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from hermes.cluster.multi_model.busy_time import BusyTime
from hermes.cluster.multi_model.config import (
    InstanceStats,
    KvTransfer,
    MultiModelConfig,
    Residence,
    SwapInProgress,
    SwapKind,
)
from hermes.cluster.multi_model.evicted import EvictedStore, check_evictable, check_restorable
from hermes.cluster.multi_model.residence import WarmSet, swap_seconds
from hermes.cluster.multi_model.throughput import Throughput, decode_prior, drain_seconds
from hermes.engine.cost_model import StepCostModel
from hermes.engine.engine_config import EngineConfig
from hermes.engine.request import EngineRequest, RequestState
from hermes.engine.scheduler import Engine, Step, StepResult


def _queued(engine: Engine) -> set[int]:
    """Identities of the requests an engine holds: running, waiting or swapped."""
    return {id(r) for r in (*engine.running, *engine.waiting, *engine.swapped)}


def _kv_capacity_tokens(engine: Engine) -> int:
    """Tokens the engine's GPU KV pool holds."""
    return engine.kv_total_blocks * engine.config.block_size


class ModelInstance:
    """One GPU (or TP group) serving one active model at a time; see docs/qlm.md.

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
        weights = {m: c.weight_bytes for m, c in self._costs.items()}
        self._warm = WarmSet(weights, config.cpu_memory_bytes)
        self._swap: SwapInProgress | None = None
        self._step: Step | None = None
        self._free_at_s = self.start_s
        self._evicted = EvictedStore(config.cpu_kv_bytes)
        self._busy = BusyTime()
        self._theta = Throughput(config, self._prior_throughput)
        self.stats = InstanceStats()
        self._load_initial(active, warm)

    def _load_initial(self, active: str | None, warm: Sequence[str]) -> None:
        if active is not None:
            self._check_model(active)
            self._active = active
            self._engine(active)
        for model in warm:
            self._check_model(model)
            if model == active or model in self._warm:
                raise ValueError(f"ModelInstance: {model!r} listed twice (active or warm)")
            self._warm.add(model)
        if self.cpu_memory_used_bytes > self.config.cpu_memory_bytes:
            raise ValueError(
                f"ModelInstance: warm models {list(self._warm)} need "
                f"{self.cpu_memory_used_bytes:.4g} bytes; cpu_memory_bytes is "
                f"{self.config.cpu_memory_bytes:.4g}"
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
        return self._warm.used_bytes

    @property
    def cpu_kv_used_bytes(self) -> float:
        """CPU memory the KV of evicted requests takes (at most `cpu_kv_bytes`)."""
        return self._evicted.used_bytes

    # Swap timing ----------------------------------------------------------------------------

    def swap_time_s(self, model: str) -> float:
        """Seconds a swap to `model` would take now: 0 if active (or being loaded)."""
        where = self.residence(model)
        return swap_seconds(self._costs[model].weight_bytes, where, self._links, self.config)

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
        self._check_swap(model)
        old = self._active
        kind: SwapKind = "warm" if model in self._warm else "cold"
        duration = self.swap_time_s(model)
        start = max(now, self._free_at_s)
        end = start + duration
        self._busy.fold(now)
        self._warm.discard(model)
        if old is not None:
            self._warm.push(old)
        self._active = model
        self._engine(model)
        self._swap = SwapInProgress(model, kind, start, end)
        self._free_at_s = end
        self._busy.add_interval(start, end)
        if kind == "warm":
            self.stats.warm_swaps += 1
        else:
            self.stats.cold_swaps += 1
        self.stats.swap_s += duration
        return end

    def _check_swap(self, model: str) -> None:
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
        self._busy.fold(now)

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

    def holds(self, req: EngineRequest) -> bool:
        """`req` is queued or running on the active model (not finished, not evicted)."""
        engine = self.engine
        return engine is not None and id(req) in _queued(engine)

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
        if req in self._evicted:
            raise ValueError(f"ModelInstance.add: request {req.id!r} is evicted; restore() it")
        return engine.add(req, now)

    def abort(self, req: EngineRequest, now: float) -> bool:
        """Drop a request for good: queued in the active engine, or evicted (its CPU KV freed)."""
        if self._evicted.drop(req):
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
        self._busy.add_done(duration)
        self._theta.observe(self._active, result.tokens, duration)
        return result

    # Eviction and restore -------------------------------------------------------------------

    @property
    def evicted(self) -> tuple[EngineRequest, ...]:
        """Requests taken out by `evict` and not yet restored or aborted, oldest first."""
        return self._evicted.requests

    def is_evicted(self, req: EngineRequest) -> bool:
        return req in self._evicted

    def evicted_model(self, req: EngineRequest) -> str:
        """The model an evicted request belongs to."""
        entry = self._evicted.get(req)
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
        self._busy.fold(now)
        assert self._active is not None
        check_evictable(reqs, _queued(engine), self._active)
        per_token = self._costs[self._active].kv_bytes_per_token
        copied = 0.0
        dropped: list[EngineRequest] = []
        for r in reqs:
            on_gpu = r.state is RequestState.RUNNING
            kv = float(r.num_computed * per_token)
            engine.abort(r, now)
            r.finish_s = None
            kept = self._evicted.keep(r, self._active, kv)
            if kept < kv:
                dropped.append(r)
            elif on_gpu:
                copied += kept
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
        self._busy.fold(now)
        assert self._active is not None
        check_restorable(reqs, self._evicted, self._active)
        copied = 0.0
        recompute: list[EngineRequest] = []
        for r in reqs:
            entry = self._evicted.take(r)
            copied += entry.kv_bytes
            computed = r.num_computed if entry.kv_bytes > 0 else 0
            if computed == 0 and r.num_computed > 0:
                recompute.append(r)
            if not engine.add(r, now):  # it was accepted by this very engine before
                raise RuntimeError(f"ModelInstance.restore: the engine rejected {r.id!r}")
            # Admitted like a prefix-cache hit: only the tokens past num_computed are computed.
            r.num_tokens = r.prompt_tokens + r.generated
            r.num_computed = computed
        self._evicted.settle()
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
            self._busy.add_interval(start, done)
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
        return self._theta.tokens_per_s(name)

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
        queued = (*engine.running, *engine.waiting, *engine.swapped)
        cost = self._costs[self._active]
        return wait + drain_seconds(queued, cost, self.throughput(self._active))

    def busy_s(self, now: float) -> float:
        """Seconds up to `now` spent on steps, swaps and KV transfers (the step in flight
        counts up to `now`)."""
        busy = self._busy.up_to(now)
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

    def _prior_throughput(self, model: str) -> float:
        capacity = _kv_capacity_tokens(self._engine(model))
        max_seqs = self.engine_config.max_num_seqs
        return decode_prior(self._costs[model], self.config, max_seqs, capacity)
