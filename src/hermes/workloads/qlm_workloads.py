"""The QLM paper's three workloads (arXiv 2407.00047), WA, WB and WC, as lists of requests.

Mixes, arrivals, lengths and seeding: docs/design/qlm-workloads.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from numbers import Integral, Real

import numpy as np

from hermes.types import FloatArray, IntArray
from hermes.workloads.arrivals import gamma_arrivals
from hermes.workloads.mix import sample_mix
from hermes.workloads.request_traces import TraceRequest, read_azure_csv

__all__ = [
    "AZURE_CONVERSATION_CSV",
    "DEFAULT_CV",
    "DEFAULT_MAX_MODEL_LEN",
    "MEGA_PROMPT_TOKENS",
    "PROFILE_ALIASES",
    "WA_CLASSES",
    "WB_CLASSES",
    "WB_MODELS",
    "WC_MEGA_SHARE",
    "QlmRequest",
    "SloTier",
    "TraceLengths",
    "azure_conversation_lengths",
    "profile_name",
    "qlm_workload",
    "workload_a",
    "workload_b",
    "workload_c",
]


AZURE_CONVERSATION_CSV = "AzureLLMInferenceTrace_conv.csv"
DEFAULT_CV = 4.0
DEFAULT_MAX_MODEL_LEN = 4096
MEGA_PROMPT_TOKENS = (3000, 3900)  # inclusive
WC_MEGA_SHARE = 0.05

# Model names of the workloads that have no packaged profile of their own -> the profile.
PROFILE_ALIASES: Mapping[str, str] = {"vicuna-7b": "llama-2-7b"}

# Gaps are drawn this many at a time, so a prefix never depends on how many were needed.
_CHUNK = 4096
# Stream numbers under the seed.
_ARRIVALS, _MODELS, _CLASSES, _LENGTHS, _MEGA = 1, 2, 3, 4, 5


def _is_number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def profile_name(model: str) -> str:
    """The packaged profile's model name for a workload model name."""
    return PROFILE_ALIASES.get(model, model)


@dataclass(frozen=True, slots=True)
class SloTier:
    """A QLM request class: its name, end-to-end latency SLO (seconds) and share of requests.
    (Not `hermes.types.SloClass`, BROS's real-time or best-effort.)

    Shares of a mix need not sum to one; they are normalised."""

    name: str
    slo_s: float
    share: float

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"SloTier.name must be a non-empty string, got {self.name!r}")
        if not _is_number(self.slo_s) or not (math.isfinite(self.slo_s) and self.slo_s > 0):
            raise ValueError(f"SloTier {self.name!r}: slo_s must be > 0, got {self.slo_s!r}")
        if not _is_number(self.share) or not (math.isfinite(self.share) and self.share >= 0):
            raise ValueError(f"SloTier {self.name!r}: share must be >= 0, got {self.share!r}")


WA_CLASSES: tuple[SloTier, ...] = (
    SloTier("interactive", 20.0, 0.3),
    SloTier("batch-60s", 60.0, 0.4),
    SloTier("batch-1h", 3600.0, 0.3),
)
WB_CLASSES: tuple[SloTier, ...] = (
    SloTier("batch-60s", 60.0, 0.5),
    SloTier("batch-1h", 3600.0, 0.5),
)
WB_MODELS: tuple[str, ...] = ("llama-2-7b", "llama-3-8b", "vicuna-7b")


@dataclass(frozen=True, slots=True)
class QlmRequest:
    """One request: for `model`, of class `slo_class` with an end-to-end SLO of `slo_s`
    seconds after `arrival_s`. `mega_prompt` marks WC's injected long prompts."""

    id: int
    model: str
    slo_class: str
    slo_s: float
    prompt_tokens: int
    output_tokens: int
    arrival_s: float
    mega_prompt: bool = False

    @property
    def deadline_s(self) -> float:
        return self.arrival_s + self.slo_s


@dataclass(frozen=True, slots=True)
class TraceLengths:
    """(prompt, output) token counts of a trace's requests, row by row (read-only arrays)."""

    prompts: IntArray
    outputs: IntArray

    def __post_init__(self) -> None:
        p = np.array(self.prompts, dtype=np.int64)
        o = np.array(self.outputs, dtype=np.int64)
        if p.ndim != 1 or p.shape != o.shape:
            raise ValueError("TraceLengths: prompts and outputs must be 1-D and of equal length")
        if p.size == 0:
            raise ValueError("TraceLengths: no requests")
        if np.any(p < 0) or np.any(o < 0):
            raise ValueError("TraceLengths: token counts must be >= 0")
        p.setflags(write=False)
        o.setflags(write=False)
        object.__setattr__(self, "prompts", p)
        object.__setattr__(self, "outputs", o)

    def __len__(self) -> int:
        return int(self.prompts.size)

    @classmethod
    def from_requests(cls, requests: Sequence[TraceRequest]) -> TraceLengths:
        return cls(
            np.array([r.prompt_tokens for r in requests], dtype=np.int64),
            np.array([r.output_tokens for r in requests], dtype=np.int64),
        )


@cache
def azure_conversation_lengths() -> TraceLengths:
    """Every row of the packaged Azure conversation trace (19,366 requests)."""
    file = resources.files("hermes") / "data" / AZURE_CONVERSATION_CSV
    with resources.as_file(file) as path:
        return TraceLengths.from_requests(read_azure_csv(path))


# --- the three workloads -------------------------------------------------------------------


def workload_a(
    rate_per_s: float,
    duration_s: float,
    seed: int,
    *,
    model: str = "llama-2-7b",
    classes: Sequence[SloTier] = WA_CLASSES,
    cv: float = DEFAULT_CV,
    max_model_len: int = DEFAULT_MAX_MODEL_LEN,
    lengths: TraceLengths | None = None,
) -> list[QlmRequest]:
    """WA: one model, interactive and batch classes (`WA_CLASSES` by default)."""
    return qlm_workload(
        rate_per_s,
        duration_s,
        seed,
        models={model: 1.0},
        classes=classes,
        cv=cv,
        max_model_len=max_model_len,
        lengths=lengths,
    )


def workload_b(
    rate_per_s: float,
    duration_s: float,
    seed: int,
    *,
    models: Sequence[str] | Mapping[str, float] = WB_MODELS,
    classes: Sequence[SloTier] = WB_CLASSES,
    cv: float = DEFAULT_CV,
    max_model_len: int = DEFAULT_MAX_MODEL_LEN,
    lengths: TraceLengths | None = None,
) -> list[QlmRequest]:
    """WB: several models (a sequence: equal shares; a mapping: model -> share), batch only.

    Each model's requests are a bursty stream of their own (model k's seeded `seed·31 + k + 1`,
    at its share of the rate), so the load moves between models over time, unlike one stream
    whose requests draw their model independently. Merged in arrival order, ids renumbered.
    """
    shares = dict(models) if isinstance(models, Mapping) else dict.fromkeys(models, 1.0)
    if not isinstance(models, Mapping) and len(shares) != len(models):
        raise ValueError(f"models listed twice: {list(models)}")
    total = sum(shares.values())
    if not total > 0:
        raise ValueError(f"model shares must have a positive sum, got {shares}")
    reqs: list[QlmRequest] = []
    for k, (model, share) in enumerate(shares.items()):
        if share > 0:
            reqs += qlm_workload(
                rate_per_s * share / total,
                duration_s,
                seed * 31 + k + 1,
                models={model: 1.0},
                classes=classes,
                cv=cv,
                max_model_len=max_model_len,
                lengths=lengths,
            )
    reqs.sort(key=lambda r: (r.arrival_s, r.model))
    return [replace(r, id=i) for i, r in enumerate(reqs)]


def workload_c(
    rate_per_s: float,
    duration_s: float,
    seed: int,
    *,
    model: str = "llama-2-7b",
    classes: Sequence[SloTier] = WA_CLASSES,
    mega_share: float = WC_MEGA_SHARE,
    mega_prompt_tokens: tuple[int, int] = MEGA_PROMPT_TOKENS,
    cv: float = DEFAULT_CV,
    max_model_len: int = DEFAULT_MAX_MODEL_LEN,
    lengths: TraceLengths | None = None,
) -> list[QlmRequest]:
    """WC: WA's single model and mix, with `mega_share` of requests given mega-prompts."""
    return qlm_workload(
        rate_per_s,
        duration_s,
        seed,
        models={model: 1.0},
        classes=classes,
        cv=cv,
        max_model_len=max_model_len,
        lengths=lengths,
        mega_share=mega_share,
        mega_prompt_tokens=mega_prompt_tokens,
    )


def qlm_workload(
    rate_per_s: float,
    duration_s: float,
    seed: int,
    *,
    models: Mapping[str, float],
    classes: Sequence[SloTier],
    cv: float = DEFAULT_CV,
    max_model_len: int = DEFAULT_MAX_MODEL_LEN,
    lengths: TraceLengths | None = None,
    mega_share: float = 0.0,
    mega_prompt_tokens: tuple[int, int] = MEGA_PROMPT_TOKENS,
) -> list[QlmRequest]:
    """Requests arriving over `[0, duration_s)`, in arrival order with ids 0, 1, ...

    `models` maps model name -> share and `classes` gives the SLO classes and their shares
    (each request's model and class are drawn independently). `lengths=None` samples the
    packaged Azure conversation trace.
    """
    rate = _positive("rate_per_s", rate_per_s)
    duration = _positive("duration_s", duration_s)
    c = _positive("cv", cv)
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if isinstance(max_model_len, bool) or not isinstance(max_model_len, int) or max_model_len < 2:
        raise ValueError(f"max_model_len must be an integer >= 2, got {max_model_len!r}")
    if not _is_number(mega_share) or not 0 <= mega_share <= 1:
        raise ValueError(f"mega_share must be in [0, 1], got {mega_share!r}")
    lo, hi = mega_prompt_tokens
    if mega_share > 0 and not 1 <= lo <= hi <= max_model_len - 1:
        raise ValueError(
            f"mega_prompt_tokens {mega_prompt_tokens!r} must satisfy "
            f"1 <= low <= high <= max_model_len - 1 = {max_model_len - 1}"
        )
    by_name = {k.name: k for k in classes}
    if len(by_name) != len(classes):
        raise ValueError(f"SLO class names must be unique, got {[k.name for k in classes]}")
    pool = azure_conversation_lengths() if lengths is None else lengths
    s = int(seed)

    arrivals = _arrivals(rate, c, duration, np.random.default_rng([s, _ARRIVALS]))
    n = int(arrivals.size)
    model_of = sample_mix(dict(models), n, np.random.default_rng([s, _MODELS]))
    class_of = sample_mix(
        {k.name: k.share for k in classes}, n, np.random.default_rng([s, _CLASSES])
    )
    rows = np.random.default_rng([s, _LENGTHS]).integers(0, len(pool), size=n)
    outputs = np.clip(pool.outputs[rows], 1, max_model_len - 1)
    prompts = np.clip(pool.prompts[rows], 1, max_model_len - outputs)
    mega = np.zeros(n, dtype=bool)
    if mega_share > 0:
        rng = np.random.default_rng([s, _MEGA])
        mega = rng.random(n) < mega_share
        long_prompts = rng.integers(lo, hi + 1, size=n)
        prompts = np.where(mega, long_prompts, prompts)
        outputs = np.where(mega, np.clip(pool.outputs[rows], 1, max_model_len - prompts), outputs)

    out: list[QlmRequest] = []
    for i, (t, m, k, p, o, big) in enumerate(
        zip(
            arrivals.tolist(),
            model_of,
            class_of,
            prompts.tolist(),
            outputs.tolist(),
            mega.tolist(),
            strict=True,
        )
    ):
        slo = by_name[k]
        out.append(QlmRequest(i, m, k, slo.slo_s, p, o, t, big))
    return out


# --- helpers ---------------------------------------------------------------------------------


def _arrivals(rate: float, cv: float, duration: float, rng: np.random.Generator) -> FloatArray:
    """Gamma-gap arrival times in [0, duration), drawn `_CHUNK` gaps at a time."""
    parts: list[FloatArray] = []
    last = 0.0
    while True:
        times = gamma_arrivals(rate, cv, _CHUNK, rng, start_s=last)
        inside = times[times < duration]
        parts.append(inside)
        if inside.size < times.size:
            return np.concatenate(parts)
        last = float(times[-1])


def _positive(name: str, value: float) -> float:
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)
