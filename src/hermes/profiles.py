"""Engine profiles: reading (model, GPU, TP) data files into `StepCostModel`s.

The shell side of `hermes.engine.cost_model`. Profiles are JSON files under
`hermes/data/profiles/`; the non-attention step times come from the packaged Vidur table
`hermes/data/vidur_nonattention_iteration_ms.csv`. A profile whose (device, model, tp) row is
missing from that table may derive it with `vidur_scaled_from` (see `_scaled_row`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import numpy as np

from hermes.engine.cost_model import (
    INT_FIELDS,
    POSITIVE_FIELDS,
    PROFILE_NON_NEGATIVE_FIELDS,
    PROFILE_OPTIONAL_NON_NEGATIVE_FIELDS,
    StepCostModel,
)

__all__ = ["list_profiles", "load_profile", "load_profile_file"]

_DATA = resources.files("hermes") / "data"
_VIDUR_CSV = "vidur_nonattention_iteration_ms.csv"

_STR_FIELDS = ("name", "model", "gpu", "vidur_model", "vidur_device", "sources")
_REQUIRED = frozenset(_STR_FIELDS + INT_FIELDS + POSITIVE_FIELDS + PROFILE_NON_NEGATIVE_FIELDS)
# Optional numbers default to 0 (see cost_model.PROFILE_OPTIONAL_NON_NEGATIVE_FIELDS).
_OPTIONAL = frozenset({"vidur_scaled_from", *PROFILE_OPTIONAL_NON_NEGATIVE_FIELDS})
_SCALED_FROM_FIELDS = frozenset({"device", "reference_model"})


@dataclass(frozen=True, slots=True)
class _VidurRow:
    num_layers: int
    tokens: tuple[float, ...]
    ms: tuple[float, ...]
    ms_per_token_tail: float


_VidurKey = tuple[str, str, int]  # (device, model, tp)


def _parse_vidur_table(text: str, source: str) -> dict[_VidurKey, _VidurRow]:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    lead = ["device", "model", "tp", "num_layers"]
    if header is None or header[:4] != lead or header[-1] != "ms_per_token_at_4096":
        raise ValueError(f"{source}: unexpected header {header!r}")
    token_cols = header[4:-1]
    try:
        tokens = tuple(float(c.removeprefix("t")) for c in token_cols)
    except ValueError:
        raise ValueError(f"{source}: token columns must be t<N>, got {token_cols!r}") from None
    table: dict[_VidurKey, _VidurRow] = {}
    for line_no, row in enumerate(reader, start=2):
        if not row:
            continue
        try:
            key = (row[0], row[1], int(row[2]))
            values = [float(v) for v in row[4:]]
            table[key] = _VidurRow(int(row[3]), tokens, tuple(values[:-1]), values[-1])
        except (ValueError, IndexError):
            raise ValueError(f"{source}, line {line_no}: malformed row {row!r}") from None
    return table


@cache
def _vidur_table() -> dict[_VidurKey, _VidurRow]:
    text = (_DATA / _VIDUR_CSV).read_text(encoding="utf-8")
    return _parse_vidur_table(text, f"hermes/data/{_VIDUR_CSV}")


def _err(source: str, field: str, problem: str) -> ValueError:
    return ValueError(f"{source}: field {field!r}: {problem}")


def _validate(obj: object, source: str) -> dict[str, Any]:
    """Check presence, unknown keys and types; a message names the file and the field."""
    if not isinstance(obj, dict):
        raise ValueError(f"{source}: a profile must be a JSON object, got {type(obj).__name__}")
    for key in sorted(obj.keys() - _REQUIRED - _OPTIONAL):
        raise _err(
            source, key, f"unknown field (known: {', '.join(sorted(_REQUIRED | _OPTIONAL))})"
        )
    for key in sorted(_REQUIRED - obj.keys()):
        raise _err(source, key, "missing")
    for key in _STR_FIELDS:
        if not isinstance(obj[key], str) or not obj[key].strip():
            raise _err(source, key, f"expected a non-empty string, got {obj[key]!r}")
    for key in INT_FIELDS:
        v = obj[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise _err(source, key, f"expected an integer >= 1, got {v!r}")
    numbers = POSITIVE_FIELDS + PROFILE_NON_NEGATIVE_FIELDS + PROFILE_OPTIONAL_NON_NEGATIVE_FIELDS
    for key in (k for k in numbers if k in obj):
        v = obj[key]
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise _err(source, key, f"expected a finite number, got {v!r}")
        if v < 0 or (v == 0 and key in POSITIVE_FIELDS):
            raise _err(source, key, f"expected a number {'>' if v == 0 else '>='} 0, got {v!r}")
    if obj["num_q_heads"] % obj["num_kv_heads"]:
        raise _err(source, "num_kv_heads", "must divide num_q_heads")
    scaled = obj.get("vidur_scaled_from")
    if scaled is not None:
        if not isinstance(scaled, dict) or scaled.keys() != _SCALED_FROM_FIELDS:
            raise _err(
                source,
                "vidur_scaled_from",
                f"expected an object with exactly {sorted(_SCALED_FROM_FIELDS)}, got {scaled!r}",
            )
        if not all(isinstance(v, str) and v for v in scaled.values()):
            raise _err(source, "vidur_scaled_from", f"values must be strings, got {scaled!r}")
    return obj


def _lookup(table: dict[_VidurKey, _VidurRow], key: _VidurKey, source: str) -> _VidurRow:
    row = table.get(key)
    if row is None:
        raise _err(
            source,
            "vidur_model",
            f"no (device, model, tp) = {key!r} row in the Vidur table; add 'vidur_scaled_from' "
            "to derive one",
        )
    return row


def _scaled_row(
    table: dict[_VidurKey, _VidurRow], target: _VidurKey, base_device: str, reference: str, src: str
) -> _VidurRow:
    """Derive a missing row: the base device's row of this model, times the column-wise ratio
    target-device / base-device measured on a reference model at the same tp.

    Column-wise because the speed-up is not one number: small batches are bound by weight
    bandwidth, large ones by FLOP/s, and the two GPUs differ by different factors in each.
    """
    device, model, tp = target
    base = _lookup(table, (base_device, model, tp), src)
    ref_target = _lookup(table, (device, reference, tp), src)
    ref_base = _lookup(table, (base_device, reference, tp), src)
    ms = tuple(b * t / r for b, t, r in zip(base.ms, ref_target.ms, ref_base.ms, strict=True))
    tail = base.ms_per_token_tail * ref_target.ms_per_token_tail / ref_base.ms_per_token_tail
    return _VidurRow(base.num_layers, base.tokens, ms, tail)


def _build(obj: dict[str, Any], source: str) -> StepCostModel:
    table = _vidur_table()
    key: _VidurKey = (obj["vidur_device"], obj["vidur_model"], obj["tp"])
    scaled = obj.get("vidur_scaled_from")
    if scaled is None:
        row = _lookup(table, key, source)
    else:
        if key in table:
            raise _err(source, "vidur_scaled_from", f"the Vidur table has a {key!r} row; use it")
        row = _scaled_row(table, key, scaled["device"], scaled["reference_model"], source)
    if row.num_layers != obj["num_layers"]:
        raise _err(
            source, "num_layers", f"{obj['num_layers']} but the Vidur row has {row.num_layers}"
        )
    # Profiled medians jitter by a few percent in the flat, bandwidth-bound region (Llama-2-7B
    # on A100: 9.28 ms at 1 token, 9.06 ms at 8). A running maximum keeps the model monotonic,
    # so a scheduler never sees extra tokens as free or negative cost; it moves no point by
    # more than that jitter.
    ms = np.maximum.accumulate(np.array(row.ms, dtype=np.float64))
    try:
        return StepCostModel(
            name=obj["name"],
            model=obj["model"],
            gpu=obj["gpu"],
            tp=obj["tp"],
            num_layers=obj["num_layers"],
            num_q_heads=obj["num_q_heads"],
            num_kv_heads=obj["num_kv_heads"],
            head_dim=obj["head_dim"],
            hidden_size=obj["hidden_size"],
            weight_bytes=float(obj["weight_bytes"]),
            gpu_memory_bytes=float(obj["gpu_memory_bytes"]),
            hbm_bytes_per_s=float(obj["hbm_bytes_per_s"]),
            peak_flops=float(obj["peak_flops"]),
            attention_bandwidth_efficiency=float(obj["attention_bandwidth_efficiency"]),
            prefill_attention_mfu=float(obj["prefill_attention_mfu"]),
            per_step_s=float(obj["per_step_s"]),
            per_output_token_s=float(obj["per_output_token_s"]),
            nonattention_tokens=np.array(row.tokens, dtype=np.float64),
            nonattention_ms=ms,
            nonattention_ms_per_token_tail=row.ms_per_token_tail,
            per_sequence_s=float(obj.get("per_sequence_s", 0.0)),
            allreduce_latency_s=float(obj.get("allreduce_latency_s", 0.0)),
            interconnect_bytes_per_s=float(obj.get("interconnect_bytes_per_s", 0.0)),
        )
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


def _read_json(path: Traversable, source: str) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{source}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})"
        ) from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{source}: not UTF-8 text ({e.reason})") from None


def load_profile_file(path: str | os.PathLike[str] | Traversable) -> StepCostModel:
    """Load one profile file (packaged or not) against the packaged Vidur table.

    A malformed file raises ValueError naming the file and the offending field.
    """
    file: Traversable = Path(path) if isinstance(path, str | os.PathLike) else path
    source = str(file)
    return _build(_validate(_read_json(file, source), source), source)


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str
    model: str
    vidur_model: str
    gpu: str
    tp: int
    file: Traversable


@cache
def _index() -> dict[str, _Entry]:
    entries: dict[str, _Entry] = {}
    for file in sorted((_DATA / "profiles").iterdir(), key=lambda f: f.name):
        if not file.name.endswith(".json"):
            continue
        source = f"hermes/data/profiles/{file.name}"
        obj = _validate(_read_json(file, source), source)
        name = obj["name"]
        if name in entries:
            raise _err(source, "name", f"{name!r} is also used by {entries[name].file.name}")
        entries[name] = _Entry(name, obj["model"], obj["vidur_model"], obj["gpu"], obj["tp"], file)
    return entries


@cache
def _load_entry(name: str) -> StepCostModel:
    entry = _index()[name]
    return load_profile_file(entry.file)


def list_profiles() -> list[str]:
    """Names of the packaged profiles, e.g. "llama-2-7b@a100"."""
    return sorted(_index())


def load_profile(
    name_or_model: str, gpu: str | None = None, tp: int | None = None
) -> StepCostModel:
    """A packaged profile by name ("llama-2-7b@a100") or by model with optional gpu and tp.

    The model may be the short name ("llama-3-8b") or the Hugging Face id
    ("meta-llama/Meta-Llama-3-8B"); matching ignores case. Raises ValueError listing the known
    profiles when nothing, or more than one profile, matches.
    """
    index = _index()
    want = name_or_model.strip().lower()
    want_gpu = None if gpu is None else gpu.strip().lower()
    matches = [
        e
        for e in index.values()
        if want in (e.name.lower(), e.model.lower(), e.vidur_model.lower())
        and (want_gpu is None or e.gpu.lower() == want_gpu)
        and (tp is None or e.tp == tp)
    ]
    if len(matches) == 1:
        return _load_entry(matches[0].name)
    asked = repr(name_or_model)
    asked += "" if gpu is None else f", gpu={gpu!r}"
    asked += "" if tp is None else f", tp={tp}"
    if matches:
        names = ", ".join(sorted(e.name for e in matches))
        raise ValueError(f"several profiles match {asked}: {names}; pass gpu= and/or tp=")
    raise ValueError(f"no profile matches {asked}; known profiles: {', '.join(sorted(index))}")
