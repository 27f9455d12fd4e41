"""Tenants kept apart: each key of `api_keys` has its own application namespace, the SLO
classes and the tightest deadline it may ask for (403 beyond them), and /metrics needs a key.
Keys are compared in constant time, the `Bearer` scheme in any case; the single `api_key` of
older configs works as before."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from hermes.config_base import ConfigError
from hermes.core.runs import AppRun
from hermes.gateway import tenants
from hermes.gateway.config import gateway_config_from_dict
from hermes.gateway.server import Gateway
from test_gateway_server import FakeUpstream, fake, gateway  # noqa: F401

CHAT = "/v1/chat/completions"
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
KEYS = [
    {"name": "alice", "key": "alice-key"},
    {"name": "bob", "key": "bob-key", "allow_slo_classes": ["be"], "min_deadline_ms": 5000},
]
ALICE = {"Authorization": "Bearer alice-key"}
BOB = {"Authorization": "Bearer bob-key"}
ADMIN = {"Authorization": "Bearer root"}


@pytest.fixture
def two(fake: tuple[FakeUpstream, str]) -> Iterator[tuple[Gateway, str, list[AppRun]]]:  # noqa: F811
    _, url = fake
    runs: list[AppRun] = []
    with gateway(url, runs, api_keys=KEYS, admin_key="root") as (gw, base):
        yield gw, base, runs


def call(base: str, key: dict[str, str], **headers: str) -> httpx.Response:
    return httpx.post(base + CHAT, json=BODY, headers={**key, **headers}, timeout=30)


def tagged(app_id: str, stage: str) -> dict[str, str]:
    return {"x-hermes-app-id": app_id, "x-hermes-app-type": "agent", "x-hermes-stage": stage}


def test_two_tenants_never_share_an_application(two: tuple[Gateway, str, list[AppRun]]) -> None:
    gw, base, runs = two
    assert call(base, ALICE, **tagged("x", "plan")).status_code == 200
    # Bob sends Alice's id: he gets an application of his own, not hers.
    assert call(base, BOB, **tagged("x", "attack")).status_code == 200
    assert set(gw.tracker.apps) == {"alice/x", "bob/x"}
    # Bob cannot finish (or report events for) Alice's application: his "x" is his own.
    assert httpx.post(base + "/v1/apps/x/finish", headers=BOB).status_code == 200
    assert httpx.post(base + "/v1/apps/x/finish", headers=BOB).status_code == 404
    assert "alice/x" in gw.tracker.apps
    ev = {"event": "stage_started", "stage": "search"}
    assert httpx.post(base + "/v1/apps/x/events", json=ev, headers=ALICE).status_code == 200
    assert httpx.post(base + "/v1/apps/x/finish", headers=ALICE).status_code == 409  # her tool
    ev["event"] = "stage_finished"
    assert httpx.post(base + "/v1/apps/x/events", json=ev, headers=ALICE).status_code == 200
    assert httpx.post(base + "/v1/apps/x/finish", headers=ALICE).status_code == 200
    by_id = {r.run_id: [s.name for s in r.stages] for r in runs}
    assert by_id == {"bob/x": ["attack"], "alice/x": ["plan", "search"]}


def test_the_admin_names_a_tenants_application_by_its_full_id(
    two: tuple[Gateway, str, list[AppRun]],
) -> None:
    gw, base, _ = two
    assert call(base, ALICE, **tagged("a/b", "plan")).status_code == 200  # an id with '/'
    assert "alice/a/b" in gw.tracker.apps
    assert httpx.post(base + "/v1/apps/a/b/finish", headers=ADMIN).status_code == 404
    assert httpx.post(base + "/v1/apps/alice/a/b/finish", headers=ADMIN).status_code == 200
    assert not gw.tracker.apps


def test_a_key_may_not_ask_for_a_class_or_deadline_beyond_its_own(
    two: tuple[Gateway, str, list[AppRun]],
) -> None:
    gw, base, _ = two
    r = call(base, BOB, **{"x-hermes-slo-class": "rt"})
    assert r.status_code == 403, r.text
    err = r.json()["error"]
    assert (err["type"], err["code"]) == ("permission_error", 403)
    assert err["message"].startswith("key 'bob' may not use SLO class 'rt' (it may use: be)")
    assert call(base, BOB, **{"x-hermes-slo-class": "be"}).status_code == 200
    r = call(base, BOB, **{"x-hermes-app-id": "d", "x-hermes-deadline-ms": "100"})
    assert r.status_code == 403
    assert "deadline under 5000 ms" in r.json()["error"]["message"]
    assert call(base, BOB, **{"x-hermes-app-id": "d", "x-hermes-deadline-ms": "6000"}).is_success
    assert call(base, ALICE, **{"x-hermes-slo-class": "rt"}).status_code == 200  # hers to use
    ev = {"event": "stage_started", "stage": "s", "deadline_ms": 10}  # events are bound too
    r = httpx.post(base + "/v1/apps/e/events", json=ev, headers=BOB)
    assert r.status_code == 403
    assert "bob/e" not in gw.tracker.apps
    assert gw.metrics.rejections.labels("403")._value.get() == 2  # the two calls


def test_a_models_default_class_counts_as_asked(fake: tuple[FakeUpstream, str]) -> None:  # noqa: F811
    _, url = fake
    keys = [{"name": "bob", "key": "bob-key", "allow_slo_classes": ["be"]}]
    with gateway(url, api_keys=keys, model_slo_class={"m": "rt"}) as (_, base):
        r = call(base, BOB)
        assert r.status_code == 403
        assert "'rt'" in r.json()["error"]["message"]
        assert call(base, BOB, **{"x-hermes-slo-class": "be"}).status_code == 200


def test_metrics_need_a_key_unless_public(fake: tuple[FakeUpstream, str]) -> None:  # noqa: F811
    _, url = fake
    with gateway(url, api_keys=KEYS, admin_key="root") as (_, base):
        assert httpx.get(base + "/metrics").status_code == 401
        assert httpx.get(base + "/metrics", headers=ALICE).status_code == 200
        assert httpx.get(base + "/metrics", headers=ADMIN).status_code == 200
        assert httpx.get(base + "/healthz").status_code == 200  # for load balancers
    with gateway(url, api_key="k") as (_, base):
        assert httpx.get(base + "/metrics").status_code == 401
    with gateway(url, api_key="k", metrics_public=True) as (_, base):
        assert httpx.get(base + "/metrics").status_code == 200
    with gateway(url) as (_, base):
        assert httpx.get(base + "/metrics").status_code == 200  # no key anywhere


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_in_any_case(two: tuple[Gateway, str, list[AppRun]], scheme: str) -> None:
    _, base, _ = two
    assert call(base, {"Authorization": f"{scheme} alice-key"}).status_code == 200


@pytest.mark.parametrize("header", ["Basic alice-key", "alice-key", "Bearer", "Bearer  wrong"])
def test_anything_but_a_known_bearer_key_is_refused(
    two: tuple[Gateway, str, list[AppRun]], header: str
) -> None:
    _, base, _ = two
    assert call(base, {"Authorization": header}).status_code == 401


def test_keys_are_compared_in_constant_time(
    two: tuple[Gateway, str, list[AppRun]], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, base, _ = two
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(tenants.hmac, "compare_digest", spy)  # type: ignore[attr-defined]
    assert call(base, ALICE).status_code == 200
    # Every key a call route takes is compared, the match first or not.
    assert sorted(b for _, b in compared) == [b"alice-key", b"bob-key"]


def test_the_single_api_key_works_as_before(fake: tuple[FakeUpstream, str]) -> None:  # noqa: F811
    _, url = fake
    with gateway(url, api_key="k") as (gw, base):
        key = {"Authorization": "Bearer k"}
        assert call(base, key, **tagged("x", "plan")).status_code == 200
        assert set(gw.tracker.apps) == {"x"}  # unscoped
        assert call(base, key, **{"x-hermes-slo-class": "rt"}).status_code == 200
        assert httpx.post(base + "/v1/apps/x/finish", headers=key).status_code == 200


@pytest.mark.parametrize(
    ("keys", "extra", "message"),
    [
        ([{"name": "a", "key": "1"}, {"name": "a", "key": "2"}], {}, "names must be unique"),
        ([{"name": "a", "key": "1"}, {"name": "b", "key": "1"}], {}, "each key must differ"),
        ([{"name": "a", "key": "1"}], {"admin_key": "1"}, "each key must differ"),
        ([{"name": "a/b", "key": "1"}], {}, "api_keys[0].name"),
        ([{"name": "a", "key": "1", "allow_slo_classes": []}], {}, "at least one class"),
        ([{"name": "a", "key": "1", "allow_slo_classes": ["gold"]}], {}, "allow_slo_classes"),
        ([{"name": "a", "key": "1", "min_deadline_ms": 0}], {}, "min_deadline_ms"),
        ([{"name": "a", "key": ""}], {}, "api_keys[0].key"),
    ],
)
def test_bad_tenant_configs_are_refused(
    keys: list[dict[str, Any]], extra: dict[str, Any], message: str
) -> None:
    data = {"backends": [{"name": "b", "url": "http://x", "models": ["m"]}], "api_keys": keys}
    with pytest.raises(ConfigError) as e:
        gateway_config_from_dict({**data, **extra}, "gw.yaml")
    assert message in str(e.value)
