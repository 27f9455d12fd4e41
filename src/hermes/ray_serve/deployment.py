"""The gateway as a Ray Serve application: Ray joined (or started in-process), the scheduler
actor created, `ingress_replicas` replicas of the ingress deployment serving the OpenAI routes
behind Ray Serve's HTTP proxy, and with `direct_ingress` each on a port of its own as well."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import ray
from ray import serve
from starlette.types import ASGIApp

from hermes.gateway.config import GatewayConfig, gateway_config_from_dict
from hermes.ray_serve.actor import ActorRemote, start_scheduler
from hermes.ray_serve.emulator_deployment import deploy_emulated
from hermes.ray_serve.ingress import Ingress
from hermes.ray_serve.link import SchedulerRemote
from hermes.ray_serve.socket_link import SocketRemote


@serve.deployment(logging_config={"enable_access_log": False, "log_level": "WARNING"})
@serve.ingress()
class HermesIngress:
    """One ingress replica; it finds the scheduler actor by name."""

    def __init__(self, config: dict[str, Any], scheduler: str) -> None:
        cfg = gateway_config_from_dict(config, "the ingress replica's config")
        handle = ray.get_actor(scheduler, namespace=cfg.ray.namespace)
        actor = ActorRemote(handle)
        remote: SchedulerRemote = actor
        if cfg.ray.scheduler_link == "tcp":  # steps and polls on the actor's own socket
            remote = SocketRemote(actor.address, actor.http)
        self.ingress = Ingress(
            cfg,
            remote,
            watch_disconnects=False,
            # Backends that are Serve deployments (serve://APP/DEPLOYMENT): by handle.
            serve_handles=lambda app, name: serve.get_deployment_handle(name, app),
        )

    def __serve_build_asgi_app__(self) -> ASGIApp:
        return self.ingress.app


@dataclass(frozen=True, slots=True)
class RayGateway:
    url: str
    app_name: str
    scheduler: Any  # the actor's handle
    replica_urls: tuple[str, ...] = field(default=())  # with direct_ingress: one per replica
    engines: tuple[str, ...] = field(default=())  # emulated serve:// applications it started


# Ray Serve's direct ingress: each ingress replica serves HTTP itself, on a port of its own
# (30000-31000), besides the proxy. Serve reads these in the processes Ray starts (its
# controller, the replicas), which take the environment of the process that starts Ray.
DIRECT_INGRESS_ENV = {
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
    # A stopped replica keeps its port this long for a load balancer to notice (30 s by
    # default); with none in front, it goes at once.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
}


# Ray Serve's settings for a Ray that `hermes` starts itself. Serve's controller kills a proxy
# that is not ready 5 s after it is created, and `serve.start` then fails; a fresh worker
# importing Serve and uvicorn takes longer than that on a busy 2-core machine.
LOCAL_ENV = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60"}


@contextlib.contextmanager
def _environment(extra: dict[str, str]) -> Iterator[None]:
    """`extra` set (what is set already wins) while Ray starts, restored after."""
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update({k: v for k, v in extra.items() if saved[k] is None})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)


@contextlib.contextmanager
def local_ray_settings(direct_ingress: bool = False) -> Iterator[None]:
    """Serve's settings for a Ray started here (LOCAL_ENV, and DIRECT_INGRESS_ENV where
    asked), in the environment while it starts: `with local_ray_settings(): ray.init(...)`."""
    with _environment(LOCAL_ENV | (DIRECT_INGRESS_ENV if direct_ingress else {})):
        yield


def connect(config: GatewayConfig) -> None:
    """Join the configured cluster, or start a local Ray in-process; a no-op if Ray is up."""
    if ray.is_initialized():
        return
    opts = config.ray
    local = opts.address is None
    with local_ray_settings(opts.direct_ingress) if local else contextlib.nullcontext():
        ray.init(
            address=opts.address,
            num_cpus=opts.num_cpus if opts.address is None else None,
            namespace=opts.namespace,
            include_dashboard=False,
            log_to_driver=False,
        )


def deploy(config: GatewayConfig, app_name: str = "hermes") -> RayGateway:
    """The gateway on Ray Serve at `config.host:config.port` (Serve's proxy: its address is
    set once, by the first deployment of a Ray session). Backends must have URLs."""
    if config.port == 0:
        raise ValueError("hermes serve --ray needs a fixed port for Ray Serve's proxy, not 0")
    for b in config.backends:
        if not b.url:
            raise ValueError(f"backend {b.name!r} has no URL: start its engine first")
    connect(config)
    serve.start(http_options={"host": config.host, "port": config.port})
    engines = tuple(deploy_emulated(config))  # emulated backends that are Serve deployments
    scheduler = f"{app_name}-scheduler"
    handle = start_scheduler(config, scheduler)
    opts = config.ray
    app = HermesIngress.options(  # type: ignore[attr-defined]
        num_replicas=opts.ingress_replicas,
        ray_actor_options={"num_cpus": opts.replica_num_cpus},
        # Calls wait in the scheduler's queue, in policy order, not in Serve's.
        max_ongoing_requests=config.queue_limit,
        max_queued_requests=-1,
    ).bind(config.model_dump(mode="json"), scheduler)
    serve.run(app, name=app_name, route_prefix="/")
    urls = replica_urls(app_name, opts.ingress_replicas, config.host) if opts.direct_ingress else ()
    return RayGateway(f"http://{config.host}:{config.port}", app_name, handle, urls, engines)


def replica_urls(app_name: str, replicas: int, host: str, wait_s: float = 30.0) -> tuple[str, ...]:
    """The HTTP URL of each ingress replica of `app_name` under direct ingress (Serve's
    controller allocates their ports; it has no public call for them yet). Replicas listen
    on Serve's `host`: its node's address when that is every interface, else `host`."""
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    if client is None:
        raise ValueError("direct ingress: Ray Serve is not running")
    controller = client._controller
    deadline = time.monotonic() + wait_s
    while True:
        groups = ray.get(controller.get_target_groups.remote(app_name))
        urls = tuple(
            sorted(
                f"http://{t.ip if host in ('0.0.0.0', '::') else host}:{t.port}"
                for g in groups
                if str(g.protocol).upper().endswith("HTTP") and g.app_name == app_name
                for t in g.targets
            )
        )
        if len(urls) >= replicas:
            return urls
        if time.monotonic() > deadline:
            raise ValueError(
                f"direct ingress: {len(urls)} of {replicas} ingress replicas serve a port of "
                f"their own after {wait_s:.0f} s; a Ray cluster must be started with "
                "RAY_SERVE_ENABLE_DIRECT_INGRESS=1 (a local Ray started by hermes has it)"
            )
        time.sleep(0.1)


def undeploy(gateway: RayGateway) -> None:
    """Take the application down, then the scheduler (what waits there gets 503, what is in
    progress is stored as unfinished runs)."""
    serve.delete(gateway.app_name)
    try:
        ray.get(gateway.scheduler.stop.remote(), timeout=60)
    finally:
        ray.kill(gateway.scheduler, no_restart=True)
        for engine in gateway.engines:
            serve.delete(engine)
