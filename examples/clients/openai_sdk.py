"""A small tool-using agent on the official `openai` client, each run tagged for the Hermes
gateway as one application and finished when it ends.

    pip install -e . openai              # hermes-sched and the openai client
    hermes serve --emulate --port 8080 &
    python examples/clients/openai_sdk.py --base-url http://127.0.0.1:8080/v1 --runs 3

One client for the whole program; one `HermesApp` per run (its own application id), so the
gateway sees each run's stages (think, search, answer) and learns the agent's demand graph.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import openai

from hermes.client import HermesApp

APP_TYPE = "openai_agent"
SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}, "top_k": {"type": "integer"}},
            "required": ["query"],
        },
    },
}


def search(query: str, top_k: int = 3) -> str:
    """The tool: a stand-in for a real search backend."""
    return json.dumps([f"result {i} for {query!r}" for i in range(max(1, min(top_k, 5)))])


def run_agent(client: openai.OpenAI, model: str, question: str) -> str:
    """One application run: think (may call the tool), search, answer."""
    with HermesApp(client, app_type=APP_TYPE) as app:  # finished when the block ends
        messages: list[Any] = [{"role": "user", "content": question}]
        reply = app.llm("think").chat.completions.create(
            model=model, messages=messages, tools=[SEARCH], max_tokens=64
        )
        calls = reply.choices[0].message.tool_calls or []
        if calls:
            messages.append(reply.choices[0].message.model_dump(exclude_none=True))
            with app.tool("search", backend="search"):  # reported to the gateway
                for call in calls:
                    args = json.loads(call.function.arguments)  # type: ignore[union-attr]
                    result = search(**args)
                    messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
            reply = app.llm("answer").chat.completions.create(
                model=model, messages=messages, tools=[SEARCH], max_tokens=32
            )
        return reply.choices[0].message.content or ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    parser.add_argument("--api-key", default="-", help="The gateway's key, if it has one.")
    parser.add_argument("--model", default="llama-2-7b")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    with openai.OpenAI(base_url=args.base_url, api_key=args.api_key) as client:
        for i in range(args.runs):
            answer = run_agent(client, args.model, f"What happened in year {2000 + i}?")
            print(f"run {i}: {answer[:60]!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
