"""The dashboard under `hermes serve --ray`: every ingress replica serves the page as the
single-process gateway does (same files, same security headers, open to anyone), and the state
it polls is the scheduler's, behind the admin key. The replicas and the scheduler core run in
one process here (`hermes.ray_serve.local`); tests/test_ray_serve.py checks the page on Ray."""

from __future__ import annotations

import httpx

from hermes.gateway.config import Backend, GatewayConfig
from hermes.ray_serve.local import LocalRayGateway
from hermes.testing.asgi_thread import serving
from hermes.testing.blocking_upstream import BlockingUpstream
from hermes.testing.gateway_thread import gateway_in_thread

PAGES = ("/dashboard", "/dashboard/dashboard.js", "/dashboard/dashboard.css")
SECURITY = ("content-security-policy", "x-content-type-options", "referrer-policy")


def _config(url: str) -> GatewayConfig:
    backend = Backend(name="u0", url=url, models=["m"], concurrency=1)
    return GatewayConfig(port=0, backends=[backend], admin_key="root", api_key="k")


def _pages(base: str) -> dict[str, tuple[int, bytes, tuple[str | None, ...]]]:
    out = {}
    for path in PAGES:
        r = httpx.get(base + path)
        out[path] = (r.status_code, r.content, tuple(r.headers.get(h) for h in SECURITY))
    return out


def test_each_ingress_replica_serves_the_dashboard_as_the_gateway_does() -> None:
    up = BlockingUpstream(is_open=True)
    with serving(up.app) as url:
        with gateway_in_thread(_config(url)) as (_, base):
            expected = _pages(base)
        gw = LocalRayGateway(_config(url), replicas=2)
        with serving(gw) as base:
            for _ in range(2):  # the replicas take requests in turn: both serve it
                assert _pages(base) == expected
            assert httpx.get(base + "/", follow_redirects=False).headers["location"] == "/dashboard"
            assert httpx.get(base + "/dashboard/../config.py").status_code == 404
            # The data behind it is the scheduler's, with its key check.
            assert httpx.get(base + "/v1/hermes/state").status_code == 401
            r = httpx.get(base + "/v1/hermes/state", headers={"Authorization": "Bearer root"})
            assert r.status_code == 200
            assert r.json()["upstreams"][0]["name"] == "u0"
    status, page, security = expected["/dashboard"]
    assert status == 200
    assert b"dashboard.js" in page
    assert security[0] is not None
    assert "script-src 'self'" in security[0]
