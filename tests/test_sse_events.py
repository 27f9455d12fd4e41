"""Server-sent events cut whole from a stream however its bytes arrive (every relay's)."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from hermes.gateway.relay import SseEvents

CHUNK = b'data: {"choices": [{"text": "a"}]}\n\n'
USAGE = b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}\n\n'
DONE = b"data: [DONE]\n\n"
STREAM = CHUNK + CHUNK + USAGE + DONE


def _cut(cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(STREAM), *(c % (len(STREAM) + 1) for c in cuts)})
    return [STREAM[a:b] for a, b in itertools.pairwise(points)]


@given(st.lists(st.integers(0, 10_000), max_size=12), st.booleans())
def test_events_come_whole_and_the_usage_only_one_only_when_asked_for(
    cuts: list[int], wants_usage: bool
) -> None:
    body = {"stream_options": {"include_usage": True}} if wants_usage else {}
    events = SseEvents(body)
    out = [e for piece in _cut(cuts) for e in events.feed(piece)]
    assert out == ([CHUNK, CHUNK, USAGE, DONE] if wants_usage else [CHUNK, CHUNK, DONE])
    assert events.usage == {"prompt_tokens": 3, "completion_tokens": 1}
    assert events.rest == b""


def test_what_follows_the_last_whole_event_is_kept_unless_blank() -> None:
    events = SseEvents({})
    assert list(events.feed(CHUNK + b"data: {")) == [CHUNK]
    assert events.rest == b"data: {"
    blank = SseEvents({})
    assert list(blank.feed(CHUNK + b"\n")) == [CHUNK]
    assert blank.rest == b""
    assert blank.usage is None
