"""`tools`, `tool_choice` and `response_format` of a chat request, checked, and what the
emulated model writes for them: a tool call, JSON, or text.

Whether it calls a tool follows `tool_choice`: `none` never, `required` or a named function
always, and `auto` (the default when tools are given) unless the last message is a tool's
result, so an agent's loop (ask, call a tool, read its result, answer) ends as a real model's
would. The tool called is the named one, else the first listed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hermes.emulator.errors import bad
from hermes.emulator.output import Mode


def _tools(body: Mapping[str, Any]) -> dict[str, Any]:
    """The request's functions by name, each with its parameters' schema."""
    tools = body.get("tools")
    if tools is None:
        return {}
    if not isinstance(tools, list) or not tools:
        raise bad("`tools` must be a non-empty list of tools", "tools")
    out: dict[str, Any] = {}
    for k, tool in enumerate(tools):
        where = f"tools[{k}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise bad(f'`{where}` must be an object with "type": "function"', "tools")
        fn = tool.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise bad(f"`{where}.function.name` must be a non-empty string", "tools")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise bad(f"`{where}.function.parameters` must be a JSON schema object", "tools")
        out.setdefault(fn["name"], params)
    return out


def _choice(body: Mapping[str, Any], tools: Mapping[str, Any]) -> str | None:
    """The function to call, or None for a text (or JSON) answer."""
    choice = body.get("tool_choice")
    if choice is not None and not tools and choice != "none":
        raise bad("`tool_choice` needs `tools`", "tool_choice")
    if choice is None:
        choice = "auto" if tools else "none"
    if isinstance(choice, dict):
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if choice.get("type") != "function" or not isinstance(name, str):
            raise bad(
                '`tool_choice` must be "none", "auto", "required" or '
                '{"type": "function", "function": {"name": ...}}',
                "tool_choice",
            )
        if name not in tools:
            raise bad(f"`tool_choice` names {name!r}, which is not in `tools`", "tool_choice")
        return name
    if choice not in ("none", "auto", "required"):
        raise bad(
            f'`tool_choice` must be "none", "auto" or "required", got {choice!r}', "tool_choice"
        )
    first = next(iter(tools), None)
    if choice == "required":
        return first
    if choice == "auto":
        messages = body.get("messages") or [{}]
        last = messages[-1] if isinstance(messages[-1], dict) else {}
        return None if last.get("role") == "tool" else first
    return None


def _response_schema(body: Mapping[str, Any]) -> tuple[bool, Any]:
    """Whether the answer is JSON, and its schema (None: any object)."""
    fmt = body.get("response_format")
    if fmt is None:
        return False, None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return False, None
    if kind == "json_object":
        return True, None
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema", {}) if isinstance(spec, dict) else None
        if not isinstance(spec, dict) or not isinstance(schema, dict | bool):
            raise bad(
                "`response_format.json_schema` must be an object with a `schema`",
                "response_format",
            )
        return True, schema
    raise bad(
        '`response_format.type` must be "text", "json_object" or "json_schema"',
        "response_format",
    )


def chat_mode(body: Mapping[str, Any]) -> tuple[Mode, Any, str | None]:
    """What the model writes for a chat request: the mode, its schema, the tool called."""
    tools = _tools(body)
    if body.get("parallel_tool_calls") is not None and not isinstance(
        body["parallel_tool_calls"], bool
    ):
        raise bad("`parallel_tool_calls` must be a boolean", "parallel_tool_calls")
    as_json, schema = _response_schema(body)
    tool = _choice(body, tools)
    if tool is not None:
        return "tool", tools[tool], tool
    if as_json:
        return "json", schema, None
    return "text", None, None
