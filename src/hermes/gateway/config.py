"""The gateway configuration: validated data, read from YAML or built in code.

Unknown fields are errors, and every error names the field path and what it expected, as the
simulator's configuration does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hermes.sim.config import PolicyOptions, read_yaml, validated

BackendKind = Literal["vllm", "sglang", "llamacpp", "openai", "emulated"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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

    @model_validator(mode="after")
    def _url(self) -> Backend:
        if self.kind != "emulated" and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https:// (got {self.url!r})")
        return self


class GatewayConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    policy: str = "gittins"
    policy_options: PolicyOptions = PolicyOptions()
    backends: list[Backend] = Field(min_length=1)
    queue_limit: int = Field(default=10_000, ge=1)  # beyond it: 429 with Retry-After
    max_body_bytes: int = Field(default=4 * 2**20, ge=1024)
    upstream_timeout_s: float = Field(default=600.0, gt=0, allow_inf_nan=False)
    connect_timeout_s: float = Field(default=5.0, gt=0, allow_inf_nan=False)
    app_idle_timeout_s: float = Field(default=300.0, gt=0, allow_inf_nan=False)
    api_key: str | None = None  # clients must send "Authorization: Bearer <api_key>"
    admin_key: str | None = None  # for /v1/apps/* events and finish, if set
    run_store: str | None = None  # SQLite file of finished application runs
    # The engine profile that weighs tokens into seconds of service for the demand models.
    demand_model: str = "llama-2-7b"
    demand_gpu: str = "a100"

    @model_validator(mode="after")
    def _unique(self) -> GatewayConfig:
        names = [b.name for b in self.backends]
        if len(set(names)) != len(names):
            raise ValueError(f"backends: names must be unique, got {names}")
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
