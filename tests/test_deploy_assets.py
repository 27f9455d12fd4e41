"""The Grafana board (deploy/grafana/hermes.json) and the Prometheus alert rules
(deploy/prometheus/alerts.yaml) name only metrics, and group only by labels, that a running
gateway exports: checked against a real scrape, parsed with prometheus_client's parser."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from hermes.gateway.config import emulated_default
from hermes.testing.gateway_thread import gateway_in_thread

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "deploy" / "grafana" / "hermes.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
OPERATING = ROOT / "docs" / "operating.md"
METRIC = re.compile(r"\bhermes_[a-z0-9_]+")
BY = re.compile(r"\bby\s*\(([^)]*)\)")
# Labels Prometheus adds to every scraped series, and the histograms' bucket label.
TARGET_LABELS = {"instance", "job", "le"}
_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("_count", "_sum", ""),
    "info": ("_info",),
}


def exported(text: str) -> dict[str, set[str]]:
    """Every series name a scrape exposes, with the label names seen on its samples."""
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for suffix in _SUFFIXES.get(family.type, ("",)):
            names.setdefault(family.name + suffix, set())
        for s in family.samples:
            names.setdefault(s.name, set()).update(s.labels)
    return names


@pytest.fixture(scope="module")
def scrape() -> Iterator[dict[str, set[str]]]:
    """A gateway's /metrics after some traffic: an application run and finished, a call
    refused (labelled series appear with their first sample)."""
    with gateway_in_thread(emulated_default(port=0, time_scale=0.05)) as (_, base):
        body = {"model": "llama-2-7b", "messages": [{"role": "user", "content": "q"}]}
        tags = {"x-hermes-app-id": "a", "x-hermes-app-type": "t", "x-hermes-stage": "s"}
        url = base + "/v1/chat/completions"
        assert httpx.post(url, json={**body, "max_tokens": 2}, headers=tags).status_code == 200
        streamed = {**body, "max_tokens": 2, "stream": True}
        assert httpx.post(url, json=streamed, headers=tags).status_code == 200
        assert httpx.post(base + "/v1/apps/a/finish").status_code == 200
        assert httpx.post(url, json={"model": "nope", "messages": []}).status_code in (400, 404)
        yield exported(httpx.get(base + "/metrics").text)


def grafana_exprs(board: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    for var in board["templating"]["list"]:
        if var.get("type") == "query":
            exprs.append(var["definition"])
    return exprs


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [r for g in doc["groups"] for r in g["rules"]]


def unknown(exprs: list[str], names: dict[str, set[str]]) -> list[str]:
    """What `exprs` name that the scrape does not have: metrics, and `by (...)` labels that
    none of the metrics in the expression was seen with."""
    problems = []
    for e in exprs:
        used = set(METRIC.findall(e))
        problems += [f"{m} (in {e!r})" for m in sorted(used - names.keys())]
        labels = set(TARGET_LABELS).union(*(names.get(m, set()) for m in used))
        seen = all(names.get(m) for m in used)  # labelled series without samples: unknown
        for group in BY.findall(e):
            for label in (x.strip() for x in group.split(",") if x.strip()):
                if seen and label not in labels:
                    problems.append(f"label {label} (in {e!r})")
        if e.count("(") != e.count(")"):
            problems.append(f"unbalanced parentheses in {e!r}")
    return problems


def test_the_grafana_board_uses_only_exported_metrics(scrape: dict[str, set[str]]) -> None:
    board = json.loads(GRAFANA.read_text(encoding="utf-8"))
    exprs = grafana_exprs(board)
    assert len(exprs) >= 20
    assert unknown(exprs, scrape) == []
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for p in board["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0, p["title"]
        assert g["x"] + g["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["targets"], p["title"]
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert "hermes:" not in GRAFANA.read_text(encoding="utf-8")


def test_the_alert_rules_use_only_exported_metrics(scrape: dict[str, set[str]]) -> None:
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for r in rules:
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, r["alert"]
        assert r["labels"]["severity"] in ("warning", "critical")
        assert r["annotations"]["summary"]
        assert re.fullmatch(r"\d+[smh]", r.get("for", "0s")), r["alert"]
    assert unknown([r["expr"] for r in rules], scrape) == []
    covered = " ".join(r["expr"] for r in rules)
    for must in ("hermes_upstream_up", "hermes_num_requests_waiting", "finished_reason"):
        assert must in covered
    assert "hermes_time_to_first_token_seconds_bucket" in covered


def test_the_check_catches_a_metric_or_label_the_gateway_lacks(
    scrape: dict[str, set[str]],
) -> None:
    assert scrape["hermes_upstream_up"] == {"upstream"}
    assert "hermes_build_info" in scrape
    assert not any(n.endswith("_created") for n in scrape)
    bad = unknown(
        [
            "rate(hermes_requests_total[5m])",
            "sum by (model) (hermes_upstream_up)",
            "sum(rate(hermes_prompt_tokens_total[5m])",
        ],
        scrape,
    )
    assert len(bad) == 3
    assert bad[0].startswith("hermes_requests_total")
    assert bad[1].startswith("label model")
    assert bad[2].startswith("unbalanced")


def test_every_exported_metric_is_in_the_operators_list(scrape: dict[str, set[str]]) -> None:
    """docs/operating.md lists every series family the gateway exports (a row may name a
    family by its prefix: `hermes_prewarm_*`)."""
    text = OPERATING.read_text(encoding="utf-8")
    named = set(re.findall(r"`(hermes_[a-z0-9_]+)(?:\{[^`]*\})?`", text))
    prefixes = tuple(re.findall(r"`(hermes_[a-z0-9_]+_)\*", text))
    bases = {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in scrape}
    missing = sorted(
        b
        for b in bases
        if b not in named and f"{b}_total" not in named and not b.startswith(prefixes)
    )
    assert missing == []
