"""KV retention carried out in the simulator: at the end of an application's LLM stage the
retention policy (`policies.kv_retention`) may pin its calls' cached blocks on the engine
that served them, move them to the CPU tier, or load them back later; the application's next
LLM stage lets the pin go (its calls take the blocks themselves)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hermes.engine.prefix import block_hashes
from hermes.engine.prefix_cache import PrefixCachedKV
from hermes.engine.request import EngineRequest
from hermes.policies.base import AppView
from hermes.policies.kv_retention import RetentionPolicy
from hermes.sim.kernel import EventLoop


@dataclass(slots=True)
class _AppKV:
    calls: list[tuple[EngineRequest, PrefixCachedKV]] = field(default_factory=list)
    pinned: list[tuple[PrefixCachedKV, tuple[int, int]]] = field(default_factory=list)
    epoch: int = 0  # bumped when the application moves on: stale timers do nothing


@dataclass(slots=True)
class KvRetention:
    loop: EventLoop
    policy: RetentionPolicy
    apps: dict[int, _AppKV] = field(default_factory=dict)
    pins: int = 0
    offloads: int = 0
    prefetches: int = 0
    forgets: int = 0

    def call_done(self, app_id: int, req: EngineRequest, engine: Any) -> None:
        """An application's LLM call finished on `engine`."""
        kv = getattr(engine, "kv", None)
        if isinstance(kv, PrefixCachedKV) and req.content is not None:
            self.apps.setdefault(app_id, _AppKV()).calls.append((req, kv))

    def llm_stage_done(
        self, app_id: int, view: AppView, next_stage: str, now: float, rank: float | None = None
    ) -> None:
        """`rank`: the application's rank with the scheduler now (lower first), for pins that
        give way to calls ranked ahead of it."""
        state = self.apps.get(app_id)
        if state is None or not state.calls:
            return
        decision = self.policy.on_llm_stage_done(view, next_stage, now)
        self._unpin(state)
        state.epoch += 1
        epoch = state.epoch
        owner = (app_id, epoch)
        pin_rank = rank if decision.by_rank else None
        for req, kv in state.calls:
            hashes = block_hashes(req.content, kv.block_size, req.prompt_tokens + req.generated)
            if decision.forget:
                self.forgets += kv.forget(_own(req, hashes, kv.block_size)) > 0
            way = 0.0 if decision.back_in_s is None else now + decision.back_in_s
            if decision.pin_s > 0 and kv.pin(owner, hashes, way, pin_rank):
                self.pins += 1
                state.pinned.append((kv, owner))
            if decision.offload:
                self.offloads += kv.offload(hashes) > 0
            if decision.prefetch_in_s is not None:
                self._prefetch_later(state, epoch, kv, hashes, now + decision.prefetch_in_s)
        state.calls.clear()
        if decision.pin_s > 0:
            self.loop.at(now + decision.pin_s, lambda t: self._expire(app_id, epoch))

    def llm_stage_starts(self, app_id: int) -> None:
        """The application sends LLM calls again (its calls take the blocks): its pins go."""
        state = self.apps.get(app_id)
        if state is None:
            return
        state.epoch += 1
        self._unpin(state)

    @staticmethod
    def _unpin(state: _AppKV) -> None:
        for kv, owner in state.pinned:
            kv.unpin(owner)
        state.pinned.clear()

    def app_done(self, app_id: int) -> None:
        state = self.apps.get(app_id)
        if state is not None:
            state.epoch += 1
            self._unpin(state)
        state = self.apps.pop(app_id, None)
        if state is None or not self.policy.forgets_finished:
            return
        for req, kv in state.calls:  # the last LLM stage's calls: nobody reads their tail again
            hashes = block_hashes(req.content, kv.block_size, req.prompt_tokens + req.generated)
            self.forgets += kv.forget(_own(req, hashes, kv.block_size)) > 0

    def _expire(self, app_id: int, epoch: int) -> None:
        state = self.apps.get(app_id)
        if state is not None and state.epoch == epoch:
            state.epoch += 1
            self._unpin(state)

    def _prefetch_later(
        self, state: _AppKV, epoch: int, kv: PrefixCachedKV, hashes: list[int], at: float
    ) -> None:
        def fire(t: float) -> None:
            if state.epoch == epoch:
                self.prefetches += kv.prefetch(hashes) > 0

        self.loop.at(at, fire)

    def figures(self) -> dict[str, object]:
        return {
            "policy": self.policy.name,
            "pins": self.pins,
            "offloads": self.offloads,
            "prefetches": self.prefetches,
            "forgets": self.forgets,
        }


def _own(req: EngineRequest, hashes: list[int], block_size: int) -> list[int]:
    """The blocks among `hashes` past the prefix that every run of the type shares
    (`workloads.call_content` names that stream ("prefix", ...)): the application's own."""
    content = req.content or ()
    shared = 0
    if content and isinstance(content[0][0], tuple) and content[0][0][:1] == ("prefix",):
        shared = content[0][1]
    return hashes[shared // block_size :]
