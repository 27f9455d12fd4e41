"""A map-reduce summariser on LangChain's `ChatOpenAI`, each run tagged for the Hermes gateway
as one application and finished when it ends.

    pip install -e . langchain-openai    # hermes-sched and LangChain's OpenAI chat model
    hermes serve --emulate --port 8080 &
    python examples/clients/langchain_app.py --base-url http://127.0.0.1:8080/v1 --runs 3

`ChatOpenAI` builds its own client, so the run's headers go with each call
(`extra_headers=app.headers(stage)`), not into the model object: one model object serves every
run, and each run is its own application. A stage's fan-out (`batch`) shares one `headers`.
"""

from __future__ import annotations

import argparse

from langchain_core.messages import HumanMessage
from langchain_openai import ChatOpenAI

from hermes.client import HermesApp

APP_TYPE = "langchain_mapreduce"


def summarise(llm: ChatOpenAI, base_url: str, api_key: str, document: list[str]) -> str:
    """One application run: a summary per chunk in parallel (map), then one of them (reduce)."""
    with HermesApp(None, app_type=APP_TYPE, base_url=base_url, api_key=api_key) as app:
        prompts = [[HumanMessage(f"Summarise: {chunk}")] for chunk in document]
        parts = llm.batch(prompts, extra_headers=app.headers("map"))  # fan-out: one stage
        joined = "\n".join(str(p.content) for p in parts)
        final = llm.invoke(
            [HumanMessage(f"Combine these summaries:\n{joined}")],
            extra_headers=app.headers("reduce"),
        )
        return str(final.content)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    parser.add_argument("--api-key", default="-", help="The gateway's key, if it has one.")
    parser.add_argument("--model", default="llama-2-7b")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    llm = ChatOpenAI(base_url=args.base_url, api_key=args.api_key, model=args.model, max_tokens=24)
    for i in range(args.runs):
        document = [f"chapter {i}.{k}: " + "words " * 50 for k in range(2 + i % 3)]
        summary = summarise(llm, args.base_url, args.api_key, document)
        print(f"run {i}: {summary[:60]!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
