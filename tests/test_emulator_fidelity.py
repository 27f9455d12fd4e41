"""The emulator tells the truth, driven by the official `openai` client: stop strings end a
generation with `stop`, tools get well-formed calls, `response_format` valid JSON, `n` choices,
logprobs in vLLM's shape, `/v1/models/{id}`, `echo`; and what it cannot do is refused with a
400 naming the field, streaming or not."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel, Field

from hermes.emulator import EmulatedEngine, emulator_app, filler_token
from hermes.profiles import load_profile
from hermes.testing.asgi_thread import serving

MODEL = load_profile("llama-2-7b", "a100", None)
HI = [{"role": "user", "content": "hi"}]


class Weather(BaseModel):
    city: str
    days: int = Field(ge=1)
    unit: str = Field(json_schema_extra={"enum": ["C", "F"]})
    hourly: bool = False


class Person(BaseModel):
    name: str
    age: int


class Team(BaseModel):
    """Nested, with a `$ref`, as pydantic writes schemas."""

    lead: Person
    members: list[Person] = Field(min_length=2)
    motto: str | None


WEATHER_TOOL_SCHEMA = Weather.model_json_schema()
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The forecast",
        "parameters": Weather.model_json_schema(),
    },
}
TEAM_TOOL = {
    "type": "function",
    "function": {"name": "make_team", "parameters": Team.model_json_schema()},
}


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    engines = {"fast": EmulatedEngine(MODEL, time_scale=0.01)}
    with serving(emulator_app(engines)) as base:
        yield base


@pytest.fixture
def client(url: str) -> Iterator[Any]:
    """The official client; typed Any, as the tests send what its stubs do not list."""
    with openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0) as c:
        yield c


def filler(n: int) -> str:
    return "".join(map(filler_token, range(n)))


def stream_text(chunks: list[Any], choice: int = 0) -> str:
    return "".join(
        c.choices[0].delta.content or ""
        for c in chunks
        if c.choices and c.choices[0].index == choice
    )


# Stop strings ------------------------------------------------------------------------------------


def test_a_stop_string_ends_the_text_with_finish_reason_stop(client: Any) -> None:
    r = client.chat.completions.create(
        model="fast", messages=HI, max_tokens=10, stop=["\nObservation:"]
    )
    choice = r.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.content == filler(5)  # the stop string, at half max_tokens, is cut
    assert r.usage is not None
    assert r.usage.completion_tokens == 6
    assert choice.model_extra is not None
    assert choice.model_extra["stop_reason"] == "\nObservation:"
    chunks = list(
        client.chat.completions.create(
            model="fast", messages=HI, max_tokens=10, stop="\nObservation:", stream=True
        )
    )
    assert stream_text(chunks) == filler(5)
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"


def test_a_stop_string_is_checked_on_the_generated_text(client: Any) -> None:
    r = client.completions.create(model="fast", prompt="x", max_tokens=10, stop=["tok3", "zz"])
    assert r.choices[0].text == filler(3) + " "
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None
    assert r.usage.completion_tokens == 4
    kept = client.completions.create(
        model="fast",
        prompt="x",
        max_tokens=10,
        stop=["tok3"],
        extra_body={"include_stop_str_in_output": True},
    )
    assert kept.choices[0].text == filler(4)


def test_without_a_stop_or_with_too_few_tokens_it_is_length(client: Any) -> None:
    r = client.chat.completions.create(model="fast", messages=HI, max_tokens=3)
    assert (r.choices[0].finish_reason, r.choices[0].message.content) == ("length", filler(3))
    r = client.chat.completions.create(model="fast", messages=HI, max_tokens=1, stop=["\n"])
    assert (r.choices[0].finish_reason, r.choices[0].message.content) == ("length", filler(1))
    r = client.chat.completions.create(
        model="fast", messages=HI, max_tokens=10, stop=["\n"], extra_body={"min_tokens": 8}
    )
    assert (r.choices[0].finish_reason, r.choices[0].message.content) == ("stop", filler(8))


# Tools and JSON ----------------------------------------------------------------------------------


def test_tools_get_a_well_formed_call_whose_arguments_fit_the_schema(
    client: Any,
) -> None:
    r = client.chat.completions.create(
        model="fast",
        messages=HI,
        tools=[WEATHER_TOOL, TEAM_TOOL],
        max_tokens=200,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function"
    assert call.id
    assert call.function.name == "get_weather"
    weather = Weather.model_validate_json(call.function.arguments)
    assert weather.unit == "C"
    assert weather.days >= 1
    named = client.chat.completions.create(
        model="fast",
        messages=HI,
        tools=[WEATHER_TOOL, TEAM_TOOL],
        tool_choice={"type": "function", "function": {"name": "make_team"}},
        max_tokens=200,
    )
    [call] = named.choices[0].message.tool_calls or []
    team = Team.model_validate_json(call.function.arguments)
    assert len(team.members) >= 2


def test_a_streamed_tool_call_spells_the_same_call(client: Any) -> None:
    chunks = list(
        client.chat.completions.create(
            model="fast",
            messages=HI,
            tools=[WEATHER_TOOL],
            tool_choice="required",
            stream=True,
            max_tokens=200,
        )
    )
    deltas = [c.choices[0].delta.tool_calls for c in chunks if c.choices]
    first = deltas[0][0]
    assert first.id
    assert first.function is not None
    assert first.function.name == "get_weather"
    args = "".join(d[0].function.arguments or "" for d in deltas if d and d[0].function)
    Weather.model_validate_json(args)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_an_agent_loop_ends_after_the_tool_result(client: Any) -> None:
    messages: list[Any] = [{"role": "user", "content": "weather in Paris?"}]
    r = client.chat.completions.create(
        model="fast",
        messages=messages,
        tools=[WEATHER_TOOL],
        max_tokens=100,
    )
    call = (r.choices[0].message.tool_calls or [])[0]
    messages += [
        r.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    answer = client.chat.completions.create(
        model="fast",
        messages=messages,
        tools=[WEATHER_TOOL],
        max_tokens=4,
    )
    assert answer.choices[0].message.tool_calls in (None, [])
    assert answer.choices[0].message.content == filler(4)
    none = client.chat.completions.create(
        model="fast",
        messages=HI,
        tools=[WEATHER_TOOL],
        tool_choice="none",
        max_tokens=2,
    )
    assert none.choices[0].message.content == filler(2)


def test_response_format_gives_valid_json(client: Any) -> None:
    r = client.chat.completions.create(
        model="fast", messages=HI, response_format={"type": "json_object"}, max_tokens=50
    )
    assert isinstance(json.loads(r.choices[0].message.content or ""), dict)
    assert r.choices[0].finish_reason == "stop"
    parsed = client.chat.completions.parse(
        model="fast", messages=HI, response_format=Team, max_tokens=300
    )
    team = parsed.choices[0].message.parsed
    assert isinstance(team, Team)
    assert team.lead.name
    cut = client.chat.completions.create(
        model="fast", messages=HI, response_format={"type": "json_object"}, max_tokens=2
    )
    assert cut.choices[0].finish_reason == "length"  # a JSON cut short is not passed off as whole
    fmt = {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER_TOOL_SCHEMA}}
    chunks = list(
        client.chat.completions.create(
            model="fast", messages=HI, response_format=fmt, max_tokens=100, stream=True
        )
    )
    Weather.model_validate_json(stream_text(chunks))
    assert chunks[-1].choices[0].finish_reason == "stop"


# n, logprobs, models, echo -----------------------------------------------------------------------


def test_n_choices_whole_and_streamed(client: Any) -> None:
    r = client.chat.completions.create(model="fast", messages=HI, max_tokens=4, n=3)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert all(c.message.content == filler(4) for c in r.choices)
    assert r.usage is not None
    assert r.usage.completion_tokens == 12
    chunks = list(
        client.completions.create(
            model="fast",
            prompt="x",
            max_tokens=3,
            n=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    for k in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == k]
        assert "".join(c.text for c in mine) == filler(3)
        assert mine[-1].finish_reason == "length"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6


def test_logprobs_in_vllms_shape(client: Any) -> None:
    r = client.chat.completions.create(
        model="fast", messages=HI, max_tokens=3, logprobs=True, top_logprobs=2
    )
    content = r.choices[0].logprobs.content
    assert content is not None
    assert [e.token for e in content] == list(map(filler_token, range(3)))
    for entry in content:
        assert entry.logprob <= 0
        assert entry.bytes == list(entry.token.encode())
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 2
        assert tops == sorted(tops, reverse=True)
        assert entry.top_logprobs[0].token == entry.token
    c = client.completions.create(model="fast", prompt="abc", max_tokens=3, logprobs=2)
    lp = c.choices[0].logprobs
    assert lp is not None
    assert lp.tokens == list(map(filler_token, range(3)))
    assert lp.text_offset == [0, 5, 10]
    assert lp.top_logprobs is not None
    assert all(len(t) == 3 for t in lp.top_logprobs)  # the sampled token and 2 more
    chunks = list(
        client.chat.completions.create(
            model="fast", messages=HI, max_tokens=2, logprobs=True, stream=True
        )
    )
    assert [c.choices[0].logprobs.content[0].token for c in chunks] == [" tok0", " tok1"]


def test_a_model_by_id_and_an_unknown_one(client: Any) -> None:
    assert client.models.retrieve("fast").id == "fast"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("nope")
    assert "`nope` does not exist" in str(e.value)


def test_echo_writes_the_prompt_first(client: Any) -> None:
    r = client.completions.create(model="fast", prompt="Once", max_tokens=2, echo=True)
    assert r.choices[0].text == "Once" + filler(2)
    chunks = list(
        client.completions.create(model="fast", prompt="Once", max_tokens=2, echo=True, stream=True)
    )
    assert "".join(c.choices[0].text for c in chunks) == "Once" + filler(2)


# Refusals ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "extra", "field"),
    [
        ("/v1/chat/completions", {"functions": [{"name": "f"}]}, "functions"),
        ("/v1/chat/completions", {"logit_bias": {"5": 10}}, "logit_bias"),
        ("/v1/chat/completions", {"audio": {"voice": "x"}}, "audio"),
        ("/v1/chat/completions", {"tool_choice": "auto"}, "tool_choice"),
        ("/v1/chat/completions", {"tools": [{"type": "web"}]}, "tools"),
        ("/v1/chat/completions", {"response_format": {"type": "xml"}}, "response_format"),
        ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs"),
        ("/v1/chat/completions", {"stop": [""]}, "stop"),
        ("/v1/chat/completions", {"temperature": "hot"}, "temperature"),
        ("/v1/chat/completions", {"echo": True}, "echo"),
        ("/v1/completions", {"best_of": 3}, "best_of"),
        ("/v1/completions", {"suffix": "end"}, "suffix"),
        ("/v1/completions", {"logprobs": 21}, "logprobs"),
        ("/v1/completions", {"prompt": [1, 2], "echo": True}, "echo"),
        ("/v1/completions", {"max_completion_tokens": 3}, "max_completion_tokens"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_what_it_cannot_do_is_refused_naming_the_field(
    url: str, path: str, extra: dict[str, Any], field: str, stream: bool
) -> None:
    body: dict[str, Any] = {"model": "fast", "stream": stream}
    body |= {"messages": HI} if "chat" in path else {"prompt": "x"}
    r = httpx.post(url + path, json=body | extra, timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == field
    assert field in error["message"]


def test_sampling_fields_are_accepted(client: Any) -> None:
    r = client.chat.completions.create(
        model="fast",
        messages=HI,
        max_tokens=2,
        temperature=0.7,
        top_p=0.9,
        seed=3,
        presence_penalty=0.1,
        frequency_penalty=0.1,
        user="u",
        logit_bias={},
        extra_body={"parallel_tool_calls": None, "top_k": 5, "ignore_eos": True},
    )
    assert r.choices[0].message.content == filler(2)
