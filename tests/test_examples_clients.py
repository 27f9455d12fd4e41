"""The client examples (examples/clients/) run against the gateway in front of an emulated
engine, and the gateway records each of their application runs, finished, with its stages:
the openai SDK's tool-using agent, LangChain's map-reduce, and LiteLLM's two steps (skipped
where LiteLLM is not installed: it is not a dependency)."""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from typer.testing import CliRunner

from hermes.cli import app
from hermes.gateway.config import Backend, GatewayConfig
from hermes.gateway.run_store import StoredRun, read_store
from hermes.testing.gateway_thread import gateway_in_thread
from hermes.workloads.pdgraph_files import load_pdgraphs

runner = CliRunner()
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "clients"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "runs.sqlite"


def run_against_gateway(module: ModuleType, store: Path, runs: int) -> list[StoredRun]:
    """`module.main` against a gateway with a run store; the runs it stored (read once the
    gateway has stopped and flushed them)."""
    backend = Backend(name="emu", kind="emulated", models=["llama-2-7b"], time_scale=0.02)
    config = GatewayConfig(port=0, backends=[backend], run_store=str(store), api_key="secret")
    with gateway_in_thread(config) as (_, base):
        assert (
            module.main(["--base-url", base + "/v1", "--api-key", "secret", "--runs", str(runs)])
            == 0
        )
    return read_store(store, finished=None)


def stages(row: StoredRun) -> list[tuple[str, str, int]]:
    return [(s.name, s.kind, s.fanout) for s in row.run.stages]


def test_the_openai_sdk_agent_finishes_one_run_per_question(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = run_against_gateway(load("openai_sdk"), store, runs=3)
    assert len(rows) == 3
    assert all(r.finished and r.run.app == "openai_agent" for r in rows)
    assert len({r.run.run_id for r in rows}) == 3  # one application id per run
    for row in rows:
        # The emulated model calls the tool, reads its result and answers.
        assert stages(row) == [("think", "llm", 1), ("search", "tool", 1), ("answer", "llm", 1)]
        answer = row.run.stages[2].calls[0]
        assert answer.completion_tokens == 32  # type: ignore[union-attr]
    assert capsys.readouterr().out.count("run ") == 3
    # The store in the open: exported as a runs file and learned, the agent's graph is there.
    runs_file, graphs = store.parent / "runs.jsonl", store.parent / "g.json"
    assert runner.invoke(app, ["runs", "export", str(store), "-o", str(runs_file)]).exit_code == 0
    assert runner.invoke(app, ["learn", str(runs_file), "-o", str(graphs)]).exit_code == 0
    graph = load_pdgraphs(graphs)["openai_agent"]
    assert graph.runs_seen == 3
    assert {"think", "search", "answer"} <= set(graph.nodes)


def test_the_langchain_map_reduce_finishes_one_run_per_document(store: Path) -> None:
    pytest.importorskip("langchain_openai", reason="langchain-openai is a dev extra")
    rows = run_against_gateway(load("langchain_app"), store, runs=3)
    assert len(rows) == 3
    assert all(r.finished and r.run.app == "langchain_mapreduce" for r in rows)
    # The map stage fans out over the document's chunks (2, 3, 4 of them), all in one stage.
    assert Counter(stages(r)[0] for r in rows) == Counter(("map", "llm", k) for k in (2, 3, 4))
    assert all(stages(r)[1] == ("reduce", "llm", 1) for r in rows)


def test_the_litellm_agent_finishes_one_run_per_question(store: Path) -> None:
    pytest.importorskip("litellm", reason="LiteLLM is not installed (not a dependency)")
    rows = run_against_gateway(load("litellm_app"), store, runs=2)
    assert len(rows) == 2
    assert all(r.finished and r.run.app == "litellm_agent" for r in rows)
    assert all(stages(r) == [("plan", "llm", 1), ("answer", "llm", 1)] for r in rows)


@pytest.fixture(autouse=True)
def _no_example_modules_left() -> Iterator[None]:
    yield
    for name in [n for n in sys.modules if n.startswith("example_")]:
        del sys.modules[name]
