"""The gateway as a Ray Serve application: Ray joined (or started in-process), the scheduler
actor created, `ingress_replicas` replicas of the ingress deployment serving the OpenAI routes
behind Ray Serve's HTTP proxy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray
from ray import serve
from starlette.types import ASGIApp

from hermes.gateway.config import GatewayConfig, gateway_config_from_dict
from hermes.ray_serve.actor import ActorRemote, start_scheduler
from hermes.ray_serve.ingress import Ingress


@serve.deployment(logging_config={"enable_access_log": False, "log_level": "WARNING"})
@serve.ingress()
class HermesIngress:
    """One ingress replica; it finds the scheduler actor by name."""

    def __init__(self, config: dict[str, Any], scheduler: str) -> None:
        cfg = gateway_config_from_dict(config, "the ingress replica's config")
        handle = ray.get_actor(scheduler, namespace=cfg.ray.namespace)
        self.ingress = Ingress(cfg, ActorRemote(handle), watch_disconnects=False)

    def __serve_build_asgi_app__(self) -> ASGIApp:
        return self.ingress.app


@dataclass(frozen=True, slots=True)
class RayGateway:
    url: str
    app_name: str
    scheduler: Any  # the actor's handle


def connect(config: GatewayConfig) -> None:
    """Join the configured cluster, or start a local Ray in-process; a no-op if Ray is up."""
    if ray.is_initialized():
        return
    opts = config.ray
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
    return RayGateway(f"http://{config.host}:{config.port}", app_name, handle)


def undeploy(gateway: RayGateway) -> None:
    """Take the application down, then the scheduler (what waits there gets 503, what is in
    progress is stored as unfinished runs)."""
    serve.delete(gateway.app_name)
    try:
        ray.get(gateway.scheduler.stop.remote(), timeout=60)
    finally:
        ray.kill(gateway.scheduler, no_restart=True)
