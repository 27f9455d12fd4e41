"""The simulation configuration: validated data, read from YAML or built in code.

Unknown fields are errors, and every error names the field path and what it expected, e.g.
`sim.yaml: instances[0].max_num_seqs: Input should be greater than or equal to 1 (got 0)`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from hermes.config_base import ConfigError as ConfigError
from hermes.config_base import PolicyOptions as PolicyOptions
from hermes.config_base import PrewarmName as PrewarmName
from hermes.config_base import StrictModel as _Strict
from hermes.config_base import read_yaml, validated
from hermes.config_base import validation_messages as validation_messages
from hermes.engine.engine_config import DEFAULT_SWAP_BYTES_PER_S, EngineConfig
from hermes.policies.admission import split_admission
from hermes.types import SloClass

EngineKind = Literal["vllm", "vllm-priority", "bros", "bros-nobidir"]


# Replicas a group may hold: each is an engine (KV pool, queues) in this process's memory,
# and a count from a typo (--instances 100000000) would exhaust it before the run began.
MAX_REPLICAS = 1024


class InstanceGroup(_Strict):
    """`count` identical engine replicas of one model on one GPU type."""

    model: str = Field(
        default="llama-2-7b",
        description=(
            "the model's name, as the packaged profiles name it (llama-2-7b, llama-3-8b, "
            "llama-2-70b)"
        ),
    )
    engine: EngineKind = Field(
        default="vllm",
        description="batch selection: vllm (first come first served), vllm-priority (by the "
        "ranking policy's priority, real-time first), bros (real-time by slack each "
        "iteration, bidirectional KV blocks), bros-nobidir",
    )
    gpu: str = Field(default="a100", description="the GPU type: a100 or h100")
    tp: int | None = Field(
        default=None, ge=1, description="tensor-parallel degree; default the profile's"
    )
    profile: str | None = Field(
        default=None, description="an engine profile JSON file; overrides model, gpu and tp"
    )
    count: int = Field(
        default=1,
        ge=1,
        le=MAX_REPLICAS,
        description=f"identical replicas of this engine (at most {MAX_REPLICAS})",
    )
    max_num_seqs: int = Field(
        default=256, ge=1, description="vLLM's max_num_seqs: sequences in one batch"
    )
    max_num_batched_tokens: int = Field(
        default=2048, ge=1, description="vLLM's token budget per iteration (chunked prefill)"
    )
    max_model_len: int = Field(
        default=4096,
        ge=1,
        description="longest prompt + output accepted; longer requests are rejected",
    )
    block_size: int = Field(default=16, ge=1, description="tokens per KV block")
    gpu_memory_utilization: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="share of GPU memory for weights, activations and KV cache",
    )
    num_gpu_blocks: int | None = Field(
        default=None,
        ge=0,
        description="KV blocks on the GPU; default sized from the profile's memory figures",
    )
    preemption_mode: Literal["recompute", "swap"] = Field(
        default="recompute",
        description="what a preempted request loses: recompute (its KV) or swap (to CPU memory)",
    )
    swap_space_gb: float = Field(
        default=4.0, ge=0, allow_inf_nan=False, description="CPU swap space per GPU, GiB"
    )
    swap_bytes_per_s: float = Field(
        default=DEFAULT_SWAP_BYTES_PER_S,
        gt=0,
        allow_inf_nan=False,
        description="host<->device copy speed per GPU (PCIe)",
    )

    enable_prefix_caching: bool | None = Field(
        default=None,
        description="automatic prefix caching (vLLM V1's default); default on unless "
        "preemption_mode is swap",
    )
    cpu_kv_gb: float = Field(
        default=0.0,
        ge=0,
        allow_inf_nan=False,
        description="a CPU tier for the prefix cache per instance, GiB: evicted cached blocks "
        "are kept there and loaded back over PCIe on a hit",
    )

    @model_validator(mode="after")
    def _caching_recomputes(self) -> InstanceGroup:
        if self.enable_prefix_caching and self.preemption_mode == "swap":
            raise ValueError("prefix caching preempts by recompute (as vLLM V1): drop swap")
        return self

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            max_model_len=self.max_model_len,
            block_size=self.block_size,
            gpu_memory_utilization=self.gpu_memory_utilization,
            num_gpu_blocks=self.num_gpu_blocks,
            preemption_mode=self.preemption_mode,
            swap_space_bytes_per_gpu=self.swap_space_gb * 2**30,
            swap_bytes_per_s=self.swap_bytes_per_s,
            enable_prefix_caching=self.enable_prefix_caching,
            cpu_kv_cache_bytes=self.cpu_kv_gb * 2**30,
        )


class ToolBackend(_Strict):
    name: str = Field(
        min_length=1, description="the backend name application runs use (docker, env, search, ...)"
    )
    cold_start_s: float = Field(
        default=0.0,
        ge=0,
        allow_inf_nan=False,
        description="seconds from ordering an instance to its being ready",
    )
    keepalive_s: float = Field(
        default=60.0, ge=0, description="idle seconds before an instance is released"
    )
    concurrency: int = Field(default=1, ge=1, description="calls one instance serves at once")
    max_instances: int | None = Field(
        default=None, ge=1, description="at most this many instances; default unlimited"
    )
    order: Literal["fifo", "policy"] = Field(
        default="policy",
        description="calls waiting for an instance (max_instances reached): policy (by their "
        "applications' rank, as the LLM queue) or fifo (first come, first served)",
    )


class Arrivals(_Strict):
    """How arrival times are made: a trace's own timestamps, or a Poisson or gamma process."""

    process: Literal["trace", "poisson", "gamma"] = Field(
        default="trace", description="trace (the recorded timestamps), poisson or gamma"
    )
    rate_per_s: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="poisson/gamma: arrivals per second (or give window_s)",
    )
    cv: float = Field(
        default=1.0,
        gt=0,
        allow_inf_nan=False,
        description=(
            "gamma: coefficient of variation of the gaps (1 is Poisson; larger is burstier)"
        ),
    )
    # trace: multiply timestamps by this (0.5 = twice the load)
    time_scale: float = Field(
        default=1.0,
        gt=0,
        allow_inf_nan=False,
        description="trace: multiply timestamps by this (0.5 = twice the load)",
    )
    # poisson/gamma: squeeze the arrivals into this window instead of giving a rate
    window_s: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="poisson/gamma: squeeze the arrivals into this window instead of giving a rate",
    )

    @model_validator(mode="after")
    def _rate_or_window(self) -> Arrivals:
        if self.process != "trace" and (self.rate_per_s is None) == (self.window_s is None):
            raise ValueError(f"process {self.process!r} needs exactly one of rate_per_s, window_s")
        return self


class RequestWorkload(_Strict):
    """Plain requests from an Azure LLM CSV or a Mooncake JSONL trace."""

    trace: str | None = Field(
        default=None,
        description="Azure CSV or Mooncake JSONL; default the packaged Azure conversation trace",
    )
    limit: int | None = Field(default=None, ge=1, description="the first N requests of the trace")
    repeat: int = Field(default=1, ge=1, description="the trace back to back this many times")
    model: str | None = Field(
        default=None, description="which instance group serves them; default the first"
    )
    arrivals: Arrivals = Field(
        default=Arrivals(), description="default: the trace's own timestamps"
    )


class AppWorkload(_Strict):
    """Multi-step applications from templates (weighted) or from recorded runs (format v1)."""

    templates: dict[str, float] | None = Field(
        default=None,
        description=(
            "application types and their weights: factool_code, factool_kbqa, "
            "factool_math, react_fever, react_alfw, langchain_mapreduce"
        ),
    )
    runs: list[str] | None = Field(
        default=None,
        description="files of recorded application runs (format v1) instead of templates",
    )
    count: int = Field(default=200, ge=1, description="applications to run")
    learned_prefixes: bool = Field(
        default=False,
        description="give runs that record no shared prefix or history the ones `hermes learn` "
        "detects from the runs themselves (an upper bound on what they share)",
    )
    arrivals: Arrivals = Field(
        default=Arrivals(process="poisson", window_s=1800.0),
        description="default: Poisson, spread over 30 minutes",
    )

    @model_validator(mode="after")
    def _one_source(self) -> AppWorkload:
        if (self.templates is None) == (self.runs is None):
            raise ValueError("give exactly one of templates, runs")
        if self.arrivals.process == "trace" and self.templates is not None:
            raise ValueError("templates have no timestamps: use poisson or gamma arrivals")
        return self


class RequestStream(_Strict):
    """Requests of one SLO class from a trace: real-time (`rt`, chat: TTFT and TPOT SLOs,
    served first) or best-effort (`be`, batch: at most a completion SLO)."""

    name: str = Field(min_length=1, description="reported under this name")
    slo_class: SloClass = Field(
        default="be",
        description="rt (real-time: served first, TTFT and TPOT SLOs) or be (best-effort)",
    )
    model: str | None = Field(
        default=None, description="the model that serves it; default the first"
    )
    trace: str | None = Field(
        default=None,
        description="Azure CSV or Mooncake JSONL; default the packaged Azure conversation trace",
    )
    limit: int | None = Field(default=None, ge=1, description="the first N requests of the trace")
    arrivals: Arrivals = Field(default=Arrivals(), description="default the trace's own timestamps")
    ttft_s: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="time to first token SLO (rt)"
    )
    tpot_s: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="time per output token SLO (rt)"
    )
    e2e_s: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="completion SLO"
    )

    @model_validator(mode="after")
    def _rt_needs_slos(self) -> RequestStream:
        if self.slo_class == "rt" and (self.ttft_s is None or self.tpot_s is None):
            raise ValueError(f"stream {self.name!r}: a real-time stream needs ttft_s and tpot_s")
        return self


class SharedGpus(_Strict):
    """`count` GPUs that several models share (QLM): each GPU serves one active model at a
    time; a queue policy decides which requests each pulls and when it swaps models."""

    gpu: str = Field(default="a100", description="the GPU type: a100 or h100")
    tp: int | None = Field(
        default=None,
        ge=1,
        description="tensor-parallel degree of every model; default each profile's",
    )
    count: int = Field(
        default=2,
        ge=1,
        le=MAX_REPLICAS,
        description=f"GPUs (instances) in the group (at most {MAX_REPLICAS})",
    )
    models: list[str] = Field(min_length=1, description="the models these GPUs serve")
    queue_policy: Literal["vllm", "vllm-shared", "edf", "qlm-noplan", "qlm"] = Field(
        default="qlm", description="how requests are queued and GPUs swap models"
    )
    decide_interval_s: float = Field(
        default=1.0,
        gt=0,
        allow_inf_nan=False,
        description=(
            "the queue policy decides at most this often (and at once when a GPU falls idle)"
        ),
    )
    cpu_memory_gb: float = Field(
        default=64.0, ge=0, allow_inf_nan=False, description="CPU memory for warm models' weights"
    )
    cpu_kv_gb: float = Field(
        default=16.0, ge=0, allow_inf_nan=False, description="CPU memory for evicted requests' KV"
    )
    default_slo_s: float = Field(
        default=3600.0,
        gt=0,
        allow_inf_nan=False,
        description="the completion SLO of calls that bring none (applications' calls)",
    )

    @model_validator(mode="after")
    def _distinct(self) -> SharedGpus:
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"models must be distinct, got {self.models}")
        return self


class SLOConfig(_Strict):
    ttft_s: float | None = Field(
        default=None, gt=0, description="time to first token SLO of plain requests"
    )
    tpot_s: float | None = Field(
        default=None, gt=0, description="time per output token SLO of plain requests"
    )
    e2e_s: float | None = Field(
        default=None, gt=0, description="end-to-end latency SLO of plain requests"
    )


class SimConfig(_Strict):
    seed: int = Field(
        default=0,
        description="one seed for every random draw: the same seed gives the same numbers",
    )
    policy: str = Field(
        default="vllm",
        description=(
            "the ranking policy of applications and requests: vllm, parrot, vtc, plas, "
            "oracle, srjf-mean, gittins, edf, lstf; with an admission suffix, '+auto' (the "
            "adaptive limit) or '+N' (N calls per engine at most), the rest waiting in the "
            "policy's order: gittins+auto"
        ),
    )
    policy_options: PolicyOptions = Field(
        default=PolicyOptions(), description="options of the ranking and prewarm policies"
    )
    router: Literal["round-robin", "least-outstanding", "least-kv", "session", "prefix"] = Field(
        default="round-robin",
        description="how a model's replicas share its requests; session: an application's "
        "calls stay on the replica that served it unless that one is 8 requests busier",
    )
    instances: list[InstanceGroup] = Field(
        default_factory=lambda: [InstanceGroup(count=2)],
        description="dedicated engine groups, one model each",
    )
    tools: list[ToolBackend] = Field(
        default_factory=list,
        description=(
            "tool backends with cold starts and limited instances; unlisted backends are "
            "always warm"
        ),
    )
    shared_gpus: list[SharedGpus] = Field(
        default_factory=list, description="GPUs shared by several models under a queue policy (QLM)"
    )
    requests: RequestWorkload | None = Field(
        default=None, description="plain requests from a trace"
    )
    streams: list[RequestStream] = Field(
        default_factory=list,
        description="request streams of an SLO class (real-time chat, batch jobs)",
    )
    apps: AppWorkload | None = Field(
        default=None, description="multi-step applications (agents, map-reduce, ...)"
    )
    slo: SLOConfig | None = Field(
        default=None, description="latency SLOs that plain requests are judged by"
    )
    kv_retention: Literal["lru", "ttl", "pdgraph"] = Field(
        default="lru",
        description="what happens to an application's cached KV while it runs a tool stage: "
        "lru (vLLM: nothing), ttl (kept a while chosen from the tool's durations), pdgraph "
        "(kept, moved to the CPU tier or loaded back by the PDGraph's forecast of its return)",
    )
    until_s: float | None = Field(
        default=None,
        gt=0,
        description="stop the simulation at this time; default when everything is done",
    )

    @field_validator("policy")
    @classmethod
    def _policy(cls, value: str) -> str:
        split_admission(value)  # a bad admission suffix says what it expected
        return value

    @model_validator(mode="after")
    def _check(self) -> SimConfig:
        if not self.instances and not self.shared_gpus:
            raise ValueError("instances: at least one instance group (or shared_gpus) is needed")
        names = [t.name for t in self.tools]
        if len(set(names)) != len(names):
            raise ValueError(f"tools: backend names must be unique, got {names}")
        if self.requests is None and self.apps is None and not self.streams:
            raise ValueError("no workload: give requests, streams, apps or several")
        streams = [st.name for st in self.streams]
        if len(set(streams)) != len(streams):
            raise ValueError(f"streams: names must be unique, got {streams}")
        dedicated = {g.model for g in self.instances if g.profile is None}
        shared = [m for g in self.shared_gpus for m in g.models]
        twice = sorted((dedicated & set(shared)) | {m for m in shared if shared.count(m) > 1})
        if twice:
            raise ValueError(f"model {twice[0]!r} is served by two groups: give it one")
        return self

    @property
    def until(self) -> float:
        return math.inf if self.until_s is None else self.until_s


DEFAULT_CONFIG = SimConfig(requests=RequestWorkload())


def config_from_dict(data: Any, source: str = "config") -> SimConfig:
    return validated(SimConfig, data, source)


def load_config(path: str | Path) -> SimConfig:
    """Read a YAML config file; paths inside it are taken relative to the file."""
    p = Path(path)
    config = config_from_dict(read_yaml(p), str(p))
    return _relative_to(config, p.parent)


def _relative_to(config: SimConfig, base: Path) -> SimConfig:
    def fix(path: str) -> str:
        return path if Path(path).is_absolute() else str(base / path)

    update: dict[str, Any] = {}
    update["streams"] = [
        st.model_copy(update={"trace": fix(st.trace)}) if st.trace is not None else st
        for st in config.streams
    ]
    if config.requests is not None and config.requests.trace is not None:
        update["requests"] = config.requests.model_copy(
            update={"trace": fix(config.requests.trace)}
        )
    if config.apps is not None and config.apps.runs is not None:
        update["apps"] = config.apps.model_copy(update={"runs": [fix(r) for r in config.apps.runs]})
    groups = [
        g.model_copy(update={"profile": fix(g.profile)}) if g.profile is not None else g
        for g in config.instances
    ]
    update["instances"] = groups
    if config.policy_options.pdgraphs is not None:
        update["policy_options"] = config.policy_options.model_copy(
            update={"pdgraphs": fix(config.policy_options.pdgraphs)}
        )
    return config.model_copy(update=update)
