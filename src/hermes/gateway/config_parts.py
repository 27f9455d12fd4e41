"""The parts of the gateway configuration: backends, their health checks, prewarm targets
and hooks, capacity-managed tools, and GPUs that models share (`gateway.config`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from hermes.config_base import StrictModel as _Strict
from hermes.gateway.inference_headers import InferenceHeaders
from hermes.types import SloClass

BackendKind = Literal["vllm", "sglang", "llamacpp", "openai", "emulated"]
# A backend URL that names a Ray Serve deployment, called through a handle (hermes serve --ray).
SERVE_SCHEME = "serve://"


class Backend(_Strict):
    """One upstream engine replica."""

    name: str = Field(min_length=1, description="the backend's name (routes, metrics, logs)")
    kind: BackendKind = Field(
        default="vllm",
        description="vllm, sglang, llamacpp or emulated: how priorities and controls are sent",
    )
    url: str = Field(
        default="",
        description="base URL, e.g. http://10.0.0.5:8000; or serve://APP/DEPLOYMENT, a Ray "
        "Serve deployment called through a handle (hermes serve --ray only; docs/ray.md)",
    )
    models: list[str] = Field(
        min_length=1, description="the models it serves (the `model` of a call picks the backend)"
    )
    # Calls in flight on this replica at once; the rest wait in the gateway, in policy order.
    concurrency: int | Literal["auto"] = Field(
        default="auto",
        description="calls in flight at once per replica (a whole number >= 1), or auto: the "
        "admission controller finds the smallest number that keeps the engine at its "
        "throughput, between 1 and max_concurrency; the rest wait in policy order",
    )
    max_concurrency: int = Field(
        default=256,
        ge=1,
        description="concurrency auto: the most calls it ever lets in at once (vLLM's "
        "max_num_seqs, 256 by default; llama.cpp: its --parallel)",
    )
    health_path: str = Field(
        default="/health",
        description="GET path of the upstream's health endpoint, for active checks",
    )
    api_key: str | None = Field(default=None, description="sent upstream as a bearer token")
    # emulated only: the simulator's engine model in real time
    emulate_model: str = Field(
        default="llama-2-7b", description="emulated: the model the engine model runs"
    )
    emulate_gpu: str = Field(default="a100", description="emulated: its GPU")
    emulate_max_num_seqs: int = Field(default=256, ge=1, description="emulated: its max_num_seqs")
    time_scale: float = Field(
        default=1.0,
        gt=0,
        allow_inf_nan=False,
        description="emulated: wall seconds per model second (0.1 runs ten times as fast)",
    )
    router: Literal["least-outstanding", "session"] = Field(
        default="least-outstanding",
        description="least-outstanding: a call goes to the replica of its model with the most "
        "free slots; session: an application's calls come back to this replica once it has "
        "served one, unless it has more than session_max_excess calls in flight over the "
        "least loaded (llama.cpp: each application also keeps its slot, with cache_prompt)",
    )
    inference_headers: InferenceHeaders = Field(
        default=InferenceHeaders(),
        description="llm-d / Gateway API Inference Extension headers sent with each call "
        "(objective, fairness id, SLOs, rank); true or false alone turns them on or off",
    )

    @field_validator("concurrency", mode="before")
    @classmethod
    def _concurrency(cls, value: Any) -> int | str:
        if value == "auto" and isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            return value
        raise ValueError(f'concurrency must be a whole number >= 1 or "auto" (got {value!r})')

    @model_validator(mode="after")
    def _url(self) -> Backend:
        if self.url.startswith(SERVE_SCHEME):
            app, _, deployment = self.url.removeprefix(SERVE_SCHEME).partition("/")
            if not app or not deployment or "/" in deployment:
                raise ValueError(f"url must be serve://APP/DEPLOYMENT (got {self.url!r})")
            if self.concurrency == "auto":  # its engine's /metrics is not reachable
                raise ValueError(
                    "a Ray Serve deployment (serve://) needs a whole-number concurrency, at "
                    "most its replicas x max_ongoing_requests, not auto"
                )
            return self
        if self.kind != "emulated" and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https:// (got {self.url!r})")
        return self

    @property
    def max_limit(self) -> int:
        """The most calls the gateway ever has in flight here: a fixed concurrency, or auto's
        max_concurrency."""
        return self.max_concurrency if self.concurrency == "auto" else int(self.concurrency)


class HttpHook(_Strict):
    """An HTTP call the gateway makes to a tool backend's manager. Its JSON body is `body`
    plus `backend`, `hold_s` (keep the instance that long after it is ready, if unused),
    `reason` ("prewarm" or "retain"), `app_id` and `app_type`."""

    url: str = Field(description="the tool manager's endpoint")
    method: Literal["POST", "PUT"] = Field(default="POST", description="POST or PUT")
    headers: dict[str, str] = Field(default_factory=dict, description="extra request headers")
    body: dict[str, Any] = Field(
        default_factory=dict, description="JSON body; the order's backend and hold are added"
    )
    timeout_s: float = Field(
        default=5.0, gt=0, allow_inf_nan=False, description="give up on the hook after this long"
    )

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

    name: str = Field(
        min_length=1, description="the backend (tool or model) the prewarm policy plans for"
    )
    action: PrewarmAction = Field(
        description="http (a tool manager's hook), vllm-wake-up or vllm-load-lora"
    )
    cold_start_s: float = Field(
        gt=0, allow_inf_nan=False, description="its cold start, which the policy plans with"
    )
    hook: HttpHook | None = Field(default=None, description="http: the warm-up call")
    upstream: str | None = Field(
        default=None, description="vllm-*: the backend (by name) to act on"
    )
    lora_path: str | None = Field(
        default=None, description="vllm-load-lora: where the engine finds the adapter"
    )
    # vllm-wake-up: put the replica to sleep (level 1) after this many idle seconds; None:
    # the gateway never puts it to sleep, it only wakes it.
    sleep_after_idle_s: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="vllm-wake-up: put the engine back to sleep after this long idle",
    )

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

    interval_s: float = Field(
        default=1.0,
        gt=0,
        allow_inf_nan=False,
        description="seconds between probes of each upstream",
    )
    timeout_s: float = Field(
        default=2.0, gt=0, allow_inf_nan=False, description="a probe slower than this fails"
    )
    failures: int = Field(
        default=2,
        ge=1,
        description="consecutive failed probes that take an upstream out of rotation",
    )


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

    name: str = Field(min_length=1, description="the group's name")
    kind: GpuGroupKind = Field(
        default="vllm-sleep",
        description="vllm-sleep (sleep and wake-up) or llamacpp-router (load and unload)",
    )
    backends: list[str] = Field(
        min_length=1,
        description="the backends (by name) that share these GPUs, one awake at a time",
    )
    sleep_level: Literal[1, 2] = Field(
        default=1, description="vLLM sleep level: 1 keeps weights in CPU memory, 2 drops them"
    )
    swap_s: float | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="seconds a swap takes, for the planner; default measured",
    )
    throughput_tok_s: float = Field(
        default=2000.0,
        gt=0,
        allow_inf_nan=False,
        description="output tokens per second a model serves, the planner's prior",
    )

    @property
    def swap_estimate_s(self) -> float:
        if self.swap_s is not None:
            return self.swap_s
        return 1.0 if self.kind == "vllm-sleep" and self.sleep_level == 1 else 10.0


class RayOptions(_Strict):
    """`hermes serve --ray`: the gateway as a Ray Serve application (docs/ray.md). Ingress
    replicas take the calls and forward them upstream; one scheduler actor holds the queue,
    the applications and the learned graphs, and grants slots."""

    address: str | None = Field(
        default=None,
        description="a Ray cluster to join (ray://host:10001, or auto); none: start a local "
        "Ray in-process",
    )
    num_cpus: int | None = Field(
        default=None, ge=1, description="a local Ray's CPUs (none: the machine's)"
    )
    namespace: str = Field(
        default="hermes", min_length=1, description="the Ray namespace of the scheduler actor"
    )
    ingress_replicas: int = Field(
        default=2, ge=1, description="ingress replicas (Ray Serve deployment replicas)"
    )
    replica_num_cpus: float = Field(
        default=0.0,
        ge=0,
        allow_inf_nan=False,
        description="CPUs each ingress replica and the scheduler actor reserve (0: they fit "
        "beside anything, as I/O-bound work does)",
    )
    scheduler_max_restarts: int = Field(
        default=3,
        ge=-1,
        description="how often Ray restarts a failed scheduler actor (-1: always); it comes "
        "back with the graphs of the run store",
    )
    poll_s: float = Field(
        default=1.0,
        gt=0,
        allow_inf_nan=False,
        description="an idle replica's long poll of the scheduler for grants",
    )
    replica_timeout_s: float = Field(
        default=5.0,
        gt=0,
        allow_inf_nan=False,
        description="a replica silent this long has died: its calls leave the queue and "
        "give their slots back",
    )
    scheduler_timeout_s: float = Field(
        default=30.0,
        gt=0,
        allow_inf_nan=False,
        description="calls waiting at a replica that has not reached the scheduler for this "
        "long get 503",
    )
    direct_ingress: bool = Field(
        default=False,
        description="each ingress replica also serves HTTP on a port of its own (Ray Serve's "
        "direct ingress), skipping the proxy's hop; clients spread their calls over the "
        "replicas' URLs (printed at the start). A local Ray only, or a cluster started with "
        "RAY_SERVE_ENABLE_DIRECT_INGRESS=1",
    )
    scheduler_link: Literal["ray", "tcp"] = Field(
        default="ray",
        description="how replicas send the scheduler their calls and get its grants: ray "
        "(actor calls) or tcp (a socket the actor opens, found and authorised through Ray; "
        "a step's round trip 1.1 ms instead of 4.7 ms here, docs/benchmarks.md)",
    )

    @model_validator(mode="after")
    def _poll(self) -> RayOptions:
        if self.poll_s >= self.replica_timeout_s:
            raise ValueError(
                f"poll_s ({self.poll_s:g}) must be below replica_timeout_s "
                f"({self.replica_timeout_s:g}): an idle replica would be taken for dead"
            )
        return self
