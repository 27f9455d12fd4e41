"""A two-step agent on LiteLLM, each run tagged for the Hermes gateway as one application and
finished when it ends.

    pip install -e . litellm             # hermes-sched and LiteLLM
    hermes serve --emulate --port 8080 &
    python examples/clients/litellm_app.py --base-url http://127.0.0.1:8080/v1 --runs 3

LiteLLM reaches the gateway as an OpenAI-compatible server (`openai/<model>` with `api_base`);
the run's headers go with each call (`extra_headers=app.headers(stage)`).
"""

from __future__ import annotations

import argparse

import litellm

from hermes.client import HermesApp

APP_TYPE = "litellm_agent"


def ask(base_url: str, api_key: str, model: str, question: str) -> str:
    """One application run: plan, then answer."""
    with HermesApp(None, app_type=APP_TYPE, base_url=base_url, api_key=api_key) as app:
        common = {"model": f"openai/{model}", "api_base": base_url, "api_key": api_key}
        plan = litellm.completion(
            messages=[{"role": "user", "content": f"Plan an answer to: {question}"}],
            max_tokens=24,
            extra_headers=app.headers("plan"),
            **common,
        )
        answer = litellm.completion(
            messages=[
                {"role": "user", "content": question},
                {"role": "assistant", "content": plan.choices[0].message.content},
                {"role": "user", "content": "Now answer."},
            ],
            max_tokens=24,
            extra_headers=app.headers("answer"),
            **common,
        )
        return str(answer.choices[0].message.content)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8080/v1")
    parser.add_argument("--api-key", default="-", help="The gateway's key, if it has one.")
    parser.add_argument("--model", default="llama-2-7b")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    for i in range(args.runs):
        answer = ask(args.base_url, args.api_key, args.model, f"Why is the sky blue? ({i})")
        print(f"run {i}: {answer[:60]!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
