"""How close the step-time cost model comes to measured vLLM numbers.

Llama-2-70B TP4 (A100, H100) against Splitwise's measured perf model
(shared/data/splitwise_perf_model.csv, median of the repeats):
- decode: `token_time` (ms per generated token, i.e. per decode iteration) at batch 1 and 64,
  prompt 512, 128 generated tokens. Over the run a sequence's context grows from 512 to 640,
  so the model is evaluated at the midpoint, prompt_size + token_size / 2.
- prefill: `prompt_time` (ms) at batch 1 for each prompt size; one iteration over the whole
  prompt from an empty cache, emitting the first token.
Headline: mean absolute percentage error (MAPE) per GPU over those rows. The other batch and
generation-length rows are reported as a sweep, outside the headline.

Overhead fit: the 70B profiles' per_step_s and per_sequence_s are least squares in relative
error (non-negative) over the decode rows at every batch size (128 generated tokens) and the
prefill rows, every other profile number held fixed (the all-reduce latency and bandwidth
included: physics, not fitted). The report carries the fit so the profiles can cite it.

Llama-3-8B TP1: time per output token against the vLLM 0.6 medians in docs/calibration.md (12.0 ms
A100, 7.6 ms H100), at a mid-load decode batch of 16 sequences with ~1k tokens of context.

Usage: python benchmarks/cost_model_fidelity.py [--data-dir DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from hermes.engine.cost_model import StepCostModel
from hermes.profiles import load_profile

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
SPLITWISE_CSV = "splitwise_perf_model.csv"

# Splitwise hardware label -> our profile name.
PROFILES_70B = {"a100-80gb": "llama-2-70b@a100-tp4", "h100-80gb": "llama-2-70b@h100-tp4"}
DECODE_PROMPT = 512
DECODE_TOKENS = 128
HEADLINE_BATCHES = (1, 64)

# vLLM 0.6, Llama-3-8B TP1, median TPOT (docs/calibration.md), and the operating point we assume.
TPOT_8B_MS = {"llama-3-8b@a100": 12.0, "llama-3-8b@h100": 7.6}
TPOT_8B_BATCH = 16
TPOT_8B_CONTEXT = 1024


def decode_ms(model: StepCostModel, batch: int, context: float) -> float:
    """One pure-decode iteration: `batch` sequences of `context` tokens, one token each."""
    kv_tokens = round(batch * context)
    return 1e3 * model.step_time_s(batch, batch, kv_tokens, 0.0, batch)


def prefill_ms(model: StepCostModel, prompt: int) -> float:
    """Prefill of one whole prompt (one sequence) from an empty cache, emitting the first token."""
    return 1e3 * model.step_time_s(prompt, 0, 0, prompt * prompt / 2.0, 1, num_prefill_seqs=1)


def read_splitwise(path: Path) -> dict[tuple[str, int, int, int], dict[str, float]]:
    """Median prompt_time and token_time by (hardware, prompt_size, batch_size, token_size),
    Llama-2-70B at TP4 only."""
    samples: dict[tuple[str, int, int, int], dict[str, list[float]]] = defaultdict(
        lambda: {"prompt_time": [], "token_time": []}
    )
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["model"] != "llama2-70b" or row["tensor_parallel"] != "4":
                continue
            key = (
                row["hardware"],
                int(row["prompt_size"]),
                int(row["batch_size"]),
                int(row["token_size"]),
            )
            samples[key]["prompt_time"].append(float(row["prompt_time"]))
            samples[key]["token_time"].append(float(row["token_time"]))
    return {k: {m: statistics.median(v) for m, v in d.items()} for k, d in samples.items()}


def _row(kind: str, model_ms: float, measured_ms: float, **where: int | float) -> dict[str, Any]:
    return {
        "kind": kind,
        **where,
        "model_ms": round(model_ms, 3),
        "measured_ms": round(measured_ms, 3),
        "error_pct": round(100.0 * (model_ms - measured_ms) / measured_ms, 2),
    }


def _mape(rows: list[dict[str, Any]]) -> float:
    return round(statistics.fmean(abs(r["error_pct"]) for r in rows), 2) if rows else float("nan")


def compare_70b(data_dir: Path) -> dict[str, Any]:
    """Per-GPU rows (model vs measured) and MAPEs for Llama-2-70B TP4."""
    measured = read_splitwise(data_dir / SPLITWISE_CSV)
    out: dict[str, Any] = {}
    for hardware, profile in PROFILES_70B.items():
        model = load_profile(profile)
        decode, prefill, sweep = [], [], []
        for (hw, prompt, batch, tokens), m in sorted(measured.items()):
            if hw != hardware:
                continue
            context = prompt + tokens / 2
            if prompt == DECODE_PROMPT:
                row = _row(
                    "decode",
                    decode_ms(model, batch, context),
                    m["token_time"],
                    batch=batch,
                    prompt_size=prompt,
                    token_size=tokens,
                    context=context,
                )
                if batch in HEADLINE_BATCHES and tokens == DECODE_TOKENS:
                    decode.append(row)
                else:
                    sweep.append(row)
            if batch == 1 and tokens == DECODE_TOKENS:
                prefill.append(
                    _row("prefill", prefill_ms(model, prompt), m["prompt_time"], prompt_size=prompt)
                )
        out[profile] = {
            "splitwise_hardware": hardware,
            "rows": decode + prefill,
            "mape_pct": _mape(decode + prefill),
            "decode_mape_pct": _mape(decode),
            "prefill_mape_pct": _mape(prefill),
            "decode_sweep": sweep,
            "decode_sweep_mape_pct": _mape(sweep),
        }
    return out


def _nnls(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative least squares by trying every support set (fine for a few columns)."""
    best, best_res = np.zeros(a.shape[1]), float(y @ y)
    for k in range(1, a.shape[1] + 1):
        for cols in itertools.combinations(range(a.shape[1]), k):
            sub = np.linalg.lstsq(a[:, cols], y, rcond=None)[0]
            if np.all(sub >= 0):
                x = np.zeros(a.shape[1])
                x[list(cols)] = sub
                res = float(np.sum((a @ x - y) ** 2))
                if res < best_res:
                    best, best_res = x, res
    return best


def fit_overheads(data_dir: Path) -> dict[str, Any]:
    """Least-squares per_step_s and per_sequence_s of each 70B profile (see the docstring)."""
    measured = read_splitwise(data_dir / SPLITWISE_CSV)
    out: dict[str, Any] = {}
    for hardware, profile in PROFILES_70B.items():
        base = dataclasses.replace(load_profile(profile), per_step_s=0.0, per_sequence_s=0.0)
        rows: list[tuple[float, float, float]] = []  # (base model s, sequences, measured s)
        for (hw, prompt, batch, tokens), m in sorted(measured.items()):
            if hw != hardware or tokens != DECODE_TOKENS:
                continue
            if prompt == DECODE_PROMPT:
                model_s = decode_ms(base, batch, prompt + tokens / 2) / 1e3
                rows.append((model_s, batch, m["token_time"] / 1e3))
            if batch == 1:
                rows.append((prefill_ms(base, prompt) / 1e3, 1, m["prompt_time"] / 1e3))
        b, n, y = (np.array(c, dtype=np.float64) for c in zip(*rows, strict=True))
        # Divide each row by its measurement: the fit minimises relative, not absolute, error.
        a = np.column_stack([np.ones_like(n), n]) / y[:, None]
        per_step_s, per_sequence_s = _nnls(a, (y - b) / y)
        out[profile] = {
            "rows": len(rows),
            "per_step_s": float(per_step_s),
            "per_sequence_s": float(per_sequence_s),
        }
    return out


def compare_8b_tpot() -> dict[str, Any]:
    """Llama-3-8B TPOT at the assumed operating point, plus a batch sweep for context."""
    out: dict[str, Any] = {}
    for profile, measured in TPOT_8B_MS.items():
        model = load_profile(profile)
        headline = decode_ms(model, TPOT_8B_BATCH, TPOT_8B_CONTEXT)
        out[profile] = {
            **_row("tpot", headline, measured, batch=TPOT_8B_BATCH, context=TPOT_8B_CONTEXT),
            "sweep_ms": {
                f"batch={b},context={c}": round(decode_ms(model, b, c), 3)
                for b in (1, 8, 16, 32, 64)
                for c in (512, 1024, 2048)
            },
        }
    return out


def _print(report: dict[str, Any]) -> None:
    print("Least-squares overheads (the profiles round these):")
    for profile, fit in report["llama-2-70b_overhead_fit"].items():
        print(
            f"  {profile:<22} per_step_s {1e3 * fit['per_step_s']:.2f} ms, per_sequence_s "
            f"{1e3 * fit['per_sequence_s']:.3f} ms over {fit['rows']} rows"
        )
    for profile, res in report["llama-2-70b_vs_splitwise"].items():
        print(f"\n{profile} vs Splitwise {res['splitwise_hardware']} (TP4)")
        print(f"  {'row':<34}{'model ms':>10}{'measured':>10}{'error':>9}")
        for r in res["rows"] + res["decode_sweep"]:
            if r["kind"] == "decode":
                label = f"decode b={r['batch']} ctx={r['context']:g}"
                if r in res["decode_sweep"]:
                    label += " (sweep)"
            else:
                label = f"prefill {r['prompt_size']} tokens"
            model_ms, measured_ms, error = r["model_ms"], r["measured_ms"], r["error_pct"]
            print(f"  {label:<34}{model_ms:>10.2f}{measured_ms:>10.2f}{error:>8.1f}%")
        print(
            f"  MAPE {res['mape_pct']:.1f}% (decode {res['decode_mape_pct']:.1f}%, "
            f"prefill {res['prefill_mape_pct']:.1f}%; "
            f"decode sweep {res['decode_sweep_mape_pct']:.1f}%)"
        )
    print(f"\nLlama-3-8B TPOT (batch {TPOT_8B_BATCH}, context {TPOT_8B_CONTEXT}) vs vLLM 0.6")
    for profile, r in report["llama-3-8b_tpot"].items():
        print(
            f"  {profile:<18} model {r['model_ms']:.2f} ms, measured {r['measured_ms']:.1f} ms, "
            f"error {r['error_pct']:+.1f}%"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--json", type=Path, default=None, metavar="OUT")
    args = parser.parse_args(argv)
    if not (args.data_dir / SPLITWISE_CSV).is_file():
        parser.error(f"{args.data_dir / SPLITWISE_CSV} not found; pass --data-dir")
    report = {
        "llama-2-70b_vs_splitwise": compare_70b(args.data_dir),
        "llama-2-70b_overhead_fit": fit_overheads(args.data_dir),
        "llama-3-8b_tpot": compare_8b_tpot(),
    }
    _print(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
