"""Durable finishes: a finished run is acknowledged once it is queued for the run store, written
off the event loop, retried while the store is locked or full, flushed at shutdown, and a
failing store shows in /healthz and /metrics, never as a lost run. And background loops that
outlive their failures (the idle-application reaper died after one failed store write)."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from hermes.core.runs import AppRun, LLMCall, Stage
from hermes.gateway import outbox as outbox_module
from hermes.gateway.build import build_gateway
from hermes.gateway.run_store import RunStore
from hermes.gateway.server import Gateway
from hermes.gateway.supervise import every
from hermes.testing.asgi_thread import serving
from hermes.testing.prometheus_text import metric_sum
from test_gateway_server import FakeUpstream, fake, gateway_config  # noqa: F401

CHAT = "/v1/chat/completions"
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def wait_until(check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Poll `check` until it holds; generous, for a busy machine."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def scrape(gw: Gateway, name: str, **labels: str) -> float:
    """The sum of the samples of metric `name` whose labels include `labels`."""
    return metric_sum(gw.metrics.render().decode(), name, **labels)


def run_app(base: str, app_id: str, headers: dict[str, str] | None = None) -> None:
    """One call of application `app_id` (type agent)."""
    heads = {"x-hermes-app-id": app_id, "x-hermes-app-type": "agent", **(headers or {})}
    r = httpx.post(base + CHAT, json=BODY, headers=heads, timeout=30)
    assert r.status_code == 200, r.text


def stored(path: Path, finished: int = 1) -> list[str]:
    """The run ids in the store at `path`, read by a connection of its own."""
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT run_id FROM runs WHERE finished = ? ORDER BY seq", (finished,)
        ).fetchall()
    return [r[0] for r in rows]


class FlakyStore(RunStore):
    """A run store whose writes fail as a full disk's do while `full`, and block while
    `hold` is clear (a store that takes its time)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.full = False
        self.hold = threading.Event()
        self.hold.set()

    def add_marked(self, runs: Iterable[tuple[AppRun, bool]]) -> int:
        if not self.hold.wait(timeout=60):
            raise RuntimeError("held too long")
        if self.full:
            raise sqlite3.OperationalError("database or disk is full")
        return super().add_marked(runs)


def _gateway_with(url: str, store: RunStore, **kw: Any) -> Gateway:
    gw = Gateway(gateway_config(url, **kw))
    gw.use_store(store)
    return gw


# Defect 1: the reaper outlives a failure ---------------------------------------------------


def test_the_idle_app_reaper_outlives_a_failure_and_counts_it(
    fake: tuple[FakeUpstream, str],  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, url = fake
    learned: list[str] = []

    def learn(run: AppRun) -> None:  # the first run's learning fails, as a store write did
        learned.append(run.run_id)
        if len(learned) == 1:
            raise sqlite3.OperationalError("database is locked")

    gw = Gateway(gateway_config(url, app_idle_timeout_s=0.05), on_run=learn)
    gw.reap_period_s = 0.05
    with caplog.at_level(logging.ERROR, "hermes.gateway"), serving(gw.app) as base:
        run_app(base, "first")
        wait_until(lambda: "first" in learned and not gw.tracker.apps)
        run_app(base, "second")  # reaped although the reaper failed before
        wait_until(lambda: "second" in learned and not gw.tracker.apps)
        failures = scrape(gw, "hermes_background_task_failures_total", task="reap_idle_apps")
    assert failures == 1
    assert "database is locked" in caplog.text
    assert "Traceback" in caplog.text  # logged with its traceback


def test_a_supervised_loop_logs_counts_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    failures = Counter("f", "f", ["task"], registry=CollectorRegistry())
    calls: list[int] = []

    def flaky() -> None:
        calls.append(1)
        if len(calls) % 2:
            raise ValueError(f"failure {len(calls)}")

    async def main() -> None:
        task = asyncio.ensure_future(every("t", 0.001, flaky, failures))
        while len(calls) < 6:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.ERROR, "hermes.gateway"):
        asyncio.run(main())
    assert failures.labels("t")._value.get() == len([c for c in range(len(calls)) if c % 2 == 0])
    assert caplog.text.count("Traceback") >= 3


# Defect 2: durable finishes ----------------------------------------------------------------


def test_the_store_runs_in_wal_mode_and_old_stores_gain_the_unfinished_mark(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runs.sqlite"
    with sqlite3.connect(path) as db:  # a store of the first release: no `finished` column
        db.executescript(
            "CREATE TABLE runs (seq INTEGER PRIMARY KEY AUTOINCREMENT, app TEXT NOT NULL,"
            " run_id TEXT NOT NULL, stored_at REAL NOT NULL, body TEXT NOT NULL);"
        )
    store = RunStore(path)
    assert store.journal_mode() == "wal"
    run = AppRun("a", "r1", (Stage("s", "llm", "llm", (LLMCall(3, 4),)),))
    store.add([run])
    store.add([AppRun("a", "r2", run.stages)], finished=False)
    assert [r.run_id for r in store.runs()] == ["r1"]
    assert [r.run_id for r in store.runs(finished=False)] == ["r2"]
    assert (store.count(), store.count(finished=True)) == (2, 1)
    assert store.graphs()["a"].runs_seen == 1  # unfinished runs are not learned
    store.close()


def test_a_finish_is_acknowledged_while_the_store_is_locked_and_written_once_it_frees(
    fake: tuple[FakeUpstream, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    _, url = fake
    path = tmp_path / "runs.sqlite"
    gw = build_gateway(gateway_config(url, run_store=str(path)))
    with serving(gw.app) as base:
        lock = sqlite3.connect(path, timeout=0, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # another process holds the store
        try:
            for i in range(3):
                run_app(base, f"a{i}")
                r = httpx.post(base + f"/v1/apps/a{i}/finish", timeout=30)
                assert r.status_code == 200, r.text  # acknowledged: queued for the store
            assert not gw.tracker.apps

            def degraded() -> bool:
                health = httpx.get(base + "/healthz", timeout=30).json()
                return bool(health["status"] == "degraded")

            wait_until(degraded)
            health = httpx.get(base + "/healthz", timeout=30).json()
            assert "locked" in health["problems"][0]
            assert health["run_store_pending"] == 3
            scraped = httpx.get(base + "/metrics", timeout=30).text
            assert "hermes_run_store_pending 3.0" in scraped
            assert scrape(gw, "hermes_run_store_failures_total") >= 1
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        wait_until(lambda: gw.outbox is not None and gw.outbox.pending == 0)
        assert httpx.get(base + "/healthz", timeout=30).json()["status"] == "ok"
        assert stored(path) == ["a0", "a1", "a2"]
        assert scrape(gw, "hermes_run_store_written_total") == 3


def test_the_event_loop_serves_while_a_store_write_is_stuck(
    fake: tuple[FakeUpstream, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    _, url = fake
    store = FlakyStore(tmp_path / "runs.sqlite")
    gw = _gateway_with(url, store)
    with serving(gw.app) as base:
        store.hold.clear()  # the next write blocks in its thread
        try:
            run_app(base, "a")
            assert httpx.post(base + "/v1/apps/a/finish", timeout=30).status_code == 200
            # While the write is stuck, calls, health checks and scrapes are answered.
            run_app(base, "b")
            assert httpx.get(base + "/healthz", timeout=30).status_code == 200
            assert httpx.get(base + "/metrics", timeout=30).status_code == 200
            assert gw.outbox is not None
            assert gw.outbox.pending == 1
        finally:
            store.hold.set()
        wait_until(lambda: gw.outbox is not None and gw.outbox.pending == 0)
    assert stored(store.path) == ["a"]
    assert stored(store.path, finished=0) == ["b"]  # in progress at shutdown: kept, marked


def test_a_full_disk_loses_no_acknowledged_run(
    fake: tuple[FakeUpstream, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    _, url = fake
    store = FlakyStore(tmp_path / "runs.sqlite")
    gw = _gateway_with(url, store, run_store_pending_limit=40)
    with serving(gw.app) as base:
        store.full = True
        for i in range(37):
            run_app(base, f"a{i}")
            assert httpx.post(base + f"/v1/apps/a{i}/finish", timeout=30).status_code == 200
        wait_until(lambda: "full" in str(httpx.get(base + "/healthz", timeout=30).json()))
        store.full = False
        wait_until(lambda: gw.outbox is not None and gw.outbox.pending == 0)
    assert stored(store.path) == [f"a{i}" for i in range(37)]


def test_a_full_outbox_refuses_the_finish_and_keeps_the_application(
    fake: tuple[FakeUpstream, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    _, url = fake
    store = FlakyStore(tmp_path / "runs.sqlite")
    gw = _gateway_with(url, store, run_store_pending_limit=1)
    with serving(gw.app) as base:
        store.full = True
        run_app(base, "a")
        run_app(base, "b")
        assert httpx.post(base + "/v1/apps/a/finish", timeout=30).status_code == 200
        r = httpx.post(base + "/v1/apps/b/finish", timeout=30)
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1"
        assert "run store is behind" in r.json()["error"]["message"]
        assert "b" in gw.tracker.apps  # kept: the finish can be retried
        assert "outbox holds" in str(httpx.get(base + "/healthz", timeout=30).json())
        store.full = False
        wait_until(lambda: gw.outbox is not None and gw.outbox.pending == 0)
        assert httpx.post(base + "/v1/apps/b/finish", timeout=30).status_code == 200
        wait_until(lambda: gw.outbox is not None and gw.outbox.pending == 0)
    assert stored(store.path) == ["a", "b"]


def test_applications_in_progress_at_shutdown_are_stored_unfinished_and_not_learned(
    fake: tuple[FakeUpstream, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    _, url = fake
    path = tmp_path / "runs.sqlite"
    cfg = gateway_config(url, run_store=str(path))
    gw = build_gateway(cfg)
    with serving(gw.app) as base:
        run_app(base, "done")
        assert httpx.post(base + "/v1/apps/done/finish", timeout=30).status_code == 200
        run_app(base, "open")
        r = httpx.post(base + CHAT, json=BODY, timeout=30)  # a plain call: nothing to keep
        assert r.status_code == 200
    assert stored(path) == ["done"]
    assert stored(path, finished=0) == ["open"]
    again = build_gateway(cfg)
    assert again.graphs["agent"].runs_seen == 1
    assert again.store is not None
    again.store.close()


def test_what_the_store_refuses_at_shutdown_is_logged_for_recovery(
    fake: tuple[FakeUpstream, str],  # noqa: F811
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, url = fake
    monkeypatch.setattr(outbox_module, "FLUSH_S", 0.3)
    store = FlakyStore(tmp_path / "runs.sqlite")
    gw = _gateway_with(url, store)
    with caplog.at_level(logging.ERROR, "hermes.gateway"), serving(gw.app) as base:
        store.full = True
        run_app(base, "lost-if-not-logged")
        assert httpx.post(base + "/v1/apps/lost-if-not-logged/finish").status_code == 200
    assert "1 runs could not be written" in caplog.text
    assert '"run_id":"lost-if-not-logged"' in caplog.text


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs (root only; skipped elsewhere)."""
    where = tmp_path / "disk"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_real_full_disk_loses_no_acknowledged_run(
    fake: tuple[FakeUpstream, str],  # noqa: F811
    tiny_disk: Path,
) -> None:
    _, url = fake
    path = tiny_disk / "runs.sqlite"
    gw = build_gateway(gateway_config(url, run_store=str(path)))
    with serving(gw.app) as base:
        run_app(base, "warm")  # the store's files exist before the disk fills
        assert httpx.post(base + "/v1/apps/warm/finish", timeout=30).status_code == 200
        wait_until(lambda: gw.outbox is not None and gw.outbox.pending == 0)
        filler = tiny_disk / "filler"
        with filler.open("wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"x" * 4096)
            except OSError:  # ENOSPC: the disk is full
                pass
        for i in range(37):
            run_app(base, f"a{i}")
            assert httpx.post(base + f"/v1/apps/a{i}/finish", timeout=30).status_code == 200
        wait_until(lambda: "full" in str(httpx.get(base + "/healthz", timeout=30).json()))
        filler.unlink()
        wait_until(lambda: gw.outbox is not None and gw.outbox.pending == 0)
    assert stored(path) == ["warm"] + [f"a{i}" for i in range(37)]
