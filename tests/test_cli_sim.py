"""`hermes sim`: small workloads end to end through the command line, and its errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from hermes.cli import app

runner = CliRunner()

APPS_YAML = """\
seed: 3
tools:
  - name: docker
    cold_start_s: 0.5
apps:
  templates: {factool_math: 1}
  count: 5
  arrivals: {process: poisson, rate_per_s: 1.0}
"""


def sim(tmp_path: Path, *args: str, name: str = "out.json") -> tuple[Result, dict[str, Any]]:
    out = tmp_path / name
    res = runner.invoke(app, ["sim", *args, "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert f"results written to {out}" in res.stdout
    data: dict[str, Any] = json.loads(out.read_text())
    return res, data


def apps_config(tmp_path: Path, text: str = APPS_YAML) -> Path:
    path = tmp_path / "apps.yaml"
    path.write_text(text)
    return path


def check_latencies(r: dict[str, Any]) -> None:
    """Every latency block has the statistics, in seconds, in order."""
    for key in ("ttft", "tpot", "itl", "e2e"):
        d = r[key]
        assert d["count"] > 0, key
        assert 0 < d["p50"] <= d["p90"] <= d["p99"] <= d["max"], (key, d)
        assert 0 < d["mean"] <= d["max"], (key, d)
    # Seconds, not milliseconds: a 7B model's token takes milliseconds, a request seconds.
    assert 1e-3 < r["tpot"]["p50"] < 0.2
    assert 1e-3 < r["itl"]["p50"] < 0.2
    assert r["ttft"]["p50"] < 5.0
    assert r["e2e"]["mean"] > r["ttft"]["mean"]
    assert r["e2e"]["max"] < r["makespan_s"] + 1e-9


def test_sim_on_a_prefix_of_the_packaged_trace(tmp_path: Path) -> None:
    res, r = sim(tmp_path, "--limit", "300")
    assert r["requests"] == 300
    assert r["completed"] + r["rejected"] == r["requests"]
    assert r["unfinished"] == 0
    assert r["completed"] > 250
    assert r["ttft"]["count"] == r["e2e"]["count"] == r["completed"]
    check_latencies(r)
    assert r["wall_s"] > 0
    assert r["throughput_rps"] == pytest.approx(r["completed"] / r["makespan_s"])
    # The default cluster: two Llama-2-7B A100 replicas, round robin, which share the work.
    assert [i["name"] for i in r["instances"]] == ["llama-2-7b/0", "llama-2-7b/1"]
    assert sum(i["requests"] for i in r["instances"]) == 300
    assert abs(r["instances"][0]["requests"] - r["instances"][1]["requests"]) <= 1
    assert r["config"]["requests"]["limit"] == 300
    assert r["config"]["router"] == "round-robin"
    assert "apps" not in r
    assert "300 (" in res.stdout  # the summary table


def test_a_shorter_max_model_len_rejects_more(tmp_path: Path) -> None:
    _, default = sim(tmp_path, "--limit", "300", name="default.json")
    _, short = sim(tmp_path, "--limit", "300", "--max-model-len", "2048", name="short.json")
    assert short["rejected"] > default["rejected"]
    assert short["completed"] + short["rejected"] == short["requests"] == 300
    assert short["rejected_reasons"] == {"exceeds max_model_len": short["rejected"]}
    assert short["config"]["instances"][0]["max_model_len"] == 2048


def test_cluster_options_override_the_default(tmp_path: Path) -> None:
    _, r = sim(
        tmp_path,
        "--limit", "60",
        "--repeat", "2",
        "--model", "llama-3-8b",
        "--gpu", "h100",
        "--instances", "3",
        "--router", "least-outstanding",
    )  # fmt: skip
    assert r["requests"] == 120
    assert [i["name"] for i in r["instances"]] == [f"llama-3-8b/{k}" for k in range(3)]
    assert {i["model"] for i in r["instances"]} == {"llama-3-8b@h100"}
    assert sum(i["requests"] for i in r["instances"]) == 120
    assert r["config"]["router"] == "least-outstanding"


def test_sim_of_template_apps_with_a_tool_backend(tmp_path: Path) -> None:
    _, r = sim(tmp_path, "--config", str(apps_config(tmp_path)))
    assert r["apps"]["apps"] == 5
    assert r["apps"]["completed"] == 5
    assert r["apps"]["failed"] == 0
    assert set(r["apps"]["act_by_app"]) == {"factool_math"}
    assert r["requests"] >= 2 * 5  # at least two LLM stages per run
    assert r["completed"] + r["rejected"] == r["requests"]
    check_latencies(r)
    docker = r["tools"]["docker"]
    assert docker["calls"] == 5  # one code execution per run
    assert docker["cold_starts"] >= 1
    assert docker["cold_wait_s"] >= 0.5
    # The configured cold start is what makes an application wait: without it, no cold start.
    _, warm = sim(
        tmp_path,
        "--config",
        str(apps_config(tmp_path, APPS_YAML.replace("cold_start_s: 0.5", "cold_start_s: 0"))),
        name="warm.json",
    )
    assert warm["tools"]["docker"]["cold_wait_s"] == 0
    assert warm["apps"]["act"]["mean"] < r["apps"]["act"]["mean"]


def test_the_same_seed_gives_the_same_results(tmp_path: Path) -> None:
    config = str(apps_config(tmp_path))
    _, first = sim(tmp_path, "--config", config, name="a.json")
    _, second = sim(tmp_path, "--config", config, name="b.json")
    assert first.pop("wall_s") > 0
    assert second.pop("wall_s") > 0
    assert first == second
    _, other = sim(tmp_path, "--config", config, "--seed", "4", name="c.json")
    assert other["config"]["seed"] == 4
    assert other["e2e"] != first["e2e"]
    assert other["apps"]["act"] != first["apps"]["act"]


def test_without_json_only_the_table_is_printed(tmp_path: Path) -> None:
    res = runner.invoke(app, ["sim", "--limit", "20"])
    assert res.exit_code == 0, res.output
    assert "20 (" in res.stdout
    assert "results written" not in res.stdout
    assert res.stderr == ""


BAD_CSV = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.0,abc,10\n"


@pytest.mark.parametrize(
    ("args", "files", "message"),
    [
        pytest.param(
            ["--limit", "10", "--policy", "nope"], {}, "unknown policy 'nope'; known: edf, gittins",
            id="unknown-policy",
        ),
        pytest.param(
            ["--limit", "10", "--model", "gpt-5"], {}, "no profile matches 'gpt-5', gpu='a100'",
            id="unknown-model",
        ),
        pytest.param(
            ["--limit", "10", "--gpu", "tpu"], {}, "no profile matches 'llama-2-7b', gpu='tpu'",
            id="unknown-gpu",
        ),
        pytest.param(
            ["--limit", "10", "--router", "random"], {},
            "default config with command-line options: router: Input should be 'round-robin', "
            "'least-outstanding', 'least-kv', 'session' or 'prefix' (got 'random')",
            id="unknown-router",
        ),
        pytest.param(
            ["--limit", "0"], {},
            "default config with command-line options: requests.limit: "
            "Input should be greater than or equal to 1 (got 0)",
            id="zero-limit",
        ),
        pytest.param(
            ["--trace", "{dir}/missing.csv"], {}, "--trace: {dir}/missing.csv: no such file",
            id="missing-trace",
        ),
        pytest.param(
            ["--trace", "{dir}/bad.csv"], {"bad.csv": BAD_CSV},
            "{dir}/bad.csv:2: ContextTokens 'abc' is not a non-negative integer",
            id="malformed-trace",
        ),
        pytest.param(
            ["--config", "{dir}/sim.yaml"],
            {"sim.yaml": "requests: {limit: 10}\ninstances: [{max_num_seqs: 0}]\n"},
            "{dir}/sim.yaml: instances[0].max_num_seqs: Input should be greater than or equal "
            "to 1 (got 0)",
            id="bad-config-field",
        ),
        pytest.param(
            ["--config", "{dir}/sim.yaml"], {"sim.yaml": "requests: {}\nbogus: 1\n"},
            "{dir}/sim.yaml: bogus: unknown field",
            id="unknown-config-field",
        ),
        pytest.param(
            ["--config", "{dir}/missing.yaml"], {}, "{dir}/missing.yaml: cannot read",
            id="missing-config",
        ),
        pytest.param(
            ["--config", "{dir}/sim.yaml"],
            {"sim.yaml": "apps: {templates: {nope: 1}, count: 2, "
                         "arrivals: {process: poisson, rate_per_s: 1}}\n"},
            "apps.templates: unknown application 'nope'; known: factool_code",
            id="unknown-template",
        ),
        pytest.param(
            ["--trace", "{dir}/[/run]/t.csv"], {},
            "--trace: {dir}/[/run]/t.csv: no such file",
            id="brackets-in-a-path",
        ),
    ],
)  # fmt: skip
def test_bad_inputs_exit_2_naming_the_problem(
    tmp_path: Path, args: list[str], files: dict[str, str], message: str
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    out = tmp_path / "out.json"
    res = runner.invoke(app, ["sim", *(a.format(dir=tmp_path) for a in args), "--json", str(out)])
    assert res.exit_code == 2, res.output
    assert res.stderr.startswith("error: ")
    assert message.format(dir=tmp_path) in res.stderr
    assert not out.exists()
