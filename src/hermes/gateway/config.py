"""The gateway configuration: validated data, read from YAML or built in code.

Unknown fields are errors, and every error names the field path and what it expected, as the
simulator's configuration does.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from hermes.config_base import PolicyOptions, read_yaml, validated
from hermes.config_base import StrictModel as _Strict
from hermes.gateway.config_parts import (
    DEFAULT_SLO_S,
    Backend,
    GpuGroup,
    HealthCheck,
    HttpHook,
    PrewarmTarget,
    RayOptions,
    ToolCapacity,
)
from hermes.gateway.tenants import ApiKey
from hermes.policies.slo_class import SloClassOptions, class_of
from hermes.types import SloClass

# The parts are re-exported: `hermes.gateway.config` is where users import the config from.
__all__ = [
    "Backend",
    "GatewayConfig",
    "GpuGroup",
    "HealthCheck",
    "HttpHook",
    "PrewarmTarget",
    "RayOptions",
    "ToolCapacity",
    "emulated_default",
    "gateway_config_from_dict",
    "load_gateway_config",
]


class GatewayConfig(_Strict):
    host: str = Field(default="127.0.0.1", description="address to listen on")
    port: int = Field(
        default=8080, ge=0, le=65535, description="port to listen on (0: any free port)"
    )
    policy: str = Field(
        default="gittins",
        description="the ranking policy (a registry name: gittins, vllm, lstf, ...)",
    )
    policy_options: PolicyOptions = Field(
        default=PolicyOptions(), description="options of the ranking and prewarm policies"
    )
    backends: list[Backend] = Field(
        min_length=1, description="the inference engines behind the gateway"
    )
    queue_limit: int = Field(
        default=10_000, ge=1, description="calls that may wait; beyond it 429 with Retry-After"
    )
    # Real-time calls (x-hermes-slo-class: rt) go first; best-effort ones still get at least
    # this share of the grants while both wait.
    be_min_share: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="the least share of grants best-effort calls get while real-time calls wait",
    )
    max_body_bytes: int = Field(
        default=4 * 2**20, ge=1024, description="larger request bodies get 413"
    )
    upstream_first_byte_timeout_s: float = Field(
        default=600.0,
        gt=0,
        allow_inf_nan=False,
        description="from sending a call to the upstream's first byte: a stream's headers and "
        "first event; a whole answer's headers (engines send it at its end); then 504",
    )
    upstream_chunk_timeout_s: float = Field(
        default=60.0,
        gt=0,
        allow_inf_nan=False,
        description="the longest silence between two pieces of an answer once it has begun; "
        "then 504, or an SSE error event once streaming",
    )
    upstream_timeout_s: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="deprecated: a cap on the whole call, which cuts healthy long streams; "
        "use upstream_first_byte_timeout_s and upstream_chunk_timeout_s. Honoured when set",
    )
    connect_timeout_s: float = Field(
        default=5.0,
        gt=0,
        allow_inf_nan=False,
        description="connecting to an upstream gives up after this long",
    )
    queue_timeout_s: float = Field(
        default=120.0,
        gt=0,
        allow_inf_nan=False,
        description="the longest a call waits in the gateway's queue: then 503 if no healthy "
        "upstream serves its model, else 429, both with Retry-After; a call for a model "
        "without a healthy upstream for this long already gets 503 at once",
    )
    health_check: HealthCheck = Field(
        default=HealthCheck(), description="active health checks of upstreams"
    )
    aging_max_wait_s: float | None = Field(
        default=30.0,
        gt=0,
        allow_inf_nan=False,
        description="aging: a call that has waited this long goes ahead of every call that "
        "has waited less (aged calls first come, first served), so that none is overtaken "
        "without bound; null turns aging off",
    )
    client_header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        allow_inf_nan=False,
        description="a client's request headers must arrive within this (from the connection, "
        "or from the first byte of a kept-alive one's next request), else it is closed",
    )
    client_body_timeout_s: float = Field(
        default=60.0,
        gt=0,
        allow_inf_nan=False,
        description="a request's body must arrive within this of its headers, else 408",
    )
    app_idle_timeout_s: float = Field(
        default=300.0,
        gt=0,
        allow_inf_nan=False,
        description="an application with no call or event for this long is finished",
    )
    api_key: str | None = Field(
        default=None, description="clients must send `Authorization: Bearer <api_key>` (one tenant)"
    )
    admin_key: str | None = Field(
        default=None, description="for /v1/apps/* events and finishes, when set"
    )
    api_keys: list[ApiKey] = Field(
        default_factory=list,
        description="tenants: each key's applications are its own (ids scoped by its name), "
        "with the SLO classes and the tightest deadline its calls may ask for (docs/gateway.md)",
    )
    metrics_public: bool = Field(
        default=False, description="serve /metrics without a key even when keys are configured"
    )
    run_store: str | None = Field(
        default=None,
        description="SQLite file of finished application runs (learned from at start-up)",
    )
    run_store_pending_limit: int = Field(
        default=10_000,
        ge=1,
        description="finished runs acknowledged and not yet written that the gateway holds; "
        "beyond it a finish gets 503 (the application stays) until the store catches up",
    )
    max_apps: int = Field(
        default=50_000, ge=1, description="applications in progress; a new one beyond it: 429"
    )
    max_app_types: int = Field(
        default=64,
        ge=1,
        description="distinct application types; later types count as 'other' in metrics "
        "and learning",
    )
    max_calls_per_app: int = Field(
        default=10_000,
        ge=1,
        description="LLM calls and tool stages of one application; beyond it: 409",
    )
    # The engine profile that weighs tokens into seconds of service for the demand models.
    demand_model: str = Field(
        default="llama-2-7b", description="the engine profile demand is costed on"
    )
    demand_gpu: str = Field(default="a100", description="its GPU")
    # Cold things the prewarm policy (policy_options.prewarm: pdgraph or on-queue) warms.
    prewarm_targets: list[PrewarmTarget] = Field(
        default_factory=list, description="cold backends the prewarm policy may warm ahead of need"
    )
    # Models that share GPUs, swapped in and out as the QLM planner orders.
    gpu_groups: list[GpuGroup] = Field(
        default_factory=list, description="models sharing GPUs, swapped by QLM's planner"
    )
    # The SLO class of a call without x-hermes-slo-class, by model (else best-effort).
    model_slo_class: dict[str, SloClass] = Field(
        default_factory=dict, description="per model, the SLO class of calls that name none"
    )
    # The completion time each class is planned for (model swaps): a call's deadline is its
    # arrival plus this, or its application's x-hermes-deadline-ms if that is earlier.
    slo_s: dict[SloClass, float] = Field(
        default_factory=lambda: dict(DEFAULT_SLO_S),
        description="per SLO class, the completion SLO the model-swap planner plans for",
    )
    tools: list[ToolCapacity] = Field(
        default_factory=list,
        description="tool backends whose stages run only when the policy grants them a slot",
    )
    session_max_excess: int = Field(
        default=8,
        ge=0,
        description="router session: an application's replica is left for the least loaded "
        "when it has more than this many calls in flight over it",
    )
    ray: RayOptions = Field(
        default=RayOptions(), description="hermes serve --ray: the gateway on Ray Serve"
    )

    def slo_class_of(self, model: str, header: SloClass | None) -> SloClass:
        """A call's SLO class: its header's, else its model's default, else best-effort."""
        return class_of(header, self.model_slo_class.get(model))

    def slo_class_options(self) -> SloClassOptions:
        """How the SLO classes share the queue and lead at the engine."""
        return SloClassOptions(be_min_share=self.be_min_share)

    def slo_seconds(self, slo_class: SloClass) -> float:
        return self.slo_s.get(slo_class, DEFAULT_SLO_S[slo_class])

    @model_validator(mode="after")
    def _swaps(self) -> GatewayConfig:
        backends = {b.name: b for b in self.backends}
        for cls, s in self.slo_s.items():
            if not (math.isfinite(s) and s > 0):
                raise ValueError(f"slo_s.{cls}: must be a positive number of seconds, got {s!r}")
        served = {m for b in self.backends for m in b.models}
        for model in self.model_slo_class:
            if model not in served:
                raise ValueError(f"model_slo_class: no backend serves model {model!r}")
        groups = [g.name for g in self.gpu_groups]
        if len(set(groups)) != len(groups):
            raise ValueError(f"gpu_groups: names must be unique, got {groups}")
        owner: dict[str, str] = {}
        for i, g in enumerate(self.gpu_groups):
            where = f"gpu_groups.{i} ({g.name!r})"
            for name in g.backends:
                b = backends.get(name)
                if b is None:
                    raise ValueError(f"{where}.backends: no backend named {name!r}")
                if name in owner:
                    raise ValueError(
                        f"{where}: backend {name!r} is in gpu group {owner[name]!r} already; "
                        "a backend belongs to at most one group"
                    )
                owner[name] = g.name
            members = [backends[n] for n in g.backends]
            if g.kind == "vllm-sleep":
                if len(members) < 2:
                    raise ValueError(
                        f"{where}: a vllm-sleep group needs at least 2 backends to swap "
                        f"between, got {len(members)}"
                    )
                for b in members:
                    if b.kind not in ("vllm", "emulated"):
                        raise ValueError(
                            f"{where}: backend {b.name!r} is of kind {b.kind!r}; vllm-sleep "
                            "swaps need vllm (or emulated) backends"
                        )
                    if len(b.models) != 1:
                        raise ValueError(
                            f"{where}: backend {b.name!r} serves {len(b.models)} models; a "
                            "vllm-sleep member serves exactly one"
                        )
                models = [b.models[0] for b in members]
                if len(set(models)) != len(models):
                    raise ValueError(f"{where}: two backends serve the same model: {models}")
            else:
                if len(members) != 1:
                    raise ValueError(
                        f"{where}: a llamacpp-router group is one llama.cpp server, got "
                        f"{len(members)} backends"
                    )
                (b,) = members
                if b.kind != "llamacpp":
                    raise ValueError(
                        f"{where}: backend {b.name!r} is of kind {b.kind!r}; a "
                        "llamacpp-router group needs a llamacpp backend"
                    )
                if len(set(b.models)) < 2:
                    raise ValueError(
                        f"{where}: backend {b.name!r} serves {len(set(b.models))} model; "
                        "a router group swaps between at least 2"
                    )
        for i, t in enumerate(self.prewarm_targets):
            if t.upstream in owner:
                raise ValueError(
                    f"prewarm_targets.{i}: backend {t.upstream!r} is in gpu group "
                    f"{owner[t.upstream]!r}, whose model swaps decide when it sleeps"
                )
        return self

    @model_validator(mode="after")
    def _unique(self) -> GatewayConfig:
        names = [b.name for b in self.backends]
        if len(set(names)) != len(names):
            raise ValueError(f"backends: names must be unique, got {names}")
        tools = [t.name for t in self.tools]
        if len(set(tools)) != len(tools):
            raise ValueError(f"tools: names must be unique, got {tools}")
        tenants = [k.name for k in self.api_keys]
        if len(set(tenants)) != len(tenants):
            raise ValueError(f"api_keys: names must be unique, got {tenants}")
        keys = [k.key for k in self.api_keys]
        others = {self.api_key, self.admin_key} - {None}
        if len(set(keys)) != len(keys) or others & set(keys):  # a key must say who calls
            raise ValueError(
                "api_keys: each key must differ from the others and from api_key and admin_key"
            )
        targets = [t.name for t in self.prewarm_targets]
        if len(set(targets)) != len(targets):
            raise ValueError(f"prewarm_targets: names must be unique, got {targets}")
        kinds = {b.name: b.kind for b in self.backends}
        models = {b.name: b.models for b in self.backends}
        adapters: dict[str, set[str]] = {}
        for t in self.prewarm_targets:
            if t.action == "vllm-load-lora" and t.upstream is not None:
                adapters.setdefault(t.upstream, set()).add(t.name)
        for i, t in enumerate(self.prewarm_targets):
            if t.upstream is None:
                continue
            lora = t.action == "vllm-load-lora"
            if lora and set(models.get(t.upstream, ())) <= adapters.get(t.upstream, set()):
                raise ValueError(
                    f"prewarm_targets.{i}: backend {t.upstream!r} serves only adapters; "
                    "list its base model too"
                )
            if lora and t.upstream in models and t.name not in models[t.upstream]:
                raise ValueError(
                    f"prewarm_targets.{i}: list the adapter {t.name!r} in the models of "
                    f"backend {t.upstream!r}, so that its calls are routed there"
                )
            if t.upstream not in kinds:
                raise ValueError(f"prewarm_targets.{i}.upstream: no backend named {t.upstream!r}")
            if kinds[t.upstream] not in ("vllm", "emulated"):
                raise ValueError(
                    f"prewarm_targets.{i}: {t.action} needs a vllm (or emulated) backend, "
                    f"{t.upstream!r} is {kinds[t.upstream]!r}"
                )
        return self


def gateway_config_from_dict(data: Any, source: str = "config") -> GatewayConfig:
    return validated(GatewayConfig, data, source)


def load_gateway_config(path: str | Path) -> GatewayConfig:
    p = Path(path)
    return gateway_config_from_dict(read_yaml(p), str(p))


def emulated_default(port: int = 8080, time_scale: float = 1.0) -> GatewayConfig:
    """`hermes serve --emulate`: one emulated Llama-2-7B A100 replica."""
    return GatewayConfig(
        port=port,
        backends=[
            Backend(
                name="emulated-0",
                kind="emulated",
                models=["llama-2-7b"],
                time_scale=time_scale,
            )
        ],
    )
