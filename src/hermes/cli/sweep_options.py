"""`--workers` and `--ray-address`: where a bench runs its independent simulations
(`experiments.parallel`). The results do not depend on them; only the wall times do."""

from __future__ import annotations

from typing import Annotated

import typer

from hermes.cli.common import fail

Workers = Annotated[
    int,
    typer.Option(
        "--workers",
        min=0,
        help="Processes that run the bench's simulations at once (0: one per CPU, or per CPU "
        "of the Ray cluster). The results are the same for any number.",
    ),
]
RayAddress = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        help="Run the simulations on Ray's process pool: 'local' starts a Ray here, 'auto' "
        "or HOST:PORT joins a running cluster (whose nodes have hermes installed).",
    ),
]


def checked_ray_address(address: str | None) -> str | None:
    if address is not None and not address.strip():
        raise fail("--ray-address: expected local, auto or HOST:PORT, got ''")
    if address is not None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise fail("--ray-address needs Ray: install hermes-sched[ray]") from None
    return address
