"""An emulated engine as a server: the app for a list of model names (`emulated_app`), and
serving it on a port until a signal stops it (`serve`, behind `hermes emulate`), so that an
upstream can be killed, stalled (SIGSTOP) and restarted like a real one."""

from __future__ import annotations

import socket
from collections.abc import Collection, Sequence

import uvicorn
from starlette.applications import Starlette

from hermes.emulator.app import emulator_app
from hermes.emulator.engine import EmulatedEngine
from hermes.engine.engine_config import DEFAULT_SWAP_BYTES_PER_S, EngineConfig
from hermes.profiles import load_profile

# A LoRA adapter loads in ~370 ms (docs/calibration.md).
LORA_LOAD_S = 0.37


def emulated_app(
    models: Sequence[str],
    *,
    profile: str = "llama-2-7b",
    gpu: str = "a100",
    max_num_seqs: int = 256,
    time_scale: float = 1.0,
    adapters: Collection[str] = (),
) -> Starlette:
    """One emulated engine (`profile` on `gpu`) serving `models`; those in `adapters` are
    LoRA adapters, served once loaded at run time."""
    cost = load_profile(profile, gpu, None)
    engine = EmulatedEngine(cost, EngineConfig(max_num_seqs=max_num_seqs), time_scale=time_scale)
    # Waking from sleep level 1 copies the weights back from CPU memory, each GPU its shard
    # over its own PCIe link.
    wake_s = cost.weight_bytes / cost.tp / DEFAULT_SWAP_BYTES_PER_S * time_scale
    return emulator_app(
        dict.fromkeys([m for m in models if m not in adapters], engine),
        wake_s=wake_s,
        lora_load_s=LORA_LOAD_S * time_scale,
    )


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket listening on `host:port`."""
    # IPPROTO_TCP, not the default 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets
    # whose proto says TCP, and accepted sockets inherit it; without it a response written in
    # two parts waits ~40 ms for the client's delayed ACK.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def serve(app: Starlette, sock: socket.socket, log_level: str = "warning") -> None:
    """Serve `app` on `sock` until SIGINT or SIGTERM (uvicorn's own handlers)."""
    config = uvicorn.Config(app, log_level=log_level, lifespan="on", access_log=False)
    await uvicorn.Server(config).serve(sockets=[sock])
