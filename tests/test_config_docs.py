"""docs/config.md is generated from the config models and cannot drift from them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from hermes.config_base import StrictModel
from hermes.config_docs import REGENERATE, config_reference, model_section, models_under
from hermes.gateway.config import GatewayConfig
from hermes.sim.config import SimConfig

DOC = Path(__file__).resolve().parent.parent / "docs" / "config.md"


def test_docs_config_md_is_what_the_generator_writes() -> None:
    expected = config_reference()
    actual = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
    assert actual == expected, f"docs/config.md is out of date with the config models: {REGENERATE}"


def test_every_field_of_every_nested_model_is_listed() -> None:
    text = config_reference()
    for root in (SimConfig, GatewayConfig):
        for model, _ in models_under(root):
            section = text.split(f"### `{model.__name__}`", 1)[1].split("\n### ", 1)[0]
            for name in model.model_fields:
                assert f"| `{name}` |" in section, f"{model.__name__}.{name} is not listed"


class _Inner(StrictModel):
    """An inner model.

    - a list item
      continued
    """

    level: Literal[1, 2] = 1


class _Outer(BaseModel):
    name: str = Field(min_length=1, description="what it is | with a pipe")
    rate: float = Field(default=2.5, gt=0, le=10, allow_inf_nan=False)
    inner: _Inner = _Inner(level=2)
    items: list[_Inner] = Field(default_factory=list)
    by_key: dict[str, _Inner] | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


def test_models_are_found_once_with_every_path() -> None:
    assert models_under(_Outer) == [
        (_Outer, [""]),
        (_Inner, ["inner", "items[]", "by_key.<key>"]),
    ]


def test_a_section_shows_types_defaults_constraints_and_descriptions() -> None:
    text = model_section(_Outer, [""], "t")
    assert text.startswith('<a id="t-_outer"></a>\n### `_Outer`\n\nThe top level of the file.')
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines() if line.startswith("| `")}
    assert rows["`name`"] == (
        "| `name` | string | required | at least 1 long | what it is \\| with a pipe |"
    )
    assert rows["`rate`"] == "| `rate` | number | `2.5` | > 0, <= 10, finite |  |"
    assert rows["`inner`"] == '| `inner` | [_Inner](#t-_inner) | `{"level": 2}` |  |  |'
    assert rows["`items`"] == "| `items` | list of [_Inner](#t-_inner) | `[]` |  |  |"
    assert rows["`by_key`"] == (
        "| `by_key` | map of string to [_Inner](#t-_inner) \\| null | `null` |  |  |"
    )
    assert rows["`extra`"] == "| `extra` | map of string to any | `{}` |  |  |"


def test_a_docstring_keeps_its_indentation_and_a_base_docstring_is_not_inherited() -> None:
    inner = model_section(_Inner, ["inner"], "t")
    assert "At: `inner`\n\nAn inner model.\n\n- a list item\n  continued\n" in inner
    assert "| `level` | `1` \\| `2` | `1` |  |  |" in inner
    assert "Frozen" not in model_section(_Outer, [""], "t")  # StrictModel's docstring
