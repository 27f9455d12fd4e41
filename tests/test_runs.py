"""Application runs, format v1: reading, writing, and the errors a bad line gets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hermes import AppRun, LLMCall, RunFormatError, Stage, ToolCall, read_runs, write_runs
from hermes.core.runs import run_from_dict, run_to_dict

EXAMPLE: dict[str, Any] = {
    "app": "factool_kbqa",
    "run_id": "factool_kbqa-17",
    "stages": [
        {"name": "extract_claims", "kind": "llm",
         "calls": [{"prompt_tokens": 723, "completion_tokens": 100}]},
        {"name": "generate_queries", "kind": "llm",
         "calls": [{"prompt_tokens": 365, "completion_tokens": 15},
                   {"prompt_tokens": 366, "completion_tokens": 18}]},
        {"name": "search", "kind": "tool", "backend": "search", "calls": [{"duration_s": 1.35}]},
        {"name": "verifies", "kind": "llm",
         "calls": [{"prompt_tokens": 512, "completion_tokens": 64}]},
    ],
}  # fmt: skip


def write_lines(tmp_path: Path, *objs: Any) -> Path:
    path = tmp_path / "runs.jsonl"
    path.write_text("\n".join(o if isinstance(o, str) else json.dumps(o) for o in objs) + "\n")
    return path


def test_reads_the_documented_example(tmp_path: Path) -> None:
    (run,) = read_runs(write_lines(tmp_path, EXAMPLE))
    assert run.app == "factool_kbqa"
    assert [s.name for s in run.stages] == [
        "extract_claims", "generate_queries", "search", "verifies",
    ]  # fmt: skip
    assert run.stages[1].calls == (LLMCall(365, 15), LLMCall(366, 18))
    assert run.stages[2].calls == (ToolCall(1.35),)
    assert run.llm_call_count == 4
    assert run.total_tokens == 723 + 100 + 365 + 15 + 366 + 18 + 512 + 64


def test_backend_defaults() -> None:
    run = run_from_dict(EXAMPLE)
    assert run.stages[0].backend == "llm"
    obj = json.loads(json.dumps(EXAMPLE))
    del obj["stages"][2]["backend"]
    assert run_from_dict(obj).stages[2].backend == "search"  # a tool stage defaults to its name


def test_optional_fields_and_unknown_keys() -> None:
    obj = dict(EXAMPLE, arrival_s=3.5, deadline_s=20, slo_class="rt", notes={"any": "thing"})
    obj["stages"] = [dict(EXAMPLE["stages"][0], model="llama-2-7b", extra=1)]
    run = run_from_dict(obj)
    assert (run.arrival_s, run.deadline_s, run.slo_class) == (3.5, 20.0, "rt")
    assert run.stages[0].model == "llama-2-7b"
    nulls = dict(EXAMPLE, arrival_s=None, deadline_s=None, slo_class=None)
    assert run_from_dict(nulls).arrival_s is None


def test_write_then_read_is_identity(tmp_path: Path) -> None:
    runs = [
        run_from_dict(EXAMPLE),
        AppRun(
            "agent", "a-1",
            (Stage("think", "llm", "llm", (LLMCall(10**9, 0),), model="m"),
             Stage("act", "tool", "env", (ToolCall(0.0), ToolCall(1e-7)))),
            arrival_s=0.0, deadline_s=1e6, slo_class="be",
        ),
    ]  # fmt: skip
    path = tmp_path / "out.jsonl"
    assert write_runs(path, runs) == 2
    assert read_runs(path) == runs
    assert [run_from_dict(run_to_dict(r)) for r in runs] == runs


def test_blank_lines_are_not_runs(tmp_path: Path) -> None:
    path = write_lines(tmp_path, EXAMPLE, "", "   ", dict(EXAMPLE, run_id="two"))
    assert [r.run_id for r in read_runs(path)] == ["factool_kbqa-17", "two"]


def _break(path: str, value: Any) -> dict[str, Any]:
    """EXAMPLE with the field at a dotted path replaced (or deleted when value is ...)."""
    obj: dict[str, Any] = json.loads(json.dumps(EXAMPLE))
    *parents, last = path.split(".")
    target: Any = obj
    for p in parents:
        target = target[int(p)] if p.isdigit() else target[p]
    if value is ...:
        del target[int(last) if last.isdigit() else last]
    else:
        target[int(last) if last.isdigit() else last] = value
    return obj


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("app", ..., "missing required field 'app'"),
        ("app", "", "'app' must be a non-empty string"),
        ("run_id", 17, "'run_id' must be a non-empty string"),
        ("stages", [], "'stages' must be a non-empty list"),
        ("stages", {}, "'stages' must be a non-empty list"),
        ("stages.1", "x", "stages[1]: a stage must be an object"),
        ("stages.1.name", ..., "stages[1]: missing required field 'name'"),
        ("stages.1.kind", "gpu", 'stages[1]: \'kind\' must be "llm" or "tool"'),
        ("stages.1.calls", [], "stages[1]: 'calls' must be a non-empty list"),
        ("stages.1.calls.1", 5, "stages[1].calls[1]: a call must be an object"),
        ("stages.1.calls.1.prompt_tokens", -1, "stages[1].calls[1]: 'prompt_tokens' must be"),
        ("stages.1.calls.1.prompt_tokens", 3.5, "'prompt_tokens' must be a non-negative integer"),
        ("stages.1.calls.1.completion_tokens", True, "'completion_tokens' must be a non-negative"),
        ("stages.1.calls.1.completion_tokens", ..., "missing required field 'completion_tokens'"),
        ("stages.2.calls.0.duration_s", -0.5, "'duration_s' must be non-negative"),
        ("stages.2.calls.0.duration_s", "1s", "'duration_s' must be a finite number"),
        ("stages.2.backend", 3, "'backend' must be a non-empty string"),
        ("stages.2.model", "m", "'model' is only allowed on llm stages"),
        ("arrival_s", -1, "'arrival_s' must be non-negative"),
        ("deadline_s", 0, "'deadline_s' must be positive"),
        ("slo_class", "gold", '\'slo_class\' must be "rt" or "be"'),
        # The optional sharing fields of an llm call (docs/app-trace-format.md).
        ("stages.1.calls.1.shared_prefix_tokens", -3, "stages[1].calls[1]: 'shared_prefix_tok"),
        ("stages.1.calls.1.history_tokens", 2.5, "'history_tokens' must be a non-negative int"),
        ("stages.1.calls.1.history_tokens", False, "'history_tokens' must be a non-negative"),
        ("stages.1.calls.1.shared_prefix_id", "", "'shared_prefix_id' must be a non-empty"),
        ("stages.1.calls.1.shared_prefix_id", "x", "'shared_prefix_id' needs 'shared_prefix_tok"),
        ("stages.1.calls.1.history_tokens", 367, "shared_prefix_tokens + history_tokens (0 + 367)"),
        ("stages.2.calls.0.history_tokens", 1, "'history_tokens' is only allowed on llm calls"),
    ],
)
def test_a_bad_line_names_file_line_and_rule(
    tmp_path: Path, path: str, value: Any, message: str
) -> None:
    runs_file = write_lines(tmp_path, dict(EXAMPLE, run_id="ok"), _break(path, value))
    with pytest.raises(RunFormatError) as info:
        read_runs(runs_file)
    text = str(info.value)
    assert text.startswith(f"{runs_file}:2: "), text
    assert message in text


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "a run must be a JSON object, got list"),
        ('{"app": "a", "run_id": "r", "stages": [], "x": NaN}', "'stages' must be a non-empty"),
    ],
)
def test_undecodable_lines(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(RunFormatError, match=message):
        read_runs(write_lines(tmp_path, line))


def test_non_finite_seconds_are_rejected(tmp_path: Path) -> None:
    line = json.dumps(_break("stages.2.calls.0.duration_s", 1.0)).replace("1.0", "Infinity")
    with pytest.raises(RunFormatError, match="finite number"):
        read_runs(write_lines(tmp_path, line))


def test_duplicate_run_id_names_both_lines(tmp_path: Path) -> None:
    path = write_lines(tmp_path, EXAMPLE, dict(EXAMPLE, run_id="b"), EXAMPLE)
    repeated = r":3: run_id 'factool_kbqa-17' repeats the one on line 1"
    with pytest.raises(RunFormatError, match=repeated):
        read_runs(path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bin.jsonl"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(RunFormatError, match="not UTF-8"):
        read_runs(path)


# ---- what a call shares (optional fields) -------------------------------------------------------


def _calls(obj: dict[str, Any]) -> list[Any]:
    return [stage["calls"] for stage in obj["stages"]]


def _sharing_example() -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(json.dumps(EXAMPLE))
    obj["stages"][0]["calls"][0].update(shared_prefix_tokens=520, history_tokens=0)
    obj["stages"][3]["calls"][0].update(
        shared_prefix_tokens=167, history_tokens=300, shared_prefix_id="verify-v2"
    )
    return obj


def test_sharing_fields_are_read_and_written_back(tmp_path: Path) -> None:
    run = run_from_dict(_sharing_example())
    assert run.stages[0].calls[0] == LLMCall(723, 100, 520, 0)
    assert run.stages[3].calls[0] == LLMCall(512, 64, 167, 300, "verify-v2")
    assert run.stages[1].calls[0] == LLMCall(365, 15)  # absent: not recorded
    assert not run.stages[1].llm_calls()[0].records_sharing
    assert _calls(run_to_dict(run)) == _calls(_sharing_example())
    path = tmp_path / "runs.jsonl"
    write_runs(path, [run])
    assert read_runs(path) == [run]


def test_a_v1_file_without_them_reads_and_writes_as_before(tmp_path: Path) -> None:
    run = run_from_dict(EXAMPLE)
    assert all(not c.records_sharing for s in run.stages for c in s.llm_calls())
    assert _calls(run_to_dict(run)) == _calls(EXAMPLE)  # no new keys in files that had none
    nulls = _break("stages.0.calls.0.history_tokens", None)
    assert run_from_dict(nulls) == run  # null is absent, as for the other optional fields


def test_prefix_and_history_may_fill_the_prompt() -> None:
    obj = _break("stages.1.calls.0.shared_prefix_tokens", 300)
    obj["stages"][1]["calls"][0]["history_tokens"] = 65
    assert run_from_dict(obj).stages[1].calls[0] == LLMCall(365, 15, 300, 65)
