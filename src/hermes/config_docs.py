"""The configuration reference (docs/config.md), generated from the pydantic models.

`python -m hermes.config_docs > docs/config.md` regenerates it; a test fails when the file and
the models disagree. Each model is one section: its docstring, then a table of its fields
(name, type, default, constraints, description). A field's description is its
`Field(description=...)`; fields without one are listed all the same.
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from collections.abc import Iterator
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from hermes.gateway.config import GatewayConfig
from hermes.sim.config import SimConfig

__all__ = ["REGENERATE", "config_reference", "model_section", "models_under"]

REGENERATE = "python -m hermes.config_docs > docs/config.md"

_INTRO = f"""# Configuration reference

Every field of the simulator's and the gateway's YAML configurations. Unknown fields are
errors, and every error names the field's path. Nested objects are sections of their own.

Generated from the pydantic models in `src/hermes/sim/config.py`,
`src/hermes/gateway/config.py` and `src/hermes/config_base.py`; do not edit by hand:
`{REGENERATE}`.
"""

_PARTS: tuple[tuple[str, str, type[BaseModel], str], ...] = (
    (
        "sim",
        "Simulator",
        SimConfig,
        "`hermes sim --config FILE`. Paths inside the file (traces, runs, profiles,\n"
        "PDGraphs) are taken relative to the file.",
    ),
    ("gateway", "Gateway", GatewayConfig, "`hermes serve --config FILE`."),
)

_SCALARS: dict[type[Any], str] = {str: "string", int: "integer", float: "number", bool: "boolean"}
_BOUNDS: tuple[tuple[type[Any], str, str], ...] = (
    (annotated_types.Ge, "ge", ">="),
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Le, "le", "<="),
    (annotated_types.Lt, "lt", "<"),
)


def config_reference() -> str:
    """The whole reference, as markdown."""
    out = [_INTRO]
    for prefix, title, root, usage in _PARTS:
        out.append(f"## {title}\n\n{usage}\n")
        for model, paths in models_under(root):
            out.append(model_section(model, paths, prefix))
    return "\n".join(out)


def models_under(root: type[BaseModel]) -> list[tuple[type[BaseModel], list[str]]]:
    """`root` and every model nested in it, each once (breadth first, in field order), with
    every YAML path where it appears (`[]`: an item of a list; `<key>`: a mapping's key)."""
    paths: dict[type[BaseModel], list[str]] = {root: [""]}
    queue = [root]
    while queue:
        model = queue.pop(0)
        for path in paths[model]:
            for name, field in model.model_fields.items():
                for sub, suffix in _nested(field.annotation):
                    where = f"{path}.{name}{suffix}" if path else f"{name}{suffix}"
                    if sub not in paths:
                        paths[sub] = []
                        queue.append(sub)
                    if where not in paths[sub]:
                        paths[sub].append(where)
    return list(paths.items())


def _nested(annotation: Any, suffix: str = "") -> Iterator[tuple[type[BaseModel], str]]:
    """The models inside a field's type, each with the path suffix that reaches it
    (`[]` for a list item, `.<key>` for a mapping's value)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation, suffix
        return
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (list, tuple, set, frozenset):
        for arg in args:
            yield from _nested(arg, suffix + "[]")
    elif origin is dict and len(args) == 2:
        yield from _nested(args[1], suffix + ".<key>")
    else:
        for arg in args:
            yield from _nested(arg, suffix)


def model_section(model: type[BaseModel], paths: list[str], prefix: str) -> str:
    """One model's section: heading, where it sits (`""`: the top level), its docstring, its
    fields."""
    lines = [f'<a id="{_anchor(prefix, model)}"></a>', f"### `{model.__name__}`", ""]
    where = ", ".join(f"`{p}`" for p in paths)
    lines.append("The top level of the file." if paths == [""] else f"At: {where}")
    doc = _docstring(model)
    if doc:
        lines += ["", doc]
    lines += [
        "",
        "| Field | Type | Default | Constraints | Description |",
        "|---|---|---|---|---|",
    ]
    for name, field in model.model_fields.items():
        cells = (
            f"`{name}`",
            _type_name(field.annotation, prefix),
            _default(field),
            _constraints(field),
            _cell(field.description or ""),
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _anchor(prefix: str, model: type[BaseModel]) -> str:
    return f"{prefix}-{model.__name__.lower()}"


def _docstring(model: type[BaseModel]) -> str:
    doc = model.__dict__.get("__doc__")  # its own, never a base's
    return inspect.cleandoc(doc) if doc else ""


def _type_name(annotation: Any, prefix: str) -> str:
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{_anchor(prefix, annotation)})"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{json.dumps(a)}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a, prefix) for a in args)
    if origin in (list, tuple, set, frozenset):
        return "list of " + " \\| ".join(_type_name(a, prefix) for a in args if a is not ...)
    if origin is dict and len(args) == 2:
        return f"map of {_type_name(args[0], prefix)} to {_type_name(args[1], prefix)}"
    if annotation is Any:
        return "any"
    if isinstance(annotation, type):
        return _SCALARS.get(annotation, annotation.__name__)
    return _cell(str(annotation))


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    return _cell(f"`{json.dumps(_plain(value))}`")


def _plain(value: Any) -> Any:
    """A default as the YAML would give it; a nested model as the fields it sets."""
    if isinstance(value, BaseModel):
        return {k: _plain(v) for k, v in value.model_dump(exclude_defaults=True).items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _constraints(field: FieldInfo) -> str:
    out: list[str] = []
    for item in field.metadata:
        for kind, attr, symbol in _BOUNDS:
            if isinstance(item, kind):
                out.append(f"{symbol} {getattr(item, attr)}")
        if isinstance(item, annotated_types.MinLen):
            out.append(f"at least {item.min_length} long")
        if isinstance(item, annotated_types.MaxLen):
            out.append(f"at most {item.max_length} long")
        if getattr(item, "allow_inf_nan", None) is False:
            out.append("finite")
    return ", ".join(out)


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def main() -> None:
    print(config_reference(), end="")


if __name__ == "__main__":
    main()
