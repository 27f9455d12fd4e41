"""Request traces: the real Azure and Mooncake files, exact timestamps, and every bad input."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hermes.workloads.request_traces import (
    TraceFormatError,
    TraceRequest,
    read_azure_csv,
    read_mooncake_jsonl,
    read_trace,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"
GOOD_ROW = "2023-11-16 18:15:46.6805900,374,44"

Reader = Callable[[str | Path], list[TraceRequest]]


def data_file(name: str) -> Path:
    path = DATA / name
    if not path.exists():
        pytest.skip(f"{path} is not present")
    return path


def write(tmp_path: Path, name: str, *lines: str) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def mooncake(**fields: object) -> str:
    obj: dict[str, object] = {
        "timestamp": 2000, "input_length": 600, "output_length": 20, "hash_ids": [0, 1],
    }  # fmt: skip
    obj.update(fields)
    return json.dumps({k: v for k, v in obj.items() if v is not ...})


# --- the real files -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reader", "rows", "minutes"),
    [
        ("AzureLLMInferenceTrace_conv.csv", read_azure_csv, 19_366, 58),
        ("AzureLLMInferenceTrace_code.csv", read_azure_csv, 8_819, 57),
        ("mooncake_conversation_trace.jsonl", read_mooncake_jsonl, 12_031, 59),
    ],
)
def test_real_trace(name: str, reader: Reader, rows: int, minutes: float) -> None:
    path = data_file(name)
    requests = reader(path)
    assert len(requests) == rows
    assert requests[0].arrival_s == 0.0
    arrivals = [r.arrival_s for r in requests]
    assert all(a <= b for a, b in itertools.pairwise(arrivals))
    assert abs(arrivals[-1] / 60 - minutes) < 1.0
    assert all(r.prompt_tokens > 0 and r.output_tokens > 0 for r in requests)
    assert read_trace(path) == requests


def test_real_azure_sub_second_digits() -> None:
    requests = read_azure_csv(data_file("AzureLLMInferenceTrace_conv.csv"))
    assert (requests[0].prompt_tokens, requests[0].output_tokens) == (374, 44)
    # 18:15:50.9951690 - 18:15:46.6805900, to the last (100 ns) digit.
    assert requests[1].arrival_s == 4.314579
    assert requests[-1].arrival_s == 3501.721_937


def test_real_mooncake_prefix_blocks() -> None:
    requests = read_mooncake_jsonl(data_file("mooncake_conversation_trace.jsonl"))
    assert requests[0].prefix_blocks == tuple(range(14))
    assert requests[1].prefix_blocks[0] == 0  # the shared system prompt
    assert requests[-1].arrival_s == 3536.999
    # Mooncake blocks hold 512 tokens, so the ids cover the prompt exactly.
    assert all(len(r.prefix_blocks) == -(-r.prompt_tokens // 512) for r in requests)


# --- Azure CSV ----------------------------------------------------------------------------


def test_azure_exact_to_the_hundred_nanoseconds(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "t.csv",
        HEADER,
        "2023-11-16 23:59:59.9999999,1,1",
        "2023-11-17 00:00:00.0000000,2,2",  # across midnight
        "2023-11-17 00:00:00.0000001,3,3",
        "2023-12-01 00:00:00,4,4",  # across a month; no fraction at all
        "2024-03-01 00:00:00.5,5,5",  # across a leap day
    )
    arrivals = [r.arrival_s for r in read_azure_csv(path)]
    assert arrivals[:3] == [0.0, 1e-7, 2e-7]
    day = 86_400
    assert arrivals[3] == 14 * day + 1e-7
    assert arrivals[4] == (14 + 31 + 31 + 29) * day + 0.5000001


def test_azure_column_order_extra_columns_bom_crlf_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    text = "\ufeffGeneratedTokens, TIMESTAMP ,Note,ContextTokens\r\n\r\n"
    text += '7,2023-11-16 18:00:00.25,"a, quoted note",100\r\n'
    text += "8,2023-11-16 18:00:01.25,,200\r\n"
    path.write_text(text, encoding="utf-8")
    assert read_azure_csv(path) == [TraceRequest(0.0, 100, 7), TraceRequest(1.0, 200, 8)]


def test_azure_equal_timestamps_and_zero_tokens(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", HEADER, GOOD_ROW, "2023-11-16 18:15:46.6805900,0,0")
    assert read_azure_csv(path)[1] == TraceRequest(0.0, 0, 0)


def test_azure_header_only_is_an_empty_trace(tmp_path: Path) -> None:
    assert read_azure_csv(write(tmp_path, "t.csv", HEADER)) == []


@pytest.mark.parametrize(
    ("lines", "line", "fault"),
    [
        ([], 1, "empty file"),
        (["TIMESTAMP,ContextTokens", "2023-11-16 18:15:46.6805900,374"], 1,
         "missing column 'GeneratedTokens'"),
        ([GOOD_ROW, GOOD_ROW], 1, "missing column 'TIMESTAMP'"),  # no header at all
        (["TIMESTAMP,ContextTokens,GeneratedTokens,TIMESTAMP"], 1, "appears twice"),
        ([HEADER, GOOD_ROW, "2023-11-16 18:15:47.0,374"], 3, "fields like the header, found 2"),
        ([HEADER, GOOD_ROW, "2023-11-16 18:15:47.0,374,44,9"], 3, "found 4"),
        ([HEADER, "2023-11-16 18:15:47.0,12.5,44"], 2, "ContextTokens '12.5' is not"),
        ([HEADER, "2023-11-16 18:15:47.0,374,"], 2, "GeneratedTokens '' is not"),
        ([HEADER, "2023-11-16 18:15:47.0,374,1e3"], 2, "GeneratedTokens '1e3' is not"),
        ([HEADER, "2023-11-16 18:15:47.0,+374,4"], 2, "ContextTokens '+374' is not"),
        ([HEADER, "2023-11-16 18:15:47.0,374,-4"], 2, "GeneratedTokens is negative (-4)"),
        ([HEADER, "2023-11-16 18:15:47.0,\u0663,4"], 2, "ContextTokens '\u0663' is not"),
        ([HEADER, "yesterday,374,44"], 2, "TIMESTAMP 'yesterday' is not"),
        ([HEADER, "2023-11-16 18:15,374,44"], 2, "is not 'YYYY-MM-DD HH:MM:SS"),
        ([HEADER, "2023-11-16 18:15:46.1234567890,1,1"], 2, "up to 9 digits"),
        ([HEADER, "2023-02-30 18:15:46.0,374,44"], 2, "no such date"),
        ([HEADER, "2023-11-16 24:00:00.0,374,44"], 2, "no such time of day"),
        ([HEADER, GOOD_ROW, "2023-11-16 18:15:47.0,1,1", "2023-11-16 18:15:46.9,1,1"], 4,
         "goes backwards (earlier than line 3)"),
        ([HEADER, GOOD_ROW, '"2023-11-16 18:15:47.0,1,1'], 3, "not valid CSV (unexpected end"),
        ([HEADER, '"2023-11-16 18:15:47.0"x,1,1'], 2, "not valid CSV (',' expected"),
    ],
)  # fmt: skip
def test_azure_malformed(tmp_path: Path, lines: list[str], line: int, fault: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("".join(f"{x}\n" for x in lines), encoding="utf-8")
    with pytest.raises(TraceFormatError) as info:
        read_azure_csv(path)
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert fault in str(info.value)
    assert (info.value.path, info.value.line) == (str(path), line)


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(f"{HEADER}\n{GOOD_ROW}\n".encode() + b"2023-11-16 18:15:47.0,\xff,1\n")
    with pytest.raises(TraceFormatError, match=r"bad\.csv:3: not UTF-8"):
        read_azure_csv(path)


rows = st.lists(
    st.tuples(
        st.integers(0, 10**12),  # nanoseconds since the previous row (up to ~17 minutes)
        st.integers(0, 10**6),
        st.integers(0, 10**5),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=60)
@given(rows=rows, start_s=st.integers(0, 86_399), digits=st.integers(1, 9))
def test_azure_round_trip(
    tmp_path_factory: pytest.TempPathFactory,
    rows: list[tuple[int, int, int]],
    start_s: int,
    digits: int,
) -> None:
    # Times are written with `digits` fractional digits; arrivals must come back exact.
    step = 10 ** (9 - digits)
    gaps = (gap // step * step for gap, _, _ in rows)
    stamps_ns = list(itertools.accumulate(gaps, initial=start_s * 10**9))[1:]
    lines = [HEADER]
    expected: list[TraceRequest] = []
    for ns, (_, ctx, gen) in zip(stamps_ns, rows, strict=True):
        secs, frac = divmod(ns, 10**9)
        days, secs = divmod(secs, 86_400)
        stamp = f"2023-11-{16 + days:02d} {secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}"
        lines.append(f"{stamp}.{frac // step:0{digits}d},{ctx},{gen}")
        expected.append(TraceRequest((ns - stamps_ns[0]) / 10**9, ctx, gen))
    path = write(tmp_path_factory.mktemp("rt"), "t.csv", *lines)
    assert read_azure_csv(path) == expected


# --- Mooncake JSON Lines ------------------------------------------------------------------


def test_mooncake_reads_fields(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "t.jsonl",
        mooncake(timestamp=1500, hash_ids=[0, 1, 1], extra="ignored"),
        "",
        mooncake(timestamp=1500, input_length=0, output_length=0, hash_ids=[]),
        mooncake(timestamp=4000.5),
    )
    assert read_mooncake_jsonl(path) == [
        TraceRequest(0.0, 600, 20, (0, 1, 1)),
        TraceRequest(0.0, 0, 0, ()),
        TraceRequest(2.5005, 600, 20, (0, 1)),
    ]


@pytest.mark.parametrize(
    ("line", "fault"),
    [
        ('{"timestamp": 0,', "not valid JSON"),
        ("[1, 2, 3]", "expected a JSON object, got an array"),
        (mooncake(timestamp=...), "missing key 'timestamp'"),
        (mooncake(input_length=...), "missing key 'input_length'"),
        (mooncake(output_length=...), "missing key 'output_length'"),
        (mooncake(hash_ids=...), "missing key 'hash_ids'"),
        (mooncake(timestamp="5"), "timestamp must be a finite number of ms, got '5'"),
        (mooncake(timestamp=True), "timestamp must be a finite number"),
        ('{"timestamp": NaN, "input_length": 1, "output_length": 1, "hash_ids": []}',
         "timestamp must be a finite number of ms, got nan"),
        (mooncake(timestamp=-1), "timestamp is negative (-1)"),
        (mooncake(input_length=12.5), "input_length must be an integer, got 12.5"),
        (mooncake(input_length=12.0), "input_length must be an integer, got 12.0"),
        (mooncake(input_length="12"), "input_length must be an integer, got '12'"),
        (mooncake(output_length=False), "output_length must be an integer, got False"),
        (mooncake(output_length=-3), "output_length is negative (-3)"),
        (mooncake(hash_ids="0 1"), "hash_ids must be a list, got a string"),
        (mooncake(hash_ids=[0, -1]), "hash_ids[1] must be a non-negative integer, got -1"),
        (mooncake(hash_ids=[0, 1.0]), "hash_ids[1] must be a non-negative integer, got 1.0"),
        (mooncake(timestamp=999), "timestamp 999 goes backwards (earlier than 1000 on line 2)"),
    ],
)  # fmt: skip
def test_mooncake_malformed(tmp_path: Path, line: str, fault: str) -> None:
    path = write(tmp_path, "bad.jsonl", mooncake(timestamp=0), mooncake(timestamp=1000), line)
    with pytest.raises(TraceFormatError) as info:
        read_mooncake_jsonl(path)
    assert str(info.value).startswith(f"{path}:3: ")
    assert fault in str(info.value)


def test_mooncake_line_numbers_count_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.jsonl", mooncake(), "", "  ", mooncake(output_length=-1))
    with pytest.raises(TraceFormatError, match=r"bad\.jsonl:4: output_length is negative"):
        read_mooncake_jsonl(path)


# --- dispatch -----------------------------------------------------------------------------


def test_read_trace_by_extension_then_content(tmp_path: Path) -> None:
    csv_lines = (HEADER, GOOD_ROW, "2023-11-16 18:15:47.6805900,1,2")
    azure = [TraceRequest(0.0, 374, 44), TraceRequest(1.0, 1, 2)]
    moon = [TraceRequest(0.0, 600, 20, (0, 1))]
    assert read_trace(write(tmp_path, "a.csv", *csv_lines)) == azure
    assert read_trace(write(tmp_path, "a.jsonl", mooncake())) == moon
    assert read_trace(write(tmp_path, "a.txt", "", *csv_lines)) == azure
    assert read_trace(write(tmp_path, "b.txt", "", mooncake())) == moon


def test_read_trace_unknown_content(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match=r"odd\.log:2: cannot tell the trace format"):
        read_trace(write(tmp_path, "odd.log", "", "hello"))


def test_read_trace_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_trace(tmp_path / "absent.csv")


# --- the request itself -------------------------------------------------------------------


def test_trace_request_is_frozen_and_slotted() -> None:
    r = TraceRequest(1.5, 10, 2, (3, 4))
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.arrival_s = 2.0  # type: ignore[misc]
    assert not hasattr(r, "__dict__")
    assert hash(r) == hash(TraceRequest(1.5, 10, 2, (3, 4)))


@pytest.mark.parametrize(
    ("args", "fault"),
    [
        ((-1.0, 1, 1), "arrival_s must be finite and >= 0"),
        ((float("nan"), 1, 1), "arrival_s must be finite"),
        ((0.0, -1, 1), "prompt_tokens must be >= 0"),
        ((0.0, 1, -1), "output_tokens must be >= 0"),
        ((0.0, 1.5, 1), "prompt_tokens must be an int"),
        ((0.0, 1, True), "output_tokens must be an int"),
        ((0.0, 1, 1, [1, 2]), "prefix_blocks must be a tuple"),
    ],
)
def test_trace_request_validates(args: tuple[object, ...], fault: str) -> None:
    with pytest.raises(ValueError, match=re.escape(fault)):
        TraceRequest(*args)  # type: ignore[arg-type]
