"""Prefix caching in the simulator: Mooncake's hash_ids as shareable content, the hit-rate
figures, the switch, the CPU tier's config, and routing by the longest cached prefix."""

from __future__ import annotations

from typing import Any

import pytest

from hermes.cluster.router import PrefixAffinity, ReplicaLoad, RouteRequest
from hermes.sim.build import simulate
from hermes.sim.config import config_from_dict
from hermes.sim.prefix_figures import trace_content
from hermes.workloads.request_traces import TraceRequest


def test_mooncake_blocks_are_512_tokens_and_a_partial_last_one_is_not_shared() -> None:
    t = TraceRequest(0.0, 1300, 10, (7, 8, 9))  # 2 full blocks and 276 tokens of a third
    assert trace_content(t) == ((("mooncake", 7), 512), (("mooncake", 8), 512))
    assert trace_content(TraceRequest(0.0, 100, 10, (7,))) is None
    assert trace_content(TraceRequest(0.0, 100, 10)) is None


def _trace(tmp_path: Any) -> str:
    """Conversations that resend their growing history, as Mooncake's do."""
    lines = []
    for k in range(40):
        conv = k % 5
        turns = 1 + k // 5
        ids = [1000 * conv + j for j in range(turns)]
        lines.append(
            f'{{"timestamp": {k * 800}, "input_length": {512 * turns + 100}, '
            f'"output_length": 20, "hash_ids": {[*ids, 99999 + k]}}}'
        )
    path = tmp_path / "conv.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _run(trace: str, **group: Any) -> dict[str, Any]:
    g = {"model": "llama-3-8b", "gpu": "h100", "count": 2, "max_model_len": 16384, **group}
    cfg = config_from_dict({"router": "prefix", "instances": [g], "requests": {"trace": trace}})
    return simulate(cfg)


def test_a_conversation_trace_hits_its_history_and_the_figures_say_how_much(
    tmp_path: Any,
) -> None:
    trace = _trace(tmp_path)
    on, off = _run(trace), _run(trace, enable_prefix_caching=False)
    pc = on["prefix_cache"]
    # Every turn after a conversation's first finds its earlier turns' blocks.
    expected = sum(512 * (k // 5) for k in range(40))
    assert pc["hit_tokens"] == expected
    assert pc["hit_rate"] == pytest.approx(expected / pc["prompt_tokens"])
    assert pc["gpu_capacity_tokens"] > 0
    assert pc["cpu_capacity_tokens"] == 0
    assert sum(i["prefix_cache"]["hit_tokens"] for i in on["instances"]) == expected
    assert off["prefix_cache"]["hit_tokens"] == 0
    assert on["ttft"]["mean"] < off["ttft"]["mean"]


def test_the_prefix_router_prefers_the_replica_that_holds_the_prefix_within_a_load_bound() -> None:
    router = PrefixAffinity(max_excess=2)
    loads = [ReplicaLoad(3, 0.1, 0), ReplicaLoad(1, 0.1, 0), ReplicaLoad(4, 0.1, 0)]
    cached = {0: 512, 1: 0, 2: 1024}
    # Replica 2 holds the most but is 3 over the least loaded: out of bounds.
    assert router.choose(loads, RouteRequest(cached=cached.__getitem__)) == 0
    assert router.choose(loads, RouteRequest()) == 1  # nothing known: the least loaded
    assert router.choose(loads, RouteRequest(cached=lambda i: 0)) == 1  # ties: least loaded


def test_prefix_caching_and_swap_preemption_are_refused_together() -> None:
    with pytest.raises(ValueError, match="prefix caching preempts by recompute"):
        config_from_dict(
            {
                "requests": {},
                "instances": [{"enable_prefix_caching": True, "preemption_mode": "swap"}],
            }
        )


def test_runs_that_record_no_sharing_can_use_what_learning_detects(tmp_path: Any) -> None:
    from dataclasses import replace

    from hermes.core.runs import AppRun, LLMCall, Stage
    from hermes.workloads.run_files import write_runs
    from hermes.workloads.templates import generate_runs

    def plain(run: AppRun) -> AppRun:
        stages = tuple(
            Stage(
                s.name,
                s.kind,
                s.backend,
                tuple(LLMCall(c.prompt_tokens, c.completion_tokens) for c in s.llm_calls())
                if s.kind == "llm"
                else s.calls,
                s.model,
            )
            for s in run.stages
        )
        return replace(run, stages=stages)

    runs = [plain(r) for r in generate_runs("react_fever", 30, seed=3)]
    path = tmp_path / "runs.jsonl"
    write_runs(path, runs)

    def hits(learned: bool) -> int:
        apps: dict[str, Any] = {"runs": [str(path)], "count": 30, "learned_prefixes": learned}
        apps["arrivals"] = {"process": "poisson", "window_s": 60}
        out = simulate(config_from_dict({"instances": [{"count": 1}], "apps": apps}))
        pc: Any = out["prefix_cache"]
        return int(pc["hit_tokens"])

    assert hits(False) == 0
    assert hits(True) > 0
