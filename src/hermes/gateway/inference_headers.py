"""The request headers an llm-d / Gateway API Inference Extension endpoint picker (EPP) reads,
for a call the gateway forwards (docs/scaling.md, section 4). One pure mapping, used by the
single-process gateway (`forwarding`) and the Ray ingress replicas alike.

- `x-gateway-inference-objective`: the call's SLO class as an `InferenceObjective` name
  (`objectives`, default `rt` and `be`);
- `x-gateway-inference-fairness-id`: the caller's tenant (its key's name), `default-flow` (the
  EPP's own default) for a caller without one;
- `x-slo-ttft-ms`, `x-slo-tpot-ms`: the class's SLOs where configured; for a call of an
  application with a deadline, the time left to it is the TTFT SLO when that is tighter, at
  least 1 ms (an EPP reads 0 as no SLO at all), so that its deadline order agrees with LSTF;
- `x-hermes-rank`: the rank the engine priority is made from: the policy's value for the call
  (gittins: the Gittins index, seconds; edf/lstf: a deadline or slack on the gateway's clock;
  vllm: the arrival time), minus `rt_engine_lead_s` for a real-time call. Lower goes first.

An OpenAI-compatible server ignores request headers it does not read, so they are on by
default; off by default for `openai` backends, hosted services that have no use for them and
should not learn tenants' names.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from pydantic import Field, field_validator, model_validator

from hermes.config_base import StrictModel
from hermes.types import SloClass

OBJECTIVE = "x-gateway-inference-objective"
FAIRNESS_ID = "x-gateway-inference-fairness-id"
TTFT_SLO = "x-slo-ttft-ms"
TPOT_SLO = "x-slo-tpot-ms"
RANK = "x-hermes-rank"
DEFAULT_FLOW = "default-flow"  # the EPP's flow for requests without a fairness id

# An InferenceObjective is a Kubernetes object: its name is a DNS subdomain (RFC 1123).
_K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_NO_SEND_KINDS = ("openai",)


class InferenceHeaders(StrictModel):
    """The llm-d / Gateway API Inference Extension headers sent with each call forwarded to
    this backend (docs/scaling.md, section 4). `true` or `false` alone sets `enabled`."""

    enabled: bool | None = Field(
        default=None,
        description="send them; none: yes, except to kind openai (engines ignore headers they "
        "do not know; a hosted API should not learn tenants' names)",
    )
    objectives: dict[SloClass, str] = Field(
        default_factory=dict,
        description="per SLO class, the InferenceObjective name sent as "
        "x-gateway-inference-objective (default: the class, rt or be)",
    )
    ttft_slo_ms: dict[SloClass, float] = Field(
        default_factory=dict,
        description="per SLO class, the x-slo-ttft-ms sent (none: only an application's "
        "deadline, as the time left to it)",
    )
    tpot_slo_ms: dict[SloClass, float] = Field(
        default_factory=dict, description="per SLO class, the x-slo-tpot-ms sent"
    )
    rank: bool = Field(
        default=True, description="send x-hermes-rank, the rank the engine priority is made from"
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"enabled": value} if isinstance(value, bool) else value

    @field_validator("objectives")
    @classmethod
    def _names(cls, value: dict[SloClass, str]) -> dict[SloClass, str]:
        for slo_class, name in value.items():
            if len(name) > 253 or not _K8S_NAME.fullmatch(name):
                raise ValueError(
                    f"{slo_class}: {name[:80]!r} is not an InferenceObjective name "
                    "(a Kubernetes name: lower-case letters, digits, '-' and '.', starting and "
                    "ending with a letter or digit, at most 253)"
                )
        return value

    @field_validator("ttft_slo_ms", "tpot_slo_ms")
    @classmethod
    def _slos(cls, value: dict[SloClass, float]) -> dict[SloClass, float]:
        for slo_class, ms in value.items():
            if not (math.isfinite(ms) and ms >= 1):
                raise ValueError(
                    f"{slo_class}: {ms:g} is not a number of milliseconds >= 1 "
                    "(an endpoint picker reads 0 as no SLO)"
                )
        return value

    def sent_to(self, kind: str) -> bool:
        """Whether a backend of `kind` gets the headers."""
        return self.enabled if self.enabled is not None else kind not in _NO_SEND_KINDS


@dataclass(frozen=True, slots=True)
class CallFacts:
    """What the headers say of one call: its SLO class, its caller's tenant (None: none),
    the seconds left to its application's deadline (None: no deadline) and its engine rank."""

    slo_class: SloClass
    tenant: str | None
    deadline_left_s: float | None
    rank: float


def _ms(value: float) -> str:
    return str(max(1, math.ceil(value)))


def inference_headers(options: InferenceHeaders, call: CallFacts) -> dict[str, str]:
    """The headers for `call` (an enabled `options` assumed: see `InferenceHeaders.sent_to`)."""
    cls = call.slo_class
    out = {
        OBJECTIVE: options.objectives.get(cls, cls),
        FAIRNESS_ID: call.tenant or DEFAULT_FLOW,
    }
    ttft = options.ttft_slo_ms.get(cls)
    if call.deadline_left_s is not None:
        left_ms = call.deadline_left_s * 1000.0
        ttft = left_ms if ttft is None else min(ttft, left_ms)
    if ttft is not None:
        out[TTFT_SLO] = _ms(ttft)
    tpot = options.tpot_slo_ms.get(cls)
    if tpot is not None:
        out[TPOT_SLO] = _ms(tpot)
    if options.rank:
        out[RANK] = repr(float(call.rank))
    return out
