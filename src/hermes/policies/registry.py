"""Policies by name: one small file each, registered here."""

from __future__ import annotations

from collections.abc import Callable

from hermes.policies.app_fifo import AppFIFO
from hermes.policies.base import Policy, PolicyContext
from hermes.policies.deadline import EDF, LSTF
from hermes.policies.fcfs import FCFS
from hermes.policies.gittins import Gittins, SRJFMean
from hermes.policies.oracle import Oracle
from hermes.policies.plas import PLAS
from hermes.policies.vtc import VTC

Factory = Callable[[PolicyContext], Policy]
_REGISTRY: dict[str, Factory] = {}


def register(name: str, factory: Factory) -> None:
    if name in _REGISTRY:
        raise ValueError(f"policy {name!r} is already registered")
    _REGISTRY[name] = factory


def policy_names() -> list[str]:
    return sorted(_REGISTRY)


def make_policy(name: str, ctx: PolicyContext | None = None) -> Policy:
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(policy_names())}") from None
    return factory(ctx or PolicyContext())


register("vllm", lambda ctx: FCFS())
register("parrot", lambda ctx: AppFIFO())
register("vtc", lambda ctx: VTC())
register("plas", lambda ctx: PLAS())
register("oracle", Oracle)
register("srjf-mean", SRJFMean)
register("gittins", Gittins)
register("edf", lambda ctx: EDF())
register("lstf", LSTF)
