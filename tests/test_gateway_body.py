"""The body the gateway sends upstream: the client's bytes with the gateway's fields appended,
re-encoded only when it must be."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hermes.gateway.config import Backend
from hermes.gateway.upstream import UpstreamClient, with_fields

PRIORITY = {"priority": 7}


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "m", "messages": []}',
        b'{"model":"m"}\n',
        b'  { "model" : "m" ,"x": {"y": "}"} }  ',
        b'{"model": "m", "prompt": "caf\xc3\xa9 \\"}\\""}',
        b"{}",
    ],
)
def test_new_fields_are_appended_to_the_bytes(raw: bytes) -> None:
    body = json.loads(raw)
    out = with_fields(raw, body, PRIORITY)
    assert out.startswith(raw.rstrip()[:-1].rstrip())  # the client's bytes, not re-encoded
    assert json.loads(out) == {**body, **PRIORITY}


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "m", "priority": 1}',  # there already: replaced, not duplicated
        '{"model": "m"}'.encode("utf-16"),  # not UTF-8
        b'\xef\xbb\xbf{"model": "m"}',  # a byte-order mark
        b"",  # no bytes kept (built in code)
    ],
)
def test_otherwise_the_body_is_re_encoded(raw: bytes) -> None:
    body: dict[str, Any] = json.loads(raw) if raw else {"model": "m"}
    out = with_fields(raw, body, PRIORITY)
    assert json.loads(out) == {**body, **PRIORITY}
    assert out.count(b'"priority"') == 1


def test_no_fields_sends_the_bytes_or_encodes_the_body() -> None:
    raw = b'{"model": "m"} '
    assert with_fields(raw, json.loads(raw), {}) is raw
    assert json.loads(with_fields(b"", {"model": "m"}, {})) == {"model": "m"}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@given(
    st.dictionaries(st.text(), json_values, max_size=4),
    st.dictionaries(st.text(), json_values, min_size=1, max_size=2),
    st.booleans(),
)
def test_the_result_is_the_body_with_the_fields(
    body: dict[str, Any], fields: dict[str, Any], ascii_only: bool
) -> None:
    raw = json.dumps(body, ensure_ascii=ascii_only).encode()
    assert json.loads(with_fields(raw, body, fields)) == {**body, **fields}


def test_prepare_adds_the_engine_priority_where_the_engine_has_one() -> None:
    raw = b'{"model": "m", "stream": true}'
    body = json.loads(raw)
    for kind, want in (("vllm", 1500), ("sglang", -1500), ("llamacpp", None)):
        backend = Backend(name="b", kind=kind, url="http://x", models=["m"])
        client = UpstreamClient(backend, 1.0, 1.0)
        sent = json.loads(client.prepare(raw, body, 1.5, {"stream_options": {"a": 1}}))
        assert sent.get("priority") == want
        assert sent["stream_options"] == {"a": 1}
        assert sent["model"] == "m"
