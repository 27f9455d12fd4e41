"""The gateway's logs: a structured access log (a JSON line per call, off by default), the
log level, and a line for every upstream state change, retry, rejection, store failure and
finished application."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterable

import httpx
import pytest
from typer.testing import CliRunner

from hermes.cli import app as cli
from hermes.core.runs import AppRun, LLMCall, Stage
from hermes.gateway import logs
from hermes.gateway.config import emulated_default
from hermes.gateway.logs import ACCESS, AccessLog
from hermes.gateway.metrics import GatewayMetrics
from hermes.gateway.outbox import RunOutbox
from hermes.gateway.serve import running
from hermes.gateway.server import Gateway
from hermes.testing.asgi_thread import serving
from test_gateway_faults import body, config, dead, replica, settled, wait_for
from test_gateway_server import FakeUpstream, fake, gateway_config  # noqa: F401

CHAT = "/v1/chat/completions"
TAGS = {"x-hermes-app-id": "a1", "x-hermes-app-type": "t", "x-hermes-stage": "s"}


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == ACCESS]


def test_the_access_log_has_a_json_line_per_call(
    fake: tuple[FakeUpstream, str],  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, url = fake
    gw = Gateway(gateway_config(url))
    with caplog.at_level(logging.INFO, ACCESS), serving(AccessLog(gw.app, gw.clock)) as base:
        assert httpx.post(base + CHAT, json=body(False, 2), headers=TAGS).status_code == 200
        assert httpx.post(base + CHAT, json=body(True, 2), headers=TAGS).status_code == 200
        r = httpx.post(base + CHAT, json={**body(), "model": "nope"}, headers=TAGS)
        assert r.status_code == 404
        assert httpx.post(base + "/v1/apps/a1/finish").status_code == 200
    lines = access_lines(caplog)
    assert [(x["method"], x["path"], x["status"]) for x in lines] == [
        ("POST", CHAT, 200),
        ("POST", CHAT, 200),  # the stream's line, once it ended
        ("POST", CHAT, 404),
        ("POST", "/v1/apps/a1/finish", 200),
    ]
    assert [x["upstream"] for x in lines] == ["fake", "fake", None, None]
    assert all(x["app_id"] == "a1" for x in lines[:3])
    assert all(isinstance(x["duration_ms"], float) and x["duration_ms"] >= 0 for x in lines)


@pytest.mark.parametrize("on", [True, False])
def test_serve_wraps_the_gateway_in_the_access_log_when_asked(
    on: bool, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> int:
        cfg = emulated_default(port=0, time_scale=0.05)
        async with running(cfg, "warning", on) as (_, url), httpx.AsyncClient(timeout=30) as c:
            r = await c.post(url + CHAT, json={**body(False, 2), "model": "llama-2-7b"})
            return r.status_code

    with caplog.at_level(logging.INFO, ACCESS):
        assert asyncio.run(main()) == 200
    lines = access_lines(caplog)
    if not on:
        assert lines == []
        return
    (line,) = lines
    assert (line["path"], line["status"], line["upstream"]) == (CHAT, 200, "emulated-0")


def test_the_access_log_is_off_unless_asked(capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    try:
        logs.configure("info", access_log=False, stream=out)
        logs.configure("info", access_log=False, stream=out)  # handlers replaced, not added
        logging.getLogger(ACCESS).info("x")
        logging.getLogger("hermes.gateway").debug("hidden")
        logging.getLogger("hermes.gateway").info("shown")
        assert out.getvalue().count("shown") == 1
        assert "hidden" not in out.getvalue()
        assert "x\n" not in out.getvalue()
        logs.configure("debug", access_log=True, stream=out)
        logging.getLogger(ACCESS).info('{"a":1}')
        assert '\n{"a":1}\n' in out.getvalue()  # a bare JSON line
    finally:
        for name in ("hermes", ACCESS):
            logger = logging.getLogger(name)
            for h in [h for h in logger.handlers if getattr(h, "_hermes", False)]:
                logger.removeHandler(h)
            logger.setLevel(logging.NOTSET)
        logging.getLogger(ACCESS).propagate = True


def test_a_bad_log_level_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="expected one of debug, info, warning, error, critical"):
        logs.check_level("loud")
    res = CliRunner().invoke(cli, ["serve", "--emulate", "--log-level", "loud"])
    assert res.exit_code == 2
    assert "--log-level: log level 'loud'" in res.output


def test_retries_state_changes_and_rejections_are_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with (
        caplog.at_level(logging.INFO, "hermes.gateway"),
        dead("refuse") as down,
        replica("ok") as (_, url),
    ):
        gw = Gateway(config({"down": down, "up": url}, 1))
        with serving(gw.app) as base:
            assert httpx.post(base + CHAT, json=body(), headers=TAGS, timeout=10).status_code == 200
            assert httpx.post(base + CHAT, json={"model": "m"}).status_code == 400
            assert wait_for(lambda: settled(gw))
            assert httpx.post(base + "/v1/apps/a1/finish").status_code == 200
    text = caplog.text
    assert "upstream down refused a call: out of rotation" in text
    assert "a call of a1 failed on upstream down (connect): retried elsewhere" in text
    assert "POST /v1/chat/completions -> 400" in text
    assert "application a1 (t) finished: 1 stages, 1 calls" in text


class _FlakyStore:
    """Fails its first `failures` writes."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.written: list[AppRun] = []

    def add_marked(self, runs: Iterable[tuple[AppRun, bool]]) -> int:
        if self.failures:
            self.failures -= 1
            raise OSError("disk full")
        batch = [r for r, _ in runs]
        self.written += batch
        return len(batch)


def test_every_store_failure_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    store = _FlakyStore(failures=2)
    run = AppRun("t", "r1", (Stage("s", "llm", "llm", (LLMCall(5, 5),)),))

    async def main() -> None:
        outbox = RunOutbox(store, GatewayMetrics(), limit=10, backoff_s=(0.001, 0.002))
        outbox.start()
        assert outbox.offer(run)
        await outbox.close()

    with caplog.at_level(logging.WARNING, "hermes.gateway"):
        asyncio.run(main())
    assert store.written == [run]
    failed = [m for m in caplog.messages if "run store: a write of 1 runs failed (disk full)" in m]
    assert len(failed) == 2
    assert "run store: writes succeed again" in caplog.messages


def test_a_stream_that_fails_after_its_200_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """The error table never sees a failure after the client's 200: the relay logs it."""
    with (
        caplog.at_level(logging.WARNING, "hermes.gateway"),
        replica("midstream", delay_s=0.01) as (_, url),
    ):
        gw = Gateway(config({"mid": url}, 1))
        with serving(gw.app) as base:
            r = httpx.post(base + CHAT, json=body(True, 5), timeout=10)
            assert r.status_code == 200
            assert wait_for(lambda: settled(gw))
    assert "a stream from upstream mid ended with an error: failed mid-stream" in caplog.text


def test_an_upstream_refusal_passed_on_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """An upstream's 4xx goes to the client as it is (not through the error table): logged
    with the upstream's message (e.g. vLLM refusing `priority` without its scheduling
    policy)."""
    with caplog.at_level(logging.INFO, "hermes.gateway"), replica("400") as (_, url):
        gw = Gateway(config({"r": url}, 1))
        with serving(gw.app) as base:
            assert httpx.post(base + CHAT, json=body(), timeout=10).status_code == 400
    assert "upstream r refused a call with 400: " in caplog.text
