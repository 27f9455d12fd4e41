"""`hermes.client` without hidden dependencies: its reports use the standard library only (the
openai SDK 3.x no longer brings httpx), it tags calls per run for clients that build their own
(`headers`), reports tool stages from asyncio code, and finishes a run only when it succeeded."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import openai
import pytest

from hermes.client import HermesApp
from hermes.gateway.config import Backend, GatewayConfig
from hermes.gateway.run_store import read_store
from hermes.testing.gateway_thread import gateway_in_thread

MODEL = "llama-2-7b"
HI: list[Any] = [{"role": "user", "content": "hi"}]


def gateway_config(store: Path) -> GatewayConfig:
    backend = Backend(name="emu", kind="emulated", models=[MODEL], time_scale=0.02)
    return GatewayConfig(port=0, backends=[backend], run_store=str(store))


def test_the_helper_needs_no_httpx(tmp_path: Path) -> None:
    """A program that cannot import httpx still reports its runs."""
    store = tmp_path / "runs.sqlite"
    program = textwrap.dedent(
        """
        import sys
        sys.modules["httpx"] = None  # importing it now fails, as where it is not installed
        from hermes.client import HermesApp
        app = HermesApp(None, "no_httpx", base_url=sys.argv[1], api_key="-")
        with app.tool("search"):
            pass
        app.finish()
        print("finished", app.app_id)
        """
    )
    with gateway_in_thread(gateway_config(store)) as (_, base):
        done = subprocess.run(
            [sys.executable, "-c", program, base + "/v1"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
    [row] = read_store(store)
    assert row.run.app == "no_httpx"
    assert [s.name for s in row.run.stages] == ["search"]


def test_headers_open_stages_and_only_a_run_that_succeeds_is_finished(tmp_path: Path) -> None:
    store = tmp_path / "runs.sqlite"
    with (
        gateway_in_thread(gateway_config(store)) as (_, base),
        openai.OpenAI(base_url=base + "/v1", api_key="-", max_retries=0) as client,
    ):
        with HermesApp(None, "tagged", base_url=base, api_key="-") as app:
            first, second = app.headers("plan"), app.headers("plan")
            assert (first["x-hermes-stage-index"], second["x-hermes-stage-index"]) == ("0", "1")
            assert first["x-hermes-app-type"] == "tagged"
            for h in (first, second):  # one stage name twice in a row: two stages
                client.chat.completions.create(
                    model=MODEL, messages=HI, max_tokens=2, extra_headers=h
                )
        assert app.finished
        failed = HermesApp(client, "failed")

        def fail_midway() -> None:
            with failed:
                failed.llm("plan").chat.completions.create(model=MODEL, messages=HI, max_tokens=2)
                raise ValueError("boom")

        with pytest.raises(ValueError, match="boom"):
            fail_midway()
        assert not failed.finished
        with pytest.raises(ValueError, match="needs an openai client"):
            HermesApp(None, "x", base_url=base).llm("plan")
    rows = read_store(store)
    assert [(r.run.app, [s.name for s in r.run.stages]) for r in rows] == [
        ("tagged", ["plan", "plan"])
    ]


def test_async_tool_stages_and_finish(tmp_path: Path) -> None:
    store = tmp_path / "runs.sqlite"

    async def run(base: str) -> None:
        async with openai.AsyncOpenAI(base_url=base + "/v1", api_key="-") as client:
            app = HermesApp(client, "async_agent")
            await app.llm("think").chat.completions.create(model=MODEL, messages=HI, max_tokens=2)
            async with app.atool("search", backend="web"):
                await asyncio.sleep(0)
            await app.afinish()

    with gateway_in_thread(gateway_config(store)) as (_, base):
        asyncio.run(run(base))
    [row] = read_store(store)
    assert [(s.name, s.kind, s.backend) for s in row.run.stages] == [
        ("think", "llm", "llm"),
        ("search", "tool", "web"),
    ]


def test_an_unreachable_gateway_is_a_clear_error() -> None:
    app = HermesApp(None, "x", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(RuntimeError, match=r"gateway at http://127.0.0.1:9 unreachable \(finish\)"):
        app.finish()
    with pytest.raises(ValueError, match="give an openai client or the gateway's base_url"):
        HermesApp(None, "x")
