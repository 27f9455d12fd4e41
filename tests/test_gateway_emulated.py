"""`hermes serve --emulate`: the gateway in front of an emulated engine, over real HTTP, with
the official `openai` client; and the command line's errors."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
from typer.testing import CliRunner

from hermes.cli import app
from hermes.gateway.config import emulated_default
from hermes.testing.gateway_thread import gateway_in_thread


def test_emulated_gateway_serves_the_official_client() -> None:
    cfg = emulated_default(port=0, time_scale=0.05)
    with gateway_in_thread(cfg) as (_, base):
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
        assert "hermes_generation_tokens_total 11.0" in metrics


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
    with gateway_in_thread(emulated_default(port=0, time_scale=0.05)) as (_, base):
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
        assert 'hermes_app_completion_time_seconds_count{app_type="helper_demo"} 1.0' in metrics
