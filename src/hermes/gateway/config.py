"""The gateway configuration: validated data, read from YAML or built in code.

Unknown fields are errors, and every error names the field path and what it expected, as the
simulator's configuration does.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from hermes.config_base import PolicyOptions, read_yaml, validated
from hermes.config_base import StrictModel as _Strict
from hermes.gateway.tenants import ApiKey
from hermes.policies.slo_class import SloClassOptions, class_of
from hermes.types import SloClass

BackendKind = Literal["vllm", "sglang", "llamacpp", "openai", "emulated"]


class Backend(_Strict):
    """One upstream engine replica."""

    name: str = Field(min_length=1)
    kind: BackendKind = "vllm"
    url: str = Field(default="", description="base URL, e.g. http://10.0.0.5:8000")
    models: list[str] = Field(min_length=1)
    # Calls in flight on this replica at once; the rest wait in the gateway, in policy order.
    concurrency: int = Field(default=16, ge=1)
    health_path: str = "/health"
    api_key: str | None = None  # sent upstream as a bearer token
    # emulated only: the simulator's engine model in real time
    emulate_model: str = "llama-2-7b"
    emulate_gpu: str = "a100"
    emulate_max_num_seqs: int = Field(default=256, ge=1)
    time_scale: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    router: Literal["least-outstanding", "session"] = Field(
        default="least-outstanding",
        description="least-outstanding: a call goes to the replica of its model with the most "
        "free slots; session: an application's calls come back to this replica once it has "
        "served one, unless it has more than session_max_excess calls in flight over the "
        "least loaded (llama.cpp: each application also keeps its slot, with cache_prompt)",
    )

    @model_validator(mode="after")
    def _url(self) -> Backend:
        if self.kind != "emulated" and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https:// (got {self.url!r})")
        return self


class HttpHook(_Strict):
    """An HTTP call the gateway makes to a tool backend's manager. Its JSON body is `body`
    plus `backend`, `hold_s` (keep the instance that long after it is ready, if unused),
    `reason` ("prewarm" or "retain"), `app_id` and `app_type`."""

    url: str
    method: Literal["POST", "PUT"] = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    body: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float = Field(default=5.0, gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _url(self) -> HttpHook:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https:// (got {self.url!r})")
        return self


PrewarmAction = Literal["http", "vllm-wake-up", "vllm-load-lora"]


class PrewarmTarget(_Strict):
    """Something cold that the prewarm policy may warm ahead of need: a tool backend (its
    manager called over HTTP), a vLLM replica put to sleep, or a LoRA adapter loaded at run
    time. `name` is the backend name the applications' stages use (a tool stage's `backend`;
    for an adapter, the model name calls ask for)."""

    name: str = Field(min_length=1)
    action: PrewarmAction
    cold_start_s: float = Field(gt=0, allow_inf_nan=False)  # what the policy plans with
    hook: HttpHook | None = None  # http: the warm-up call
    upstream: str | None = None  # vllm-*: the backend (by name) to act on
    lora_path: str | None = None  # vllm-load-lora: where the engine finds the adapter
    # vllm-wake-up: put the replica to sleep (level 1) after this many idle seconds; None:
    # the gateway never puts it to sleep, it only wakes it.
    sleep_after_idle_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _fields(self) -> PrewarmTarget:
        need = {
            "http": ("hook",),
            "vllm-wake-up": ("upstream",),
            "vllm-load-lora": ("upstream", "lora_path"),
        }[self.action]
        for name in need:
            if getattr(self, name) is None:
                raise ValueError(f"action {self.action!r} needs {name!r}")
        extra = {"hook", "upstream", "lora_path", "sleep_after_idle_s"} - set(need)
        if self.action == "vllm-wake-up":
            extra.discard("sleep_after_idle_s")
        for name in sorted(extra):
            if getattr(self, name) is not None:
                raise ValueError(f"{name!r} has no meaning for action {self.action!r}")
        return self


class HealthCheck(_Strict):
    """Active health checks: every `interval_s` the gateway probes each upstream (GET its
    `health_path`, `timeout_s` to answer; any status under 500 is healthy). After `failures`
    failed probes in a row the upstream is out of rotation, its connections closed (calls in
    flight on it end now, and those that had no byte of answer yet go to another replica); one
    good probe brings it back. A refused connection takes it out at once."""

    interval_s: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    timeout_s: float = Field(default=2.0, gt=0, allow_inf_nan=False)
    failures: int = Field(default=2, ge=1)


class ToolCapacity(_Strict):
    """A capacity-managed tool backend: at most `capacity` of its tool stages run at once.
    A `stage_started` event for it waits until the policy grants a slot (or, with
    `"wait": false`, answers 202 with a grant to poll); `stage_finished`, the application's
    next stage or its end gives the slot back."""

    name: str = Field(min_length=1, description="the backend name the tool stages give")
    capacity: int = Field(ge=1, description="tool stages that may run on it at once")
    order: Literal["fifo", "policy"] = Field(
        default="policy",
        description="waiting stages are granted by their applications' rank (policy, as LLM "
        "calls are) or first come, first served (fifo)",
    )
    hold_timeout_s: float = Field(
        default=600.0,
        gt=0,
        allow_inf_nan=False,
        description="a grant held this long without stage_finished is revoked (its client "
        "may be gone)",
    )


GpuGroupKind = Literal["vllm-sleep", "llamacpp-router"]
DEFAULT_SLO_S: dict[SloClass, float] = {"rt": 20.0, "be": 3600.0}


class GpuGroup(_Strict):
    """Models that take turns on the same GPUs; the gateway swaps them as the QLM planner
    orders (`hermes.gateway.model_swaps`).

    - `vllm-sleep`: `backends` are two or more vLLM (or emulated) servers started with sleep
      mode, one model each, all on the same GPUs; one is awake at a time. A swap puts the
      awake one to sleep at `sleep_level` (1: its weights wait in CPU memory, a warm swap; 2:
      they are discarded, a cold one) and wakes the next.
    - `llamacpp-router`: `backends` is one llama.cpp server in router mode serving several
      models; a swap unloads the loaded model and loads the next.

    `swap_s` is what the planner expects a swap to take (default 1 s for sleep level 1, else
    10 s); `throughput_tok_s` its decode throughput until it has measured one."""

    name: str = Field(min_length=1)
    kind: GpuGroupKind = "vllm-sleep"
    backends: list[str] = Field(min_length=1)
    sleep_level: Literal[1, 2] = 1
    swap_s: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    throughput_tok_s: float = Field(default=2000.0, gt=0, allow_inf_nan=False)

    @property
    def swap_estimate_s(self) -> float:
        if self.swap_s is not None:
            return self.swap_s
        return 1.0 if self.kind == "vllm-sleep" and self.sleep_level == 1 else 10.0


class GatewayConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    policy: str = "gittins"
    policy_options: PolicyOptions = PolicyOptions()
    backends: list[Backend] = Field(min_length=1)
    queue_limit: int = Field(default=10_000, ge=1)  # beyond it: 429 with Retry-After
    # Real-time calls (x-hermes-slo-class: rt) go first; best-effort ones still get at least
    # this share of the grants while both wait.
    be_min_share: float = Field(default=0.1, ge=0, le=1)
    max_body_bytes: int = Field(default=4 * 2**20, ge=1024)
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
    connect_timeout_s: float = Field(default=5.0, gt=0, allow_inf_nan=False)
    queue_timeout_s: float = Field(
        default=120.0,
        gt=0,
        allow_inf_nan=False,
        description="the longest a call waits in the gateway's queue: then 503 if no healthy "
        "upstream serves its model, else 429, both with Retry-After; a call for a model "
        "without a healthy upstream for this long already gets 503 at once",
    )
    health_check: HealthCheck = HealthCheck()
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
        "or from its last answer on a kept-alive one), else the connection is closed",
    )
    client_body_timeout_s: float = Field(
        default=60.0,
        gt=0,
        allow_inf_nan=False,
        description="a request's body must arrive within this of its headers, else 408",
    )
    app_idle_timeout_s: float = Field(default=300.0, gt=0, allow_inf_nan=False)
    api_key: str | None = None  # clients must send "Authorization: Bearer <api_key>"
    admin_key: str | None = None  # for /v1/apps/* events and finish, if set
    api_keys: list[ApiKey] = Field(
        default_factory=list,
        description="tenants: each key's applications are its own (ids scoped by its name), "
        "with the SLO classes and the tightest deadline its calls may ask for (docs/gateway.md)",
    )
    metrics_public: bool = Field(
        default=False, description="serve /metrics without a key even when keys are configured"
    )
    run_store: str | None = None  # SQLite file of finished application runs
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
    demand_model: str = "llama-2-7b"
    demand_gpu: str = "a100"
    # Cold things the prewarm policy (policy_options.prewarm: pdgraph or on-queue) warms.
    prewarm_targets: list[PrewarmTarget] = Field(default_factory=list)
    # Models that share GPUs, swapped in and out as the QLM planner orders.
    gpu_groups: list[GpuGroup] = Field(default_factory=list)
    # The SLO class of a call without x-hermes-slo-class, by model (else best-effort).
    model_slo_class: dict[str, SloClass] = Field(default_factory=dict)
    # The completion time each class is planned for (model swaps): a call's deadline is its
    # arrival plus this, or its application's x-hermes-deadline-ms if that is earlier.
    slo_s: dict[SloClass, float] = Field(default_factory=lambda: dict(DEFAULT_SLO_S))
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
                concurrency=16,
                time_scale=time_scale,
            )
        ],
    )
