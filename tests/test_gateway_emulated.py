"""`hermes serve --emulate`: the gateway in front of an emulated engine, over real HTTP, with
the official `openai` client; and the command line's errors."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest
from typer.testing import CliRunner

from hermes.cli import app
from hermes.gateway.config import GatewayConfig, emulated_default
from hermes.gateway.serve import running


@contextmanager
def gateway_thread(config: GatewayConfig) -> Iterator[str]:
    """The gateway and its emulated engines on an event loop in a thread; yields the URL."""
    ready = threading.Event()
    url: list[str] = []
    failure: list[BaseException] = []
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def main() -> None:
        try:
            async with running(config) as (_, base):
                url.append(base)
                ready.set()
                await stop.wait()
        except BaseException as e:
            failure.append(e)
            ready.set()
            raise

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    ready.wait(20)
    if failure:
        raise RuntimeError("gateway did not start") from failure[0]
    try:
        yield url[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(20)
        loop.close()


def test_emulated_gateway_serves_the_official_client() -> None:
    cfg = emulated_default(port=0, time_scale=0.05)
    with gateway_thread(cfg) as base:
        assert httpx.get(base + "/healthz").json()["status"] == "ok"
        heads = {"x-hermes-app-id": "a", "x-hermes-app-type": "demo", "x-hermes-stage": "ask"}
        with openai.OpenAI(base_url=base + "/v1", api_key="-", default_headers=heads) as c:
            r = c.chat.completions.create(
                model="llama-2-7b",
                messages=[{"role": "user", "content": "hello " * 40}],
                max_tokens=6,
            )
            assert r.usage is not None
            assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (60, 6)
            assert r.choices[0].message.content == "".join(f" tok{i}" for i in range(6))
            stream = c.completions.create(
                model="llama-2-7b",
                prompt="x" * 400,
                max_tokens=5,
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = list(stream)
            assert len(chunks) == 6
            assert chunks[-1].usage is not None
            assert chunks[-1].usage.prompt_tokens == 100
        metrics = httpx.get(base + "/metrics").text
        assert "hermes:generation_tokens_total 11.0" in metrics


def test_serve_needs_a_config_or_emulate(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["serve"])
    assert res.exit_code == 2
    assert "give --config FILE or --emulate" in res.output
    bad = tmp_path / "gw.yaml"
    bad.write_text("backends:\n  - name: a\n    url: ftp://x\n    models: [m]\n")
    res = runner.invoke(app, ["serve", "--config", str(bad)])
    assert res.exit_code == 2
    assert "backends[0]: url must start with http:// or https://" in res.output


def test_the_client_helper_tags_stages_and_reports_tools() -> None:
    from hermes.client import HermesApp, app_headers

    assert app_headers("a", "t", "s", 1500, "rt") == {
        "x-hermes-app-id": "a",
        "x-hermes-app-type": "t",
        "x-hermes-stage": "s",
        "x-hermes-deadline-ms": "1500",
        "x-hermes-slo-class": "rt",
    }
    with gateway_thread(emulated_default(port=0, time_scale=0.05)) as base:
        with openai.OpenAI(base_url=base + "/v1", api_key="-") as c:
            app = HermesApp(c, app_type="helper_demo")
            msgs = [{"role": "user", "content": "plan"}]
            app.llm("plan").chat.completions.create(model="llama-2-7b", messages=msgs, max_tokens=2)
            with app.tool("search", backend="web"):
                pass
            app.llm("answer").chat.completions.create(
                model="llama-2-7b", messages=msgs, max_tokens=2
            )
            app.finish()
            with pytest.raises(RuntimeError, match="refused the finish report \\(404\\)"):
                app.finish()
        metrics = httpx.get(base + "/metrics").text
        assert 'hermes:app_completion_time_seconds_count{app_type="helper_demo"} 1.0' in metrics
