"""Every named decision in one registry: ranking policies (which call goes first), engines
(how an instance selects its batch) and queue policies (QLM's multi-model queue management).

A name is unambiguous when qualified by its kind, `ranking:edf` against `queue:edf`; where
the kind is known (a config field, a `--policy` flag) the short name is enough, and a short
name that two kinds share is refused without one. A new policy is one small file and one
`register` line here; duplicates are refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

from hermes.engine.catalog import make_engine
from hermes.engine.cost_model import StepCostModel
from hermes.engine.engine_config import EngineConfig
from hermes.engine.interface import LLMEngine
from hermes.engine.rt_pace import BrosOptions
from hermes.policies.admission import split_admission
from hermes.policies.app_fifo import AppFIFO
from hermes.policies.base import Policy, PolicyContext
from hermes.policies.deadline import EDF, LSTF
from hermes.policies.fcfs import FCFS
from hermes.policies.gittins import Gittins, SRJFMean
from hermes.policies.oracle import Oracle
from hermes.policies.plas import PLAS
from hermes.policies.qlm.policy import (
    EdfPolicy,
    FcfsPerModel,
    FcfsShared,
    QLMOptions,
    QLMPolicy,
    QueuePolicy,
)
from hermes.policies.vtc import VTC

Kind = Literal["ranking", "engine", "queue"]
KINDS: tuple[Kind, ...] = get_args(Kind)
Factory = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class Entry:
    kind: Kind
    name: str
    factory: Factory
    summary: str

    @property
    def qualified(self) -> str:
        return f"{self.kind}:{self.name}"


class Registry:
    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}

    def register(self, kind: Kind, name: str, factory: Factory, summary: str = "") -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
        entry = Entry(kind, name, factory, summary)
        if entry.qualified in self._entries:
            raise ValueError(f"policy {entry.qualified!r} is already registered")
        self._entries[entry.qualified] = entry

    def names(self, kind: Kind) -> list[str]:
        return sorted(e.name for e in self._entries.values() if e.kind == kind)

    def entries(self) -> list[Entry]:
        return sorted(self._entries.values(), key=lambda e: (KINDS.index(e.kind), e.name))

    def resolve(self, name: str, kind: Kind | None = None) -> Entry:
        """The entry called `name` (`kind:name`, or short where `kind` is given or only one
        kind has the name)."""
        if ":" in name:
            prefix, _, short = name.partition(":")
            if prefix not in KINDS or (kind is not None and prefix != kind):
                want = kind or " | ".join(KINDS)
                raise ValueError(f"{name!r}: the kind must be {want}")
            kind, name = prefix, short
        if kind is not None:
            entry = self._entries.get(f"{kind}:{name}")
            if entry is None:
                known = ", ".join(self.names(kind))
                raise ValueError(f"unknown {_noun(kind)} {name!r}; known: {known}")
            return entry
        found = [e for e in self._entries.values() if e.name == name]
        if len(found) != 1:
            if not found:
                raise ValueError(f"unknown policy {name!r}")
            options = " or ".join(sorted(e.qualified for e in found))
            raise ValueError(f"{name!r} is ambiguous: say {options}")
        return found[0]


def _noun(kind: Kind) -> str:
    return {"ranking": "policy", "engine": "engine", "queue": "queue policy"}[kind]


REGISTRY = Registry()


def register(name: str, factory: Callable[[PolicyContext], Policy], summary: str = "") -> None:
    """Register a ranking policy (the common case)."""
    REGISTRY.register("ranking", name, factory, summary)


def policy_names() -> list[str]:
    """The ranking policies."""
    return REGISTRY.names("ranking")


def check_ranking(name: str) -> tuple[str, str | None]:
    """A ranking policy's name with an optional admission suffix (`gittins+auto`,
    `gittins+16`), checked: (the policy, the admission spec or None); ValueError says what is
    wrong with either part."""
    base, admission = split_admission(name)
    REGISTRY.resolve(base, "ranking")
    return base, admission


def make_policy(name: str, ctx: PolicyContext | None = None) -> Policy:
    """A ranking policy by name, for the simulator and the gateway alike."""
    policy: Policy = REGISTRY.resolve(name, "ranking").factory(ctx or PolicyContext())
    return policy


def make_queue_policy(name: str, options: QLMOptions | None = None) -> QueuePolicy:
    """A fresh queue policy by name; `options` default (QLM's `QLMOptions`)."""
    policy: QueuePolicy = REGISTRY.resolve(name, "queue").factory(options or QLMOptions())
    return policy


def make_named_engine(
    name: str,
    cost: StepCostModel,
    config: EngineConfig | None = None,
    options: BrosOptions | None = None,
    decode_runs: bool = True,
) -> LLMEngine:
    engine: LLMEngine = REGISTRY.resolve(name, "engine").factory(cost, config, options, decode_runs)
    return engine


def _engine_factory(kind: str) -> Factory:
    def build(
        cost: StepCostModel,
        config: EngineConfig | None,
        options: BrosOptions | None,
        decode_runs: bool,
    ) -> LLMEngine:
        return make_engine(kind, cost, config, options, decode_runs)

    return build


register("vllm", lambda ctx: FCFS(), "request-level first come, first served (vLLM's order)")
register("parrot", lambda ctx: AppFIFO(), "application-level first come, first served")
register("vtc", lambda ctx: VTC(), "virtual token counters: fair between applications")
register("plas", lambda ctx: PLAS(), "least attained service per application (Autellix)")
register("oracle", Oracle, "clairvoyant shortest remaining demand (a bound)")
register("srjf-mean", SRJFMean, "shortest mean remaining demand from the PDGraph")
register("gittins", Gittins, "Gittins index of the PDGraph's remaining demand (Hermes)")
register("edf", lambda ctx: EDF(), "earliest deadline first")
register("lstf", LSTF, "least slack on the worst critical path first (Hermes-DDL)")

for _kind, _summary in (
    ("vllm", "vLLM V1: first come first served over every request"),
    ("vllm-priority", "vLLM V1 with --scheduling-policy priority"),
    ("bros", "BROS: real-time by slack each iteration, bidirectional KV blocks"),
    ("bros-nobidir", "BROS without bidirectional blocks (best-effort swapped whole)"),
):
    REGISTRY.register("engine", _kind, _engine_factory(_kind), _summary)

REGISTRY.register("queue", "vllm", FcfsPerModel, "first come first served per model")
REGISTRY.register(
    "queue", "vllm-shared", FcfsShared, "one FCFS queue over GPUs the models share (sleep mode)"
)
REGISTRY.register("queue", "edf", EdfPolicy, "earliest deadline first per model")
REGISTRY.register(
    "queue",
    "qlm-noplan",
    lambda o: QLMPolicy(replace(o, planner="edf")),
    "QLM's request groups and virtual queues, EDF order",
)
REGISTRY.register(
    "queue",
    "qlm",
    lambda o: QLMPolicy(replace(o, planner="milp")),
    "QLM: request groups, virtual queues, MILP planner",
)
