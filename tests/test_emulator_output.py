"""What the emulated model writes, as properties: where stop strings and `max_tokens` cut it,
and that the JSON it makes up for a schema validates against that schema."""

from __future__ import annotations

import json
from typing import Any, Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, Field, create_model

from hermes.emulator.output import OutputSpec, plan_output
from hermes.emulator.synthetic_json import synthetic_value
from hermes.emulator.tokens import filler_token

stops = st.lists(st.text(alphabet=" tok0123\nab", min_size=1, max_size=5), max_size=3)


@given(
    max_tokens=st.integers(1, 40),
    stop=stops,
    min_frac=st.floats(0, 1),
    include=st.booleans(),
)
def test_text_is_cut_at_the_first_stop_or_at_max_tokens(
    max_tokens: int, stop: list[str], min_frac: float, include: bool
) -> None:
    min_tokens = int(min_frac * max_tokens)
    spec = OutputSpec(max_tokens, stop=tuple(stop), min_tokens=min_tokens, include_stop=include)
    plan = plan_output(spec)
    n = len(plan.pieces)
    assert 1 <= n <= max_tokens
    # What the model wrote, uncut: filler, then (with stops) the first stop string.
    said = max(min_tokens, -(-max_tokens // 2))
    natural = [filler_token(i) for i in range(said if stop else max_tokens)]
    natural += [stop[0]] if stop else []
    written = "".join(natural[:n])
    if plan.finish_reason == "length":
        assert n == max_tokens
        assert plan.text == written
        assert plan.stop_reason is None
        return
    assert plan.finish_reason == "stop"
    assert plan.stop_reason in stop
    s = plan.stop_reason
    assert n >= min_tokens
    body = plan.text[: -len(s)] if include else plan.text
    assert written.startswith(body + s)  # the text runs to the stop string, which is cut
    if include:
        assert plan.text.endswith(s)
    if min_tokens == 0:  # nothing held a stop back: none starts before the cut
        assert all(written.find(x) in (-1, *range(len(body), len(written))) for x in stop)


def test_without_stops_text_runs_to_max_tokens() -> None:
    plan = plan_output(OutputSpec(5))
    assert plan.pieces == tuple(map(filler_token, range(5)))
    assert (plan.finish_reason, plan.stop_reason) == ("length", None)
    with pytest.raises(ValueError, match="max_tokens must be >= 1"):
        plan_output(OutputSpec(0))


@given(max_tokens=st.integers(1, 40))
def test_a_tool_call_ends_by_itself_or_is_cut_at_max_tokens(max_tokens: int) -> None:
    schema = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
    plan = plan_output(OutputSpec(max_tokens, "tool", stop=("q",), schema=schema, tool="search"))
    assert plan.tool == "search"
    if plan.finish_reason == "tool_calls":  # stop strings do not cut a tool call
        assert json.loads(plan.text) == {"q": "text"}
    else:
        assert plan.finish_reason == "length"
        assert len(plan.pieces) == max_tokens


class Leaf(BaseModel):
    tag: Literal["x", "y"]
    score: float = Field(ge=2.5)


FIELD_TYPES: list[Any] = [
    str,
    int,
    float,
    bool,
    list[int],
    Literal["a", "b"],
    str | None,
    Leaf,
    list[Leaf],
    dict[str, int],
]


@given(
    fields=st.dictionaries(
        st.from_regex(r"[a-z]{1,8}", fullmatch=True), st.sampled_from(FIELD_TYPES), max_size=6
    ),
    nested=st.booleans(),
)
def test_json_for_a_pydantic_schema_validates(fields: dict[str, Any], nested: bool) -> None:
    make: Any = create_model  # field types chosen at run time: beyond its stubs
    model = make("Made", **{k: (t, ...) for k, t in fields.items()})
    if nested:
        model = make("Outer", inner=(model, ...), items=(list.__class_getitem__(model), ...))
    value = synthetic_value(model.model_json_schema())
    model.model_validate(value)
    model.model_validate_json(json.dumps(value))


def test_json_for_schemas_by_hand() -> None:
    assert synthetic_value({"type": "array", "items": {"type": "integer", "minimum": 3}}) == [3]
    assert synthetic_value({"type": ["null", "boolean"]}) is False
    assert synthetic_value({"const": 7}) == 7
    assert synthetic_value({"type": "string", "format": "date", "minLength": 12}) == "2025-01-01xx"
    assert synthetic_value({"allOf": [{"properties": {"a": {"type": "integer"}}}]}) == {"a": 0}
    loop: dict[str, Any] = {"$ref": "#"}  # refers to itself: stops, does not recurse forever
    assert synthetic_value(loop) is None
    assert synthetic_value({"$ref": "#/$defs/missing"}) == "text"
