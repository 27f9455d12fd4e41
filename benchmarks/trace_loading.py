"""Load time of the real request traces in ../shared/data.

python benchmarks/trace_loading.py [--data-dir DIR] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hermes.workloads.request_traces import read_trace

FILES = (
    "AzureLLMInferenceTrace_conv.csv",
    "AzureLLMInferenceTrace_code.csv",
    "mooncake_conversation_trace.jsonl",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    ap.add_argument("--data-dir", type=Path, default=default)
    ap.add_argument("--json", default=None, help="write results here")
    args = ap.parse_args()
    result: dict[str, dict[str, float]] = {}
    for name in FILES:
        best = float("inf")
        rows = 0
        for _ in range(7):
            t = time.perf_counter()
            rows = len(read_trace(args.data_dir / name))
            best = min(best, time.perf_counter() - t)
        result[name] = {"rows": rows, "best_of_7_ms": best * 1e3}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
