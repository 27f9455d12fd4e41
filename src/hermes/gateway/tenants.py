"""Tenants: who a bearer token says the caller is, and what that caller may do.

A key of `api_keys` names a tenant. Its applications live in a namespace of their own: the
gateway keys them as `<name>/<x-hermes-app-id>`, so two tenants sending the same id never share
an application (its stages, its run, what is learned from it), and no tenant can report events
for or finish another's. Per key, `allow_slo_classes` and `min_deadline_ms` bound how far ahead
of others its calls may ask to go; a call that asks for more gets 403 saying why.

The single `api_key` of older configs still works: a caller with it (or with no key at all,
when none is configured) is unscoped and unrestricted, as before. The `admin_key` is unscoped
too: on /v1/apps/* it names applications by their full id (`<name>/<id>` for a tenant's).
Keys are compared in constant time (`hmac.compare_digest`), every configured key each time, and
the `Bearer` scheme in any case.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass, replace
from typing import Literal

from pydantic import Field, model_validator
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import Scope

from hermes.config_base import StrictModel
from hermes.gateway.context import CallContext
from hermes.types import SloClass

_TENANT = "hermes_tenant"  # where the caller is kept in the ASGI scope's state
TENANT_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"  # no '/': it separates name and app id


_ALL_CLASSES: tuple[SloClass, ...] = ("rt", "be")


class KeyLimitError(Exception):
    """The caller's key does not allow what the call asks for; the message says why."""


class ApiKey(StrictModel):
    """One tenant's key: what its calls may ask for."""

    name: str = Field(
        pattern=f"^{TENANT_NAME}$",
        description="the tenant: its applications are keyed '<name>/<x-hermes-app-id>'",
    )
    key: str = Field(min_length=1, description="what its clients send: Authorization: Bearer <key>")
    allow_slo_classes: list[SloClass] = Field(
        default_factory=lambda: list(_ALL_CLASSES),
        description="the SLO classes its calls may use (a model's default class included); "
        "others get 403",
    )
    min_deadline_ms: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="the tightest x-hermes-deadline-ms its calls and events may ask for; "
        "tighter ones get 403 (null: any)",
    )

    @model_validator(mode="after")
    def _classes(self) -> ApiKey:
        if not self.allow_slo_classes:
            raise ValueError("allow_slo_classes: at least one class ('rt' or 'be')")
        return self


@dataclass(frozen=True, slots=True)
class Tenant:
    """The caller: `name` None for an unscoped one (the legacy `api_key`, the admin, anyone
    when no key is configured)."""

    name: str | None
    allow_slo_classes: frozenset[SloClass] = frozenset(_ALL_CLASSES)
    min_deadline_ms: float | None = None

    def app_id(self, app_id: str) -> str:
        """The gateway's key for the caller's application `app_id`."""
        return app_id if self.name is None else f"{self.name}/{app_id}"

    def admit(self, ctx: CallContext, slo_class: SloClass | None) -> CallContext:
        """`ctx` in the caller's namespace, if its key allows SLO class `slo_class` (None:
        none asked) and its deadline; else KeyLimitError."""
        if slo_class is not None and slo_class not in self.allow_slo_classes:
            allowed = ", ".join(sorted(self.allow_slo_classes))
            raise KeyLimitError(
                f"key {self.name!r} may not use SLO class {slo_class!r} (it may use: "
                f"{allowed}); send x-hermes-slo-class with one of those"
            )
        low = self.min_deadline_ms
        if low is not None and ctx.deadline_ms is not None and ctx.deadline_ms < low:
            raise KeyLimitError(
                f"key {self.name!r} may not ask for a deadline under {low:g} ms "
                f"(x-hermes-deadline-ms: {ctx.deadline_ms:g})"
            )
        if ctx.app_id is None or self.name is None:
            return ctx
        return replace(ctx, app_id=self.app_id(ctx.app_id))


ANYONE = Tenant(None)
Route = Literal["calls", "apps", "metrics", "admin"]


class Keyring:
    """The configured keys, and which of them each kind of route takes.

    - calls (completions, /v1/models): a tenant's key, or the legacy `api_key`; open when
      neither is configured;
    - apps (/v1/apps/*): a tenant's key (scoped to its applications), the `admin_key`, or the
      legacy `api_key` when there is no admin key; open when none is configured;
    - metrics: any configured key, unless `metrics_public` (or no key is configured);
    - admin (/v1/hermes/state: every tenant's applications): the `admin_key`, or the legacy
      `api_key` when there is no admin key; open when no key is configured; closed to all
      when only tenants' keys are (a tenant must not see another's applications).
    """

    def __init__(
        self,
        api_keys: list[ApiKey],
        api_key: str | None = None,
        admin_key: str | None = None,
        metrics_public: bool = False,
    ) -> None:
        tenants = [
            (k.key.encode(), Tenant(k.name, frozenset(k.allow_slo_classes), k.min_deadline_ms))
            for k in api_keys
        ]
        legacy = [] if api_key is None else [(api_key.encode(), ANYONE)]
        admin = [] if admin_key is None else [(admin_key.encode(), ANYONE)]
        # None: the route is open.
        self._keys: dict[Route, list[tuple[bytes, Tenant]] | None] = {
            "calls": (tenants + legacy) or None,
            "apps": (tenants + (admin or legacy)) or None,
            "metrics": None if metrics_public else (tenants + legacy + admin) or None,
            "admin": (admin or legacy) or (None if not tenants else []),
        }

    def caller(self, route: Route, authorization: str | None) -> Tenant | None:
        """Who sent `authorization` on a `route`; None if it is not a key that route takes."""
        keys = self._keys[route]
        if keys is None:
            return ANYONE
        token = bearer_token(authorization)
        if token is None:
            return None
        found = None
        for key, tenant in keys:  # every key compared, so the time says nothing of which
            if hmac.compare_digest(token, key) and found is None:
                found = tenant
        return found


_SCHEME = re.compile(r"bearer[ \t]+", re.IGNORECASE)


def bearer_token(authorization: str | None) -> bytes | None:
    """The token of an `Authorization: Bearer <token>` header (scheme in any case)."""
    if authorization is None:
        return None
    m = _SCHEME.match(authorization)
    if m is None:
        return None
    token = authorization[m.end() :].strip()
    return token.encode() if token else None


def set_caller(scope: Scope, tenant: Tenant) -> None:
    scope.setdefault("state", {})[_TENANT] = tenant


def caller_of(request: Request) -> Tenant:
    """The caller that the auth middleware found (anyone, where no route checked a key)."""
    state = request.scope.get("state") or {}
    tenant = state.get(_TENANT, ANYONE)
    assert isinstance(tenant, Tenant)
    return tenant


def authorization(scope: Scope) -> str | None:
    return Headers(scope=scope).get("authorization")
