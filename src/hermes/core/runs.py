"""Application runs, format v1: typed records and their validation.

A run is one execution of a multi-step application (see docs/app-trace-format.md). This module
turns one decoded JSON object into a typed run, or says which rule it breaks; reading files is
the shell's job (``hermes.workloads.run_files``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from hermes.types import SloClass

StageKind = Literal["llm", "tool"]


class RunFormatError(ValueError):
    """A run breaks a rule of format v1.

    ``location`` says where the run is (``file:line``), ``field`` where in the run
    (``stages[1].calls[0]``), and ``rule`` what is wrong.
    """

    def __init__(self, rule: str, field: str = "", location: str = "") -> None:
        self.rule = rule
        self.field = field
        self.location = location
        super().__init__(": ".join(p for p in (location, field, rule) if p))

    def within(self, parent: str) -> RunFormatError:
        """The same error, one field level further out."""
        field = f"{parent}.{self.field}" if self.field else parent
        return RunFormatError(self.rule, field, self.location)

    def located(self, location: str) -> RunFormatError:
        return RunFormatError(self.rule, self.field, location)


@dataclass(frozen=True, slots=True)
class LLMCall:
    """One LLM call. The optional fields say which leading prompt tokens it shares with other
    calls (docs/app-trace-format.md), for prefix caching; None: not recorded."""

    prompt_tokens: int
    completion_tokens: int
    # Leading prompt tokens that every call of its stage (or of its shared_prefix_id) in every
    # run of its application type sends alike: system prompt, instructions, few-shot examples.
    shared_prefix_tokens: int | None = None
    # The prompt tokens right after that prefix that resend the run's earlier context in order.
    history_tokens: int | None = None
    # Names the shared prefix where one stage has several (e.g. the few-shot of a task kind).
    shared_prefix_id: str | None = None

    @property
    def records_sharing(self) -> bool:
        return self.shared_prefix_tokens is not None or self.history_tokens is not None


@dataclass(frozen=True, slots=True)
class ToolCall:
    duration_s: float


@dataclass(frozen=True, slots=True)
class Stage:
    """One functional unit of a run; its calls were issued in parallel."""

    name: str
    kind: StageKind
    backend: str
    calls: tuple[LLMCall, ...] | tuple[ToolCall, ...]
    model: str | None = None

    @property
    def fanout(self) -> int:
        return len(self.calls)

    def llm_calls(self) -> tuple[LLMCall, ...]:
        return tuple(c for c in self.calls if isinstance(c, LLMCall))

    def tool_calls(self) -> tuple[ToolCall, ...]:
        return tuple(c for c in self.calls if isinstance(c, ToolCall))


@dataclass(frozen=True, slots=True)
class AppRun:
    app: str
    run_id: str
    stages: tuple[Stage, ...]
    arrival_s: float | None = None
    deadline_s: float | None = None
    slo_class: SloClass | None = None

    @property
    def llm_call_count(self) -> int:
        return sum(s.fanout for s in self.stages if s.kind == "llm")

    @property
    def total_tokens(self) -> int:
        return sum(
            c.prompt_tokens + c.completion_tokens for s in self.stages for c in s.llm_calls()
        )


# ---- validation -------------------------------------------------------------------------------


def _require(obj: Mapping[str, Any], key: str) -> Any:
    if key not in obj:
        raise RunFormatError(f"missing required field '{key}'")
    return obj[key]


def _string(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise RunFormatError(f"'{field}' must be a non-empty string, got {value!r}")
    return value


def _count(value: Any, field: str) -> int:
    # bool is an int subclass in Python; a JSON true is not a token count.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RunFormatError(f"'{field}' must be a non-negative integer, got {value!r}")
    return value


def _seconds(value: Any, field: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RunFormatError(f"'{field}' must be a finite number of seconds, got {value!r}")
    if value < 0 or (positive and value == 0):
        bound = "positive" if positive else "non-negative"
        raise RunFormatError(f"'{field}' must be {bound}, got {value!r}")
    return float(value)


def _optional(obj: Mapping[str, Any], key: str) -> Any:
    # JSON null counts as absent for optional fields.
    return obj.get(key)


def _call(obj: Any, kind: StageKind) -> LLMCall | ToolCall:
    if not isinstance(obj, Mapping):
        raise RunFormatError(f"a call must be an object, got {type(obj).__name__}")
    if kind == "llm":
        return _llm_call(obj)
    for key in _SHARING_KEYS:
        if _optional(obj, key) is not None:
            raise RunFormatError(f"'{key}' is only allowed on llm calls")
    return ToolCall(duration_s=_seconds(_require(obj, "duration_s"), "duration_s"))


_SHARING_KEYS = ("shared_prefix_tokens", "history_tokens", "shared_prefix_id")


def _llm_call(obj: Mapping[str, Any]) -> LLMCall:
    prompt = _count(_require(obj, "prompt_tokens"), "prompt_tokens")
    completion = _count(_require(obj, "completion_tokens"), "completion_tokens")
    raw_prefix, raw_history, raw_id = (_optional(obj, key) for key in _SHARING_KEYS)
    prefix = None if raw_prefix is None else _count(raw_prefix, "shared_prefix_tokens")
    history = None if raw_history is None else _count(raw_history, "history_tokens")
    prefix_id = None if raw_id is None else _string(raw_id, "shared_prefix_id")
    if prefix_id is not None and prefix is None:
        raise RunFormatError("'shared_prefix_id' needs 'shared_prefix_tokens'")
    if (prefix or 0) + (history or 0) > prompt:
        raise RunFormatError(
            f"shared_prefix_tokens + history_tokens ({prefix or 0} + {history or 0}) must not"
            f" exceed prompt_tokens ({prompt})"
        )
    return LLMCall(prompt, completion, prefix, history, prefix_id)


def _stage(obj: Any) -> Stage:
    if not isinstance(obj, Mapping):
        raise RunFormatError(f"a stage must be an object, got {type(obj).__name__}")
    name = _string(_require(obj, "name"), "name")
    kind = _require(obj, "kind")
    if kind not in ("llm", "tool"):
        raise RunFormatError(f'\'kind\' must be "llm" or "tool", got {kind!r}')
    backend_raw = _optional(obj, "backend")
    backend = _string(backend_raw, "backend") if backend_raw is not None else None
    model_raw = _optional(obj, "model")
    model = _string(model_raw, "model") if model_raw is not None else None
    if model is not None and kind != "llm":
        raise RunFormatError("'model' is only allowed on llm stages")
    calls_raw = _require(obj, "calls")
    if not isinstance(calls_raw, list) or not calls_raw:
        raise RunFormatError("'calls' must be a non-empty list")
    calls: list[LLMCall | ToolCall] = []
    for i, c in enumerate(calls_raw):
        try:
            calls.append(_call(c, kind))
        except RunFormatError as e:
            raise e.within(f"calls[{i}]") from None
    default_backend = "llm" if kind == "llm" else name
    return Stage(
        name=name,
        kind=kind,
        backend=backend or default_backend,
        calls=tuple(calls),  # type: ignore[arg-type]
        model=model,
    )


def run_from_dict(obj: Any) -> AppRun:
    """Validate one decoded JSON object as a run of format v1 (unknown keys are ignored)."""
    if not isinstance(obj, Mapping):
        raise RunFormatError(f"a run must be a JSON object, got {type(obj).__name__}")
    app = _string(_require(obj, "app"), "app")
    run_id = _string(_require(obj, "run_id"), "run_id")
    stages_raw = _require(obj, "stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise RunFormatError("'stages' must be a non-empty list")
    stages: list[Stage] = []
    for i, s in enumerate(stages_raw):
        try:
            stages.append(_stage(s))
        except RunFormatError as e:
            raise e.within(f"stages[{i}]") from None
    arrival = _optional(obj, "arrival_s")
    deadline = _optional(obj, "deadline_s")
    slo = _optional(obj, "slo_class")
    if slo is not None and slo not in ("rt", "be"):
        raise RunFormatError(f'\'slo_class\' must be "rt" or "be", got {slo!r}')
    return AppRun(
        app=app,
        run_id=run_id,
        stages=tuple(stages),
        arrival_s=_seconds(arrival, "arrival_s") if arrival is not None else None,
        deadline_s=_seconds(deadline, "deadline_s", positive=True)
        if deadline is not None
        else None,
        slo_class=slo,
    )


def run_to_dict(run: AppRun) -> dict[str, Any]:
    """The JSON object of a run; ``run_from_dict(run_to_dict(r)) == r``."""
    stages: list[dict[str, Any]] = []
    for s in run.stages:
        stage: dict[str, Any] = {"name": s.name, "kind": s.kind, "backend": s.backend}
        if s.model is not None:
            stage["model"] = s.model
        stage["calls"] = [
            _llm_call_dict(c) if isinstance(c, LLMCall) else {"duration_s": c.duration_s}
            for c in s.calls
        ]
        stages.append(stage)
    out: dict[str, Any] = {"app": run.app, "run_id": run.run_id, "stages": stages}
    if run.arrival_s is not None:
        out["arrival_s"] = run.arrival_s
    if run.deadline_s is not None:
        out["deadline_s"] = run.deadline_s
    if run.slo_class is not None:
        out["slo_class"] = run.slo_class
    return out


def _llm_call_dict(call: LLMCall) -> dict[str, Any]:
    out: dict[str, Any] = {
        "prompt_tokens": call.prompt_tokens,
        "completion_tokens": call.completion_tokens,
    }
    for key in _SHARING_KEYS:  # written only when recorded: v1 files stay as they were
        value = getattr(call, key)
        if value is not None:
            out[key] = value
    return out
