"""The application context a call carries in its `x-hermes-*` headers.

A call without headers is a one-stage application of its own. Bad values are errors that name
the header, the value and what was expected; the server answers them with 400.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from hermes.types import SloClass

APP_ID = "x-hermes-app-id"
APP_TYPE = "x-hermes-app-type"
STAGE = "x-hermes-stage"
DEADLINE_MS = "x-hermes-deadline-ms"
SLO_CLASS = "x-hermes-slo-class"
STAGE_INDEX = "x-hermes-stage-index"

# Ids, types and stage names become metric labels and run-file fields: keep them plain.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}")
# Digits only (no sign, space or underscore, which int() would take); six are plenty.
_INDEX = re.compile(r"[0-9]{1,6}")
DEFAULT_STAGE = "llm"


class HeaderError(ValueError):
    """A hermes header has a value it cannot have; the message names it."""


@dataclass(frozen=True, slots=True)
class CallContext:
    app_id: str | None  # None: the call is an application of its own
    app_type: str
    stage: str
    deadline_ms: float | None  # relative to the application's first call
    slo_class: SloClass | None
    # The stage's 0-based position in the application (tool stages count): it tells two
    # consecutive stages of the same name apart. None: the tracker goes by name alone.
    stage_index: int | None = None


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


def _index(headers: Mapping[str, str]) -> int | None:
    raw = headers.get(STAGE_INDEX)
    if raw is None:
        return None
    if not _INDEX.fullmatch(raw):
        raise HeaderError(
            f"header {STAGE_INDEX}: {raw[:40]!r} is not a non-negative integer (1-6 digits)"
        )
    return int(raw)


def parse_context(headers: Mapping[str, str]) -> CallContext:
    """The call's context from its headers (keys in lower case, as ASGI gives them)."""
    app_id = _name(headers, APP_ID)
    app_type = _name(headers, APP_TYPE)
    stage = _name(headers, STAGE)
    stage_index = _index(headers)
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
    if app_id is None and (app_type, stage, stage_index) != (None, None, None):
        raise HeaderError(f"headers {APP_TYPE}, {STAGE} and {STAGE_INDEX} need {APP_ID}")
    return CallContext(
        app_id,
        app_type or "default",
        stage or DEFAULT_STAGE,
        deadline,
        slo,  # type: ignore[arg-type]  # checked above
        stage_index,
    )


def event_context(app_id: str, body: Mapping[str, object]) -> CallContext:
    """The context of an application first seen through a tool event, from the event's JSON
    body: `app_type`, `deadline_ms` and `slo_class` are checked as their headers are."""
    headers = {APP_ID: app_id, APP_TYPE: str(body.get("app_type", "default"))}
    for key, header in (("deadline_ms", DEADLINE_MS), ("slo_class", SLO_CLASS)):
        value = body.get(key)
        if value is not None:
            headers[header] = str(value)
    return parse_context(headers)
