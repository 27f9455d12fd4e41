"""A made-up JSON value shaped by a JSON schema: the emulator's tool-call arguments and
structured answers. It covers what tool and response schemas use in practice (types, required
properties, enums, consts, arrays with `minItems`, `anyOf`/`oneOf`/`allOf`, local `$ref`s,
string formats, numeric bounds) and is deterministic; a value for a schema that leans on
other keywords (`pattern`, `not`, ...) may not validate against it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Deep enough for any real tool schema; a self-referencing schema stops here.
MAX_DEPTH = 12

_FORMATS = {
    "date-time": "2025-01-01T00:00:00Z",
    "date": "2025-01-01",
    "time": "00:00:00Z",
    "email": "user@example.com",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "127.0.0.1",
}


def synthetic_value(schema: object, root: Mapping[str, Any] | None = None, depth: int = 0) -> Any:
    """A value that `schema` accepts where the schema is simple (see the module's doc)."""
    if not isinstance(schema, Mapping):
        return "text"  # `true` or an empty schema: anything goes
    root = schema if root is None else root
    if depth > MAX_DEPTH:
        return None
    if "$ref" in schema:
        return synthetic_value(_resolve(schema["$ref"], root), root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return synthetic_value(_first_not_null(options), root, depth + 1)
    if isinstance(schema.get("allOf"), list):
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            if isinstance(part, Mapping):
                part = _resolve(part["$ref"], root) if "$ref" in part else part
                merged = _merge(merged, part)
        return synthetic_value(merged, root, depth + 1)
    return _typed(schema, _type_of(schema), root, depth)


def _typed(schema: Mapping[str, Any], kind: str, root: Mapping[str, Any], depth: int) -> Any:
    if kind == "object":
        return _object(schema, root, depth)
    if kind == "array":
        n = schema.get("minItems", 1)
        n = n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else 1
        return [synthetic_value(schema.get("items", {}), root, depth + 1) for _ in range(n)]
    if kind == "integer" or kind == "number":
        low = schema.get("minimum", schema.get("exclusiveMinimum"))
        value: int | float = 0 if low is None else low
        if "exclusiveMinimum" in schema and "minimum" not in schema:
            value += 1
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    text = _FORMATS.get(str(schema.get("format")), "text")
    least = schema.get("minLength", 0)
    if isinstance(least, int) and len(text) < least:
        text = text + "x" * (least - len(text))
    return text


def _object(schema: Mapping[str, Any], root: Mapping[str, Any], depth: int) -> dict[str, Any]:
    props = schema.get("properties")
    props = props if isinstance(props, Mapping) else {}
    required = schema.get("required")
    # Required properties only, as a model fills what it must; all of them if none is marked.
    names = (
        [n for n in required if isinstance(n, str)] if isinstance(required, list) else list(props)
    )
    return {name: synthetic_value(props.get(name, {}), root, depth + 1) for name in names}


def _type_of(schema: Mapping[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"] or ["null"]
        kind = kinds[0]
    if isinstance(kind, str):
        return kind
    if "properties" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return "string"


def _first_not_null(options: list[Any]) -> Any:
    for option in options:
        if not (isinstance(option, Mapping) and option.get("type") == "null"):
            return option
    return options[0]


def _resolve(ref: object, root: Mapping[str, Any]) -> Any:
    """A local reference (`#/$defs/Name`, `#/definitions/Name`); {} for any other."""
    if not isinstance(ref, str) or not ref.startswith("#"):
        return {}
    node: Any = root
    for part in ref.lstrip("#").strip("/").split("/"):
        if not part:
            continue
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, Mapping) or part not in node:
            return {}
        node = node[part]
    return node


def _merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        if key == "properties" and isinstance(out.get(key), Mapping):
            out[key] = {**out[key], **value}
        elif key == "required" and isinstance(out.get(key), list):
            out[key] = [*out[key], *value]
        else:
            out[key] = value
    return out
