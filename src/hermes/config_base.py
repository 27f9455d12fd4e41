"""What every validated configuration shares: the strict pydantic base, one YAML reader, one
validator whose errors name the field, and the policy options both shells take.

Unknown fields are errors, and every error names the field path and what it expected, e.g.
`sim.yaml: instances[0].max_num_seqs: Input should be greater than or equal to 1 (got 0)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ConfigError(ValueError):
    """A configuration breaks a rule; the message says where and what was expected."""


class StrictModel(BaseModel):
    """Frozen, and unknown fields rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


PrewarmName = Literal["none", "keepalive", "on-queue", "pdgraph"]


class PolicyOptions(StrictModel):
    """Where the PDGraph policies (gittins, srjf-mean, lstf, and the on-queue and pdgraph
    prewarm policies) get their demand models, and how tool backends are prewarmed."""

    pdgraphs: str | None = Field(
        default=None,
        description="a PDGraph file from `hermes learn`; default: learned from template runs",
    )
    training_runs: int = Field(
        default=300, ge=1, description="runs per template application to learn from, when learning"
    )
    refine: bool = Field(
        default=True,
        description="online refinement: later stages' demand drawn from runs like this one so far",
    )
    samples: int = Field(
        default=1000,
        ge=1,
        description="Monte Carlo samples of remaining demand per application state",
    )
    rank_interval_s: float = Field(
        default=0.1,
        gt=0,
        allow_inf_nan=False,
        description="seconds between ranking rounds that re-rank waiting calls",
    )
    # keepalive: each backend's fixed keepalive_s, nothing warmed ahead (hermes.policies.prewarm)
    prewarm: PrewarmName = Field(
        default="keepalive",
        description="tool-backend prewarming: none, keepalive, on-queue or pdgraph",
    )
    prewarm_k: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="pdgraph prewarming's threshold on p(needed) x P(ready in time)",
    )


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in ("function-after",) and not str(part).startswith("function-"):
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def validation_messages(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        got = "" if e["type"] == "missing" else f" (got {e.get('input')!r})"
        if e["type"] == "extra_forbidden":
            lines.append(f"{_where(e['loc'])}: unknown field")
            continue
        msg = str(e["msg"]).removeprefix("Value error, ")
        lines.append(f"{_where(e['loc'])}: {msg}{got if e['type'] != 'value_error' else ''}")
    return "; ".join(lines)


M = TypeVar("M", bound=BaseModel)


def validated(model: type[M], data: Any, source: str) -> M:
    """`data` as a `model`, or a ConfigError naming `source`, the field and what it expected."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{source}: {validation_messages(err)}") from None


def read_yaml(path: Path) -> Any:
    """The YAML document in `path` ({} when empty), or a ConfigError saying why not."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nests too deeply to read") from None
    return {} if data is None else data
