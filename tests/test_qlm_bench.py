"""The QLM simulation shell and `hermes bench qlm`: no request is lost under any policy, model
swaps and evictions are carried out, and the numbers are summarised as documented."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hermes.cli import app
from hermes.cluster.multi_model import ModelInstance, MultiModelConfig
from hermes.experiments.qlm_paper import QlmSettings, _instances, workload
from hermes.experiments.qlm_sim import QlmRun, RunCounters, simulate, summary
from hermes.policies.qlm.policy import make_qlm_policy
from hermes.profiles import load_profile
from hermes.workloads.qlm_workloads import QlmRequest


@pytest.mark.parametrize("policy", ["vllm", "edf", "qlm-noplan", "qlm"])
@pytest.mark.parametrize("name", ["WA", "WB"])
def test_every_request_finishes_under_every_policy(name: str, policy: str) -> None:
    s = QlmSettings(instances=2, duration_s=40.0)
    reqs = workload(name, 8.0, s.duration_s, seed=3)
    models = sorted({r.model for r in reqs})
    run = simulate(reqs, make_qlm_policy(policy), _instances(models, s), horizon_s=2000.0)
    assert len(run.finish_s) == len(reqs)
    for r, f in zip(run.requests, run.finish_s, strict=True):
        assert f is not None, f"{policy}: request {r.id} never finished"
        assert f >= r.arrival_s
    if name == "WB" and policy != "vllm":
        # Three models on two instances: someone has to swap.
        assert run.swaps["warm"] + run.swaps["cold"] > 0


def test_qlm_serves_a_bursty_interactive_mix_better_than_fcfs() -> None:
    s = QlmSettings(instances=2, duration_s=120.0)
    reqs = workload("WA", 16.0, s.duration_s, seed=0)
    att = {}
    for policy in ("vllm", "qlm"):
        run = simulate(reqs, make_qlm_policy(policy), _instances(["llama-2-7b"], s), horizon_s=2e4)
        att[policy] = summary(run)["slo_attainment"]
    assert att["qlm"] > att["vllm"]


def test_summary_counts_slos_on_completion_per_class() -> None:
    reqs = (
        QlmRequest(0, "m", "interactive", 20.0, 10, 10, 0.0),
        QlmRequest(1, "m", "interactive", 20.0, 10, 10, 5.0),
        QlmRequest(2, "m", "batch", 60.0, 10, 10, 5.0),
        QlmRequest(3, "m", "batch", 60.0, 10, 10, 50.0),
    )
    run = QlmRun(
        reqs, (19.0, 30.0, 64.0, None), 100.0, RunCounters(), {"warm": 1, "cold": 0}, 0.5, 0.5, 40
    )
    s = summary(run)
    assert s["slo_attainment_by_class"] == {"batch": 0.5, "interactive": 0.5}
    assert s["slo_attainment"] == 0.5
    assert s["finished"] == 3
    assert summary(run, window=(1.0, 60.0))["requests"] == 3


def test_bench_qlm_quick_writes_its_files(tmp_path: Path) -> None:
    out = tmp_path / "qlm"
    res = CliRunner().invoke(
        app,
        [
            "bench",
            "qlm",
            "--quick",
            "--workloads",
            "WA",
            "--policies",
            "vllm,qlm",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads((out / "results.json").read_text())
    assert set(data["workloads"]) == {"WA"}
    assert (out / "qlm_WA.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## WA" in (out / "report.md").read_text()
    bad = CliRunner().invoke(app, ["bench", "qlm", "--workloads", "WZ"])
    assert bad.exit_code == 2
    assert "--workloads: expected some of WA, WB, WC" in bad.output


def test_instances_that_start_cold_load_their_model_and_serve_everything() -> None:
    s = QlmSettings(instances=2)
    reqs = workload("WA", 4.0, 30.0, seed=0)
    cold = [
        ModelInstance(
            {"llama-2-7b": load_profile("llama-2-7b", "a100", None)},
            MultiModelConfig(cpu_memory_bytes=s.cpu_memory_bytes, cpu_kv_bytes=s.cpu_kv_bytes),
            name=f"g{i}",
        )
        for i in range(2)
    ]
    run = simulate(reqs, make_qlm_policy("qlm"), cold, horizon_s=3000.0)
    assert all(f is not None for f in run.finish_s)
    assert run.swaps["cold"] >= 1  # no model was loaded: the first is loaded from disk
