"""One simulation where the three kinds of work meet (issue 13): applications ranked by a
policy, real-time and best-effort request streams, and models sharing GPUs under a queue
policy, each with its own decisions, on one event loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from hermes.engine.request import RequestState
from hermes.sim.build import build, simulate
from hermes.sim.config import config_from_dict, load_config

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "composed.yaml"


def small(**over: Any) -> dict[str, Any]:
    """The shipped example, cut to a few minutes of traffic and made deterministic (QLM's
    MILP planner stops at a wall-clock limit; its EDF planner does not)."""
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    data["shared_gpus"][0]["queue_policy"] = "qlm-noplan"
    data["apps"]["count"] = 8
    data["apps"]["arrivals"] = {"process": "poisson", "window_s": 150}
    chat, busy, quiet = data["streams"]
    chat["limit"] = 100
    # A burst on one model, a trickle on the other, both due within 30 s: worth a swap.
    busy.update(limit=1200, arrivals={"process": "gamma", "rate_per_s": 8, "cv": 4}, e2e_s=30)
    quiet.update(limit=40, arrivals={"process": "gamma", "rate_per_s": 0.2, "cv": 4}, e2e_s=30)
    data.update(over)
    return data


def test_the_shipped_example_is_valid_and_composes_all_three() -> None:
    cfg = load_config(EXAMPLE)
    assert {g.engine for g in cfg.instances} == {"bros"}
    assert cfg.shared_gpus[0].models == ["llama-3-8b", "vicuna-7b"]
    assert {s.slo_class for s in cfg.streams} == {"rt", "be"}
    assert cfg.apps is not None
    assert cfg.policy == "gittins"


def test_a_composed_run_reports_act_attainment_per_class_and_model_swaps() -> None:
    out = simulate(config_from_dict(small()))
    assert out["act"]["count"] == 8  # type: ignore[index]
    attainment = out["slo_attainment"]
    assert isinstance(attainment, dict)
    assert set(attainment) == {"rt", "be"}
    assert all(0.0 <= v <= 1.0 for v in attainment.values())
    swaps = out["model_swaps"]
    assert isinstance(swaps, int)
    assert swaps >= 1  # the busy model borrows the quiet model's GPU
    streams = out["streams"]
    assert isinstance(streams, dict)
    assert streams["chat"]["finished"] > 0
    assert streams["batch-llama3"]["finished"] > 0  # served on the shared GPUs
    shared = out["shared_gpus"]
    assert isinstance(shared, list)
    assert shared[0]["pulls"] > 0


def test_nothing_is_lost_across_the_three_shells() -> None:
    sim = build(config_from_dict(small()))
    sim.run()
    assert sim.requests
    for r in sim.requests:
        assert r.state in (RequestState.FINISHED, RequestState.REJECTED), r.id
        if r.state is RequestState.FINISHED:
            assert r.generated == r.output_tokens
    assert all(a.finish_s is not None and a.failed is None for a in sim.apps.values())
    for group in sim.groups.values():
        for runner in group.runners:
            assert runner.engine.idle
            runner.engine.check_invariants()


def test_the_same_seed_gives_the_same_numbers() -> None:
    a = simulate(config_from_dict(small()))
    b = simulate(config_from_dict(small()))
    for key in ("act", "slo_attainment", "model_swaps", "streams", "ttft"):
        assert a[key] == b[key], key


def test_real_time_calls_fare_better_on_a_bros_engine_than_first_come_first_served() -> None:
    """The engine decision is the instance group's: the same traffic on a vLLM-style
    first-come-first-served engine keeps fewer real-time calls within their SLO."""

    def rt_attainment(engine: str) -> float:
        data = small(shared_gpus=[], instances=[{"model": "llama-2-7b", "engine": engine}])
        chat = data["streams"][0]
        # Batch work on the chat's own model fills first-come-first-served iterations.
        batch = {
            "name": "batch",
            "limit": 1000,
            "arrivals": {"process": "poisson", "rate_per_s": 12},
        }
        data["streams"] = [chat, batch]
        out = simulate(config_from_dict(data))
        value = out["slo_attainment"]["rt"]  # type: ignore[index]
        assert isinstance(value, float)
        return value

    assert rt_attainment("bros") > 0.8 > 0.2 > rt_attainment("vllm")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"shared_gpus": [{"models": ["llama-2-7b", "llama-3-8b"]}]},
            "model 'llama-2-7b' is served by two groups",
        ),
        (
            {"streams": [{"name": "c", "slo_class": "rt", "ttft_s": 1.0}]},
            "a real-time stream needs ttft_s and tpot_s",
        ),
        (
            {"streams": [{"name": "c"}, {"name": "c"}]},
            "streams: names must be unique",
        ),
        ({"shared_gpus": [{"models": ["a", "a"]}]}, "models must be distinct"),
        ({"instances": [{"engine": "fifo"}]}, r"instances\[0\]\.engine: Input should be .vllm."),
    ],
)
def test_bad_compositions_are_refused_with_the_reason(change: dict[str, Any], message: str) -> None:
    data = small()
    data.update(change)
    with pytest.raises(ValueError, match=message):
        config_from_dict(data)


def test_the_shared_gpus_take_the_papers_baseline_queue_too() -> None:
    data = small()
    data["shared_gpus"][0]["queue_policy"] = "vllm-shared"
    out = simulate(config_from_dict(data))
    streams = out["streams"]
    assert isinstance(streams, dict)
    assert streams["batch-llama3"]["finished"] > 0  # served on the shared GPUs
    assert streams["batch-vicuna"]["finished"] > 0
