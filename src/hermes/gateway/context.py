"""The application context a call carries in its `x-hermes-*` headers.

A call without headers is a one-stage application of its own. Bad values are errors that name
the header, the value and what was expected; the server answers them with 400.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

APP_ID = "x-hermes-app-id"
APP_TYPE = "x-hermes-app-type"
STAGE = "x-hermes-stage"
DEADLINE_MS = "x-hermes-deadline-ms"
SLO_CLASS = "x-hermes-slo-class"

# Ids, types and stage names become metric labels and run-file fields: keep them plain.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}")
DEFAULT_STAGE = "llm"


class HeaderError(ValueError):
    """A hermes header has a value it cannot have; the message names it."""


@dataclass(frozen=True, slots=True)
class CallContext:
    app_id: str | None  # None: the call is an application of its own
    app_type: str
    stage: str
    deadline_ms: float | None  # relative to the application's first call
    slo_class: Literal["rt", "be"] | None


def _name(headers: Mapping[str, str], key: str) -> str | None:
    value = headers.get(key)
    if value is None:
        return None
    if not _NAME.fullmatch(value):
        raise HeaderError(
            f"header {key}: {value[:80]!r} is not a name (1-128 of letters, digits, "
            "'_', '.', ':', '/', '-', starting with a letter or digit)"
        )
    return value


def parse_context(headers: Mapping[str, str]) -> CallContext:
    """The call's context from its headers (keys in lower case, as ASGI gives them)."""
    app_id = _name(headers, APP_ID)
    app_type = _name(headers, APP_TYPE)
    stage = _name(headers, STAGE)
    deadline: float | None = None
    raw = headers.get(DEADLINE_MS)
    if raw is not None:
        try:
            deadline = float(raw)
        except ValueError:
            deadline = math.nan
        if not (math.isfinite(deadline) and deadline > 0):
            raise HeaderError(f"header {DEADLINE_MS}: {raw[:40]!r} is not a positive number")
    slo = headers.get(SLO_CLASS)
    if slo is not None and slo not in ("rt", "be"):
        raise HeaderError(f"header {SLO_CLASS}: {slo[:40]!r} is not 'rt' or 'be'")
    if app_id is None and (app_type is not None or stage is not None):
        raise HeaderError(f"headers {APP_TYPE} and {STAGE} need {APP_ID}")
    return CallContext(
        app_id,
        app_type or "default",
        stage or DEFAULT_STAGE,
        deadline,
        slo,  # type: ignore[arg-type]  # checked above
    )
