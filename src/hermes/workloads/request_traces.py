"""Request traces: the Azure LLM inference trace 2023 (CSV) and the Mooncake trace (JSON Lines).

Both readers share one contract:

* Rows come back in file order as ``TraceRequest``; ``arrival_s`` is seconds since the first
  row's timestamp, so the first request arrives at 0.
* Both sources are logs written in time order, so both formats *require* non-decreasing
  timestamps (equal ones are fine: Mooncake has many). A row earlier than the one before it
  means a spliced or damaged file and raises instead of being re-sorted, so the returned
  list is always sorted by arrival as well as in file order.
* Every malformed input raises ``TraceFormatError`` naming the file, the line and the fault;
  nothing is dropped, clipped or coerced. Blank lines carry no request and are skipped.
  Token counts must be plain non-negative integers (zero is allowed, negative is not).
* A missing or unreadable file raises the usual ``OSError``: that is not a format fault.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

__all__ = [
    "AZURE_COLUMNS",
    "TraceFormatError",
    "TraceRequest",
    "read_azure_csv",
    "read_mooncake_jsonl",
    "read_trace",
]

AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
_MOONCAKE_KEYS = ("timestamp", "input_length", "output_length", "hash_ids")


class TraceFormatError(ValueError):
    """A trace file breaks its format; ``path:line: problem``."""

    def __init__(self, path: str | Path, line: int, problem: str) -> None:
        self.path = str(path)
        self.line = line
        self.problem = problem
        super().__init__(f"{self.path}:{line}: {problem}")


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request of a trace: when it arrives and how many tokens it reads and writes.

    ``prefix_blocks`` are the ids of the prompt's fixed-size prefix blocks (Mooncake's
    ``hash_ids``, 512 tokens each); two requests sharing a leading run of ids share that
    prefix, which is what a prefix cache can reuse. Empty when the trace does not say.
    """

    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    prefix_blocks: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not (math.isfinite(self.arrival_s) and self.arrival_s >= 0):
            raise ValueError(f"arrival_s must be finite and >= 0, got {self.arrival_s!r}")
        for name in ("prompt_tokens", "output_tokens"):
            value = getattr(self, name)
            if type(value) is not int:
                raise ValueError(f"{name} must be an int, got {value!r}")
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        # A list here would make the frozen request unhashable and mutable underneath.
        if type(self.prefix_blocks) is not tuple:
            raise ValueError(f"prefix_blocks must be a tuple, got {type(self.prefix_blocks)}")


def read_trace(path: str | Path) -> list[TraceRequest]:
    """Read a trace of either format: by extension (``.csv`` / ``.jsonl``), else by content."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return read_azure_csv(path)
    if suffix in (".jsonl", ".ndjson"):
        return read_mooncake_jsonl(path)
    lineno, first = _first_nonblank_line(path)
    if first.startswith("{"):
        return read_mooncake_jsonl(path)
    if "," in first and AZURE_COLUMNS[0] in first:
        return read_azure_csv(path)
    raise TraceFormatError(
        path,
        lineno,
        "cannot tell the trace format: expected an Azure CSV header "
        f"({','.join(AZURE_COLUMNS)}) or a Mooncake JSON object",
    )


# --- Azure LLM inference trace 2023 -------------------------------------------------------

# Fractional seconds are kept as an integer count of nanoseconds: float seconds since 1 AD
# would lose the trace's 100 ns digit, and datetime keeps only microseconds.
_TIMESTAMP = re.compile(r"(\d{4}-\d{2}-\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?", re.ASCII)
_NS_PER_S = 1_000_000_000


def read_azure_csv(path: str | Path) -> list[TraceRequest]:
    """The Azure LLM inference trace 2023: ``TIMESTAMP,ContextTokens,GeneratedTokens``.

    Timestamps look like ``2023-11-16 18:15:46.6805900`` (naive, one clock for the file);
    up to nine fractional digits are parsed exactly. Columns may come in any order and extra
    columns are ignored; every row must have as many fields as the header.
    """
    path = Path(path)
    text = _read_text(path)
    # newline="": csv itself must see the line ends (quoted fields may span lines).
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: dict[str, int] = {}
    width = i_ts = i_ctx = i_gen = 0
    requests: list[TraceRequest] = []
    day_seconds: dict[str, int] = {}
    first_ns = prev_ns = 0
    prev_line = 0
    try:
        for row in reader:
            lineno = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if not header:
                header = _azure_header(path, lineno, row)
                width = len(row)
                i_ts, i_ctx, i_gen = (header[c] for c in AZURE_COLUMNS)
                continue
            if len(row) != width:
                raise TraceFormatError(
                    path, lineno, f"expected {width} fields like the header, found {len(row)}"
                )
            ns = _timestamp_ns(path, lineno, row[i_ts], day_seconds)
            if not requests:
                first_ns = prev_ns = ns
            elif ns < prev_ns:
                raise TraceFormatError(
                    path,
                    lineno,
                    f"timestamp {row[i_ts].strip()!r} goes backwards (earlier than line "
                    f"{prev_line}); the trace must be in time order",
                )
            prev_ns, prev_line = ns, lineno
            requests.append(
                TraceRequest(
                    (ns - first_ns) / _NS_PER_S,  # exact integers, one correctly rounded division
                    _count(path, lineno, "ContextTokens", row[i_ctx]),
                    _count(path, lineno, "GeneratedTokens", row[i_gen]),
                )
            )
    except csv.Error as e:
        raise TraceFormatError(path, reader.line_num, f"not valid CSV ({e})") from None
    if not header:
        raise TraceFormatError(path, 1, f"empty file: no header ({','.join(AZURE_COLUMNS)})")
    return requests


def _azure_header(path: Path, lineno: int, row: list[str]) -> dict[str, int]:
    names = [name.strip() for name in row]
    index: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in index:
            raise TraceFormatError(path, lineno, f"column {name!r} appears twice in the header")
        index[name] = i
    for column in AZURE_COLUMNS:
        if column not in index:
            raise TraceFormatError(
                path, lineno, f"missing column {column!r} (header has {', '.join(names)})"
            )
    return index


def _timestamp_ns(path: Path, lineno: int, text: str, day_seconds: dict[str, int]) -> int:
    """Nanoseconds since 0001-01-01 00:00:00 for one TIMESTAMP field."""
    m = _TIMESTAMP.fullmatch(text.strip())
    if m is None:
        raise TraceFormatError(
            path,
            lineno,
            f"TIMESTAMP {text!r} is not 'YYYY-MM-DD HH:MM:SS[.fraction]' (up to 9 digits)",
        )
    day, hh, mm, ss, frac = m.groups()
    base = day_seconds.get(day)
    if base is None:  # one calendar check per distinct day, not per row
        try:
            base = date.fromisoformat(day).toordinal() * 86_400
        except ValueError:
            raise TraceFormatError(path, lineno, f"TIMESTAMP {text!r}: no such date") from None
        day_seconds[day] = base
    h, mi, s = int(hh), int(mm), int(ss)
    if h > 23 or mi > 59 or s > 59:
        raise TraceFormatError(path, lineno, f"TIMESTAMP {text!r}: no such time of day")
    frac_ns = int(frac.ljust(9, "0")) if frac else 0
    return (base + h * 3600 + mi * 60 + s) * _NS_PER_S + frac_ns


def _count(path: Path, lineno: int, column: str, text: str) -> int:
    """A non-negative integer token count; plain ASCII digits only (no '+', '_', '1e3', '12.0')."""
    if text.isascii() and text.isdigit():  # the fast path every good row takes
        return int(text)
    s = text.strip()
    if s.isascii() and s.isdigit():
        return int(s)
    if s.startswith("-") and s[1:].isascii() and s[1:].isdigit():
        raise TraceFormatError(path, lineno, f"{column} is negative ({s})")
    raise TraceFormatError(path, lineno, f"{column} {text!r} is not a non-negative integer")


# --- Mooncake (FAST 2025) ----------------------------------------------------------------


def read_mooncake_jsonl(path: str | Path) -> list[TraceRequest]:
    """The Mooncake trace: one JSON object a line with ``timestamp`` (integer or float ms),
    ``input_length``, ``output_length`` and ``hash_ids`` (prefix-block ids).

    All four keys are required; other keys are ignored. ``hash_ids`` become
    ``prefix_blocks`` unchanged (non-negative integers, repeats allowed).
    """
    path = Path(path)
    text = _read_text(path)
    requests: list[TraceRequest] = []
    first_ms: float = 0
    prev_ms: float = 0
    prev_line = 0
    # Split on "\n" only: str.splitlines would also split on U+2028 etc., which JSON allows
    # inside strings, and the line numbers would stop matching an editor's.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise TraceFormatError(
                path, lineno, f"not valid JSON ({e.msg} at column {e.colno})"
            ) from None
        if not isinstance(obj, dict):
            raise TraceFormatError(path, lineno, f"expected a JSON object, got {_json_kind(obj)}")
        for key in _MOONCAKE_KEYS:
            if key not in obj:
                raise TraceFormatError(path, lineno, f"missing key {key!r}")
        ms = _timestamp_ms(path, lineno, obj["timestamp"])
        if not requests:
            first_ms = prev_ms = ms
        elif ms < prev_ms:
            raise TraceFormatError(
                path,
                lineno,
                f"timestamp {ms} goes backwards (earlier than {prev_ms} on line {prev_line}); "
                "the trace must be in time order",
            )
        prev_ms, prev_line = ms, lineno
        requests.append(
            TraceRequest(
                (ms - first_ms) / 1000,
                _json_count(path, lineno, "input_length", obj["input_length"]),
                _json_count(path, lineno, "output_length", obj["output_length"]),
                _hash_ids(path, lineno, obj["hash_ids"]),
            )
        )
    return requests


def _timestamp_ms(path: Path, lineno: int, value: Any) -> float:
    # bool is an int subclass; `true` is not a time.
    if type(value) not in (int, float) or not math.isfinite(value):
        raise TraceFormatError(
            path, lineno, f"timestamp must be a finite number of ms, got {value!r}"
        )
    if value < 0:
        raise TraceFormatError(path, lineno, f"timestamp is negative ({value})")
    return value  # type: ignore[no-any-return]


def _json_count(path: Path, lineno: int, key: str, value: Any) -> int:
    if type(value) is not int:  # rejects 12.0, "12" and true alike
        raise TraceFormatError(path, lineno, f"{key} must be an integer, got {value!r}")
    if value < 0:
        raise TraceFormatError(path, lineno, f"{key} is negative ({value})")
    return value


def _hash_ids(path: Path, lineno: int, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise TraceFormatError(path, lineno, f"hash_ids must be a list, got {_json_kind(value)}")
    ids = tuple(value)
    if not all(type(h) is int and h >= 0 for h in ids):
        for i, h in enumerate(ids):
            if type(h) is not int or h < 0:
                raise TraceFormatError(
                    path, lineno, f"hash_ids[{i}] must be a non-negative integer, got {h!r}"
                )
    return ids


def _json_kind(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number"}
    return names.get(type(value), "null" if value is None else type(value).__name__)


# --- shared ------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        # utf-8-sig: a BOM from a spreadsheet export must not end up in the first column name.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        lineno = data.count(b"\n", 0, e.start) + 1
        raise TraceFormatError(
            path, lineno, f"not UTF-8 text ({e.reason} at byte {e.start})"
        ) from None


def _first_nonblank_line(path: Path) -> tuple[int, str]:
    lineno = 1
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.decode("utf-8-sig", errors="replace").strip()
            if line:
                return lineno, line
    return lineno, ""
