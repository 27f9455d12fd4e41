"""Valid choices in `--help`, read from the registries when help is shown.

A help text names a list as `{policies}`, `{models}`, ... ; `ChoicesCommand` fills them in
only when it formats help, so that the registries (half a second of imports) are not loaded
by every command just to describe its options.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer.core


def _policies() -> list[str]:
    from hermes.policies.registry import policy_names

    return policy_names()


def _profiles() -> list[str]:
    from hermes.profiles import list_profiles

    return list_profiles()


def _models() -> list[str]:
    # A profile is named MODEL@GPU[-tpN] (hermes/data/profiles).
    return sorted({p.split("@")[0] for p in _profiles()})


def _gpus() -> list[str]:
    return sorted({p.split("@")[1].split("-tp")[0] for p in _profiles() if "@" in p})


def _applications() -> list[str]:
    from hermes.workloads.templates import TEMPLATE_NAMES

    return list(TEMPLATE_NAMES)


def _routers() -> list[str]:
    from hermes.cluster.router import ROUTERS

    return list(ROUTERS)


def _experiments() -> list[str]:
    from hermes.experiments.hermes_paper import EXPERIMENTS

    return list(EXPERIMENTS)


def _bros_policies() -> list[str]:
    from hermes.experiments.bros_sim import POLICIES

    return list(POLICIES)


def _qlm_policies() -> list[str]:
    from hermes.experiments.qlm_paper import POLICIES

    return list(POLICIES)


def _qlm_workloads() -> list[str]:
    from hermes.experiments.qlm_paper import WORKLOADS

    return list(WORKLOADS)


CHOICES: dict[str, Callable[[], list[str]]] = {
    "policies": _policies,
    "profiles": _profiles,
    "models": _models,
    "gpus": _gpus,
    "applications": _applications,
    "routers": _routers,
    "experiments": _experiments,
    "bros_policies": _bros_policies,
    "qlm_policies": _qlm_policies,
    "qlm_workloads": _qlm_workloads,
}


def fill(text: str) -> str:
    """`text` with each `{name}` of CHOICES replaced by its comma-separated values."""
    for name, values in CHOICES.items():
        marker = "{" + name + "}"
        if marker in text:
            text = text.replace(marker, ", ".join(values()))
    return text


class ChoicesCommand(typer.core.TyperCommand):
    """A command whose help (its own and its parameters') may name choices as `{name}`."""

    # Any: typer 0.29 vendors click (typer._click); older releases use click itself.
    def format_help(self, ctx: Any, formatter: Any) -> None:
        if self.help:
            self.help = fill(self.help)
        for param in self.params:
            help_text = getattr(param, "help", None)
            if isinstance(help_text, str) and "{" in help_text:
                param.help = fill(help_text)  # type: ignore[attr-defined]
        super().format_help(ctx, formatter)
