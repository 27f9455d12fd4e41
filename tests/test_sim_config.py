"""The simulation config: defaults, a full YAML file, relative paths, and the errors it gives."""

from __future__ import annotations

import math
import shutil
from importlib import resources
from pathlib import Path

import pytest

from hermes.sim.build import build
from hermes.sim.config import (
    DEFAULT_CONFIG,
    AppWorkload,
    Arrivals,
    ConfigError,
    InstanceGroup,
    RequestWorkload,
    SimConfig,
    SLOConfig,
    ToolBackend,
    config_from_dict,
    load_config,
)
from hermes.workloads.run_files import write_runs
from hermes.workloads.templates import generate_runs

FULL = """\
seed: 7
policy: vllm
router: least-kv
until_s: 3600
instances:
  - model: llama-3-8b
    gpu: h100
    tp: 1
    count: 3
    max_num_seqs: 128
    max_num_batched_tokens: 4096
    max_model_len: 8192
    block_size: 32
    gpu_memory_utilization: 0.8
    num_gpu_blocks: 5000
    preemption_mode: swap
    swap_space_gb: 8
    swap_bytes_per_s: 1.0e10
  - profile: profiles/mine.json
tools:
  - name: docker
    cold_start_s: 1.5
    keepalive_s: 30
    concurrency: 4
    max_instances: 2
  - name: search
requests:
  trace: traces/azure.csv
  limit: 100
  repeat: 2
  model: llama-3-8b
  arrivals:
    process: gamma
    rate_per_s: 5
    cv: 2.5
apps:
  runs: [runs/a.jsonl, /abs/b.jsonl]
  count: 40
  arrivals:
    process: trace
    time_scale: 0.5
slo:
  ttft_s: 0.5
  tpot_s: 0.05
  e2e_s: 30
"""


def write(tmp_path: Path, text: str, name: str = "sim.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# Defaults ---------------------------------------------------------------------------------------


def test_default_config_is_two_llama_2_7b_a100_replicas_on_the_packaged_trace() -> None:
    c = DEFAULT_CONFIG
    assert len(c.instances) == 1
    (group,) = c.instances
    assert (group.model, group.gpu, group.tp, group.profile, group.count) == (
        "llama-2-7b",
        "a100",
        None,
        None,
        2,
    )
    assert c.requests == RequestWorkload()
    assert c.requests.trace is None  # None: the packaged Azure conversation trace
    assert c.requests.limit is None
    assert c.requests.arrivals.process == "trace"
    assert c.apps is None
    assert c.tools == []
    assert c.slo is None
    assert (c.seed, c.policy, c.router) == (0, "vllm", "round-robin")
    assert c.until == math.inf


def test_default_config_builds_the_packaged_trace_on_two_replicas() -> None:
    sim = build(DEFAULT_CONFIG)
    assert list(sim.groups) == ["llama-2-7b"]
    assert len(sim.groups["llama-2-7b"].runners) == 2
    assert sim.arrivals == 19_366
    assert sim.apps == {}


def test_an_empty_mapping_needs_a_workload_and_nothing_else() -> None:
    c = config_from_dict({"requests": {}})
    assert c == DEFAULT_CONFIG


def test_instance_group_engine_config() -> None:
    g = InstanceGroup(
        max_num_seqs=8, max_model_len=1024, num_gpu_blocks=100, swap_space_gb=2.0
    ).engine_config()
    assert g.max_num_seqs == 8
    assert g.max_model_len == 1024
    assert g.num_gpu_blocks == 100
    assert g.swap_space_bytes_per_gpu == 2 * 2**30
    assert g.preemption_mode == "recompute"


def test_configs_are_frozen() -> None:
    with pytest.raises(ValueError, match="frozen"):
        DEFAULT_CONFIG.seed = 3  # type: ignore[misc]


# A full file ------------------------------------------------------------------------------------


def test_a_full_yaml_file_parses_every_section(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, FULL))
    assert (c.seed, c.policy, c.router, c.until_s, c.until) == (7, "vllm", "least-kv", 3600, 3600)
    first, second = c.instances
    assert first == InstanceGroup(
        model="llama-3-8b",
        gpu="h100",
        tp=1,
        count=3,
        max_num_seqs=128,
        max_num_batched_tokens=4096,
        max_model_len=8192,
        block_size=32,
        gpu_memory_utilization=0.8,
        num_gpu_blocks=5000,
        preemption_mode="swap",
        swap_space_gb=8,
        swap_bytes_per_s=1e10,
    )
    assert second == InstanceGroup(profile=str(tmp_path / "profiles/mine.json"))
    assert c.tools == [
        ToolBackend(
            name="docker", cold_start_s=1.5, keepalive_s=30, concurrency=4, max_instances=2
        ),
        ToolBackend(name="search"),
    ]
    assert c.requests == RequestWorkload(
        trace=str(tmp_path / "traces/azure.csv"),
        limit=100,
        repeat=2,
        model="llama-3-8b",
        arrivals=Arrivals(process="gamma", rate_per_s=5, cv=2.5),
    )
    assert c.apps == AppWorkload(
        runs=[str(tmp_path / "runs/a.jsonl"), "/abs/b.jsonl"],
        count=40,
        arrivals=Arrivals(process="trace", time_scale=0.5),
    )
    assert c.slo == SLOConfig(ttft_s=0.5, tpot_s=0.05, e2e_s=30)


def test_app_workload_defaults_to_poisson_over_half_an_hour(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, "apps:\n  templates: {factool_math: 2, react_fever: 1}\n"))
    assert c.apps is not None
    assert c.apps.templates == {"factool_math": 2.0, "react_fever": 1.0}
    assert c.apps.count == 200
    assert c.apps.arrivals == Arrivals(process="poisson", window_s=1800.0)
    assert c.requests is None


def test_paths_are_relative_to_the_yaml_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = tmp_path / "conf"
    (here / "traces").mkdir(parents=True)
    (here / "traces" / "t.csv").write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.0,100,10\n"
        "2023-11-16 18:15:47.0,200,20\n"
        "2023-11-16 18:15:49.0,300,30\n"
    )
    write_runs(here / "apps.jsonl", generate_runs("factool_math", 2, seed=1))
    (here / "profiles").mkdir()
    packaged = resources.files("hermes") / "data" / "profiles" / "llama-2-7b_a100.json"
    with resources.as_file(packaged) as src:
        shutil.copy(src, here / "profiles" / "p.json")
    write(
        here,
        "instances: [{profile: profiles/p.json}]\n"
        "requests: {trace: traces/t.csv}\n"
        "apps: {runs: [apps.jsonl], count: 3, arrivals: {process: poisson, rate_per_s: 2}}\n",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    c = load_config(Path("..") / "conf" / "sim.yaml")
    assert c.requests is not None
    assert c.apps is not None
    assert Path(c.instances[0].profile or "").resolve() == here / "profiles" / "p.json"
    assert Path(c.requests.trace or "").resolve() == here / "traces" / "t.csv"
    assert [Path(r).resolve() for r in c.apps.runs or []] == [here / "apps.jsonl"]

    sim = build(c)  # every file is found from another working directory
    assert list(sim.groups) == ["llama-2-7b"]
    assert sim.arrivals == 3 + 3
    sim.run()
    results = sim.results()
    assert results["requests"] == results["completed"]


def test_absolute_paths_are_kept(tmp_path: Path) -> None:
    trace = tmp_path / "elsewhere" / "t.csv"
    c = load_config(write(tmp_path, f"requests: {{trace: '{trace}'}}\n"))
    assert c.requests is not None
    assert c.requests.trace == str(trace)


def test_config_from_dict_leaves_paths_alone() -> None:
    c = config_from_dict({"requests": {"trace": "traces/t.csv"}})
    assert c.requests is not None
    assert c.requests.trace == "traces/t.csv"


# Errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("requests: {}\nbogus: 1\n", "bogus: unknown field", id="unknown-top-level"),
        pytest.param(
            "requests: {}\ninstances: [{bogus: 1}]\n",
            "instances[0].bogus: unknown field",
            id="unknown-nested",
        ),
        pytest.param(
            "requests: {arrivals: {process: poisson, rate_per_s: 1, bogus: 2}}\n",
            "requests.arrivals.bogus: unknown field",
            id="unknown-deeply-nested",
        ),
        pytest.param(
            "requests: {}\ninstances: [{max_num_seqs: many}]\n",
            "instances[0].max_num_seqs: Input should be a valid integer, unable to parse string "
            "as an integer (got 'many')",
            id="wrong-type",
        ),
        pytest.param(
            "requests: {}\nseed: 1.5\n",
            "seed: Input should be a valid integer, got a number with a fractional part (got 1.5)",
            id="fractional-int",
        ),
        pytest.param(
            "requests: {}\ninstances: [{max_num_seqs: 0}]\n",
            "instances[0].max_num_seqs: Input should be greater than or equal to 1 (got 0)",
            id="out-of-range",
        ),
        pytest.param(
            "requests: {}\ninstances: [{}, {gpu_memory_utilization: 1.5}]\n",
            "instances[1].gpu_memory_utilization: Input should be less than or equal to 1 "
            "(got 1.5)",
            id="out-of-range-second-group",
        ),
        pytest.param(
            "requests: {limit: 0}\n",
            "requests.limit: Input should be greater than or equal to 1 (got 0)",
            id="zero-limit",
        ),
        pytest.param(
            "requests: {}\ntools: [{name: docker, cold_start_s: .inf}]\n",
            "tools[0].cold_start_s: Input should be a finite number (got inf)",
            id="infinite",
        ),
        pytest.param(
            "requests: {}\nrouter: random\n",
            "router: Input should be 'round-robin', 'least-outstanding', 'least-kv', "
            "'session' or 'prefix' (got 'random')",
            id="bad-router",
        ),
        pytest.param(
            "requests: {}\ninstances: [{preemption_mode: drop}]\n",
            "instances[0].preemption_mode: Input should be 'recompute' or 'swap' (got 'drop')",
            id="bad-preemption-mode",
        ),
        pytest.param(
            "apps: {templates: {factool_math: 1}, runs: [a.jsonl]}\n",
            "apps: give exactly one of templates, runs",
            id="apps-both",
        ),
        pytest.param(
            "apps: {count: 5}\n", "apps: give exactly one of templates, runs", id="apps-neither"
        ),
        pytest.param(
            "apps: {templates: {factool_math: 1}, arrivals: {process: trace}}\n",
            "apps: templates have no timestamps: use poisson or gamma arrivals",
            id="templates-with-trace-arrivals",
        ),
        pytest.param(
            "requests: {arrivals: {process: poisson}}\n",
            "requests.arrivals: process 'poisson' needs exactly one of rate_per_s, window_s",
            id="poisson-without-rate-or-window",
        ),
        pytest.param(
            "requests: {arrivals: {process: gamma, rate_per_s: 2, window_s: 60}}\n",
            "requests.arrivals: process 'gamma' needs exactly one of rate_per_s, window_s",
            id="gamma-with-both",
        ),
        pytest.param(
            "apps: {templates: {factool_math: 1}, arrivals: {process: poisson}}\n",
            "apps.arrivals: process 'poisson' needs exactly one of rate_per_s, window_s",
            id="apps-poisson-without-rate",
        ),
        pytest.param(
            "requests: {}\ntools: [{name: docker}, {name: search}, {name: docker}]\n",
            "tools: backend names must be unique, got ['docker', 'search', 'docker']",
            id="duplicate-tools",
        ),
        pytest.param(
            "requests: {}\ntools: [{name: ''}]\n",
            "tools[0].name: String should have at least 1 character (got '')",
            id="empty-tool-name",
        ),
        pytest.param(
            "seed: 3\n", "no workload: give requests, streams, apps or several", id="no-workload"
        ),
        pytest.param("", "no workload: give requests, streams, apps or several", id="empty-file"),
        pytest.param(
            "requests: {}\ninstances: []\n",
            "instances: at least one instance group (or shared_gpus) is needed",
            id="no-instances",
        ),
        pytest.param(
            "- requests: {}\n", "the top level must be a mapping, got list", id="top-level-list"
        ),
        pytest.param("42\n", "the top level must be a mapping, got int", id="top-level-scalar"),
        pytest.param("requests: {limit: [1\n", "not valid YAML", id="invalid-yaml"),
    ],
)
def test_errors_name_the_file_and_the_field(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "requests: {}\nbogus: 1\nrouter: random\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "bogus: unknown field" in str(info.value)
    assert "router: Input should be" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read: No such file or directory"):
        load_config(path)


def test_unreadable_file(tmp_path: Path) -> None:
    # A directory stands in for an unreadable file (chmod does not stop root).
    path = tmp_path / "dir.yaml"
    path.mkdir()
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: cannot read: ")


def test_invalid_yaml_says_where(tmp_path: Path) -> None:
    path = write(tmp_path, "requests:\n  limit: 3\n bad indent: [\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: not valid YAML: ")
    assert "line 3" in str(info.value)


def test_config_from_dict_names_its_source() -> None:
    with pytest.raises(ConfigError, match=r"^overrides: instances\[0\]\.count: Input should be"):
        config_from_dict({"requests": {}, "instances": [{"count": 0}]}, "overrides")
    with pytest.raises(ConfigError, match=r"^config: the top level must be a mapping, got str"):
        config_from_dict("requests")


def test_models_reject_unknown_fields_when_built_in_code() -> None:
    with pytest.raises(ValueError, match="extra"):
        SimConfig(requests=RequestWorkload(), bogus=1)  # type: ignore[call-arg]
