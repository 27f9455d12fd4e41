"""Speed of the Gittins index and of re-ranking many applications in progress.

    python benchmarks/gittins_ranking.py [--apps 10000] [--json OUT.json]

1. One rank of a 1,000-sample demand distribution: from raw samples (sort included) and from a
   prepared ``DemandDistribution``.
2. Ranking rounds over N active applications of nine types (the six templates and three
   variants with doubled tokens) at mixed progress. Building the rank states is paid when an
   application's progress changes; a round re-ranks every application from its state: with
   nothing changed, with 512 applications one decode step further (two engines' worth of
   running calls), and with all of them further. Rounding attained service to 1 ms is compared
   with exact ranks of the same states.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial

import numpy as np

from hermes.core.demand_sampler import DemandModel, Progress
from hermes.core.gittins import DemandDistribution, gittins_index
from hermes.core.pdgraph import learn
from hermes.core.rank_cache import GittinsRanker, RankState
from hermes.core.runs import AppRun, LLMCall
from hermes.workloads.templates import TEMPLATE_NAMES, generate_runs

DECODE_STEP_S = 0.012  # one decode iteration: how far an application advances between rounds


def best_of(fn: Callable[[], object], repeat: int, number: int) -> float:
    """Seconds per call: the best of ``repeat`` batches of ``number`` calls (least noise)."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t) / number)
    return best


def doubled(run: AppRun, app: str) -> AppRun:
    stages = tuple(
        replace(s, calls=tuple(LLMCall(c.prompt_tokens * 2, c.completion_tokens * 2)
                               for c in s.llm_calls()))
        if s.kind == "llm" else s
        for s in run.stages
    )  # fmt: skip
    return replace(run, app=app, stages=stages)


def training_runs(per_app: int, seed: int) -> list[AppRun]:
    runs: list[AppRun] = []
    for i, name in enumerate(TEMPLATE_NAMES):
        runs.extend(generate_runs(name, per_app, seed + i))
    for name in TEMPLATE_NAMES[:3]:
        runs.extend(doubled(r, f"{name}_x2") for r in generate_runs(name, per_app, seed + 99))
    return runs


def mixed_progress(
    runs: list[AppRun], n: int, rng: np.random.Generator
) -> list[tuple[str, Progress, float]]:
    """Applications caught mid-run: a random run, a random stage of it, some calls finished,
    and some service attained by the calls still running."""
    items: list[tuple[str, Progress, float]] = []
    for k in rng.integers(len(runs), size=n):
        run = runs[int(k)]
        pos = int(rng.integers(len(run.stages)))
        stage = run.stages[pos]
        unfinished = int(rng.integers(1, stage.fanout + 1))
        attained = float(rng.exponential(0.5)) if stage.kind == "llm" else 0.0
        items.append((run.app, Progress(stage.name, unfinished, run.stages[:pos]), attained))
    return items


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--apps", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write results here")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)

    samples = rng.lognormal(0.0, 1.0, size=1000)
    dist = DemandDistribution(samples)
    single = {
        "raw_samples_us": best_of(lambda: gittins_index(samples, 0.7), 7, 2000) * 1e6,
        "prepared_us": best_of(lambda: dist.gittins(0.7), 7, 2000) * 1e6,
    }

    runs = training_runs(300, args.seed)
    graphs = learn(runs)
    models = {app: DemandModel(g) for app, g in graphs.items()}
    items = mixed_progress(runs, args.apps, rng)
    attained = np.array([a for _, _, a in items])
    # Between two rounds only applications with calls on a GPU gain service: two engines with
    # vLLM's default max_num_seqs of 256 move at most 512; the worst case moves all of them.
    running = rng.permutation(len(items))[: min(512, len(items))]
    some_advanced = attained.copy()
    some_advanced[running] += DECODE_STEP_S
    all_advanced = attained + DECODE_STEP_S

    rounds: dict[str, dict[str, float]] = {}
    ranks: dict[str, np.ndarray] = {}
    for label, quantum in (("quantum_1ms", 0.001), ("exact", 0.0)):
        ranker = GittinsRanker(models, seed=args.seed, quantum_s=quantum)
        t = time.perf_counter()
        states = [ranker.state(app, p) for app, p, _ in items]
        build_s = time.perf_counter() - t

        def round_of(att: np.ndarray, states: list[RankState] = states) -> list[float]:
            return [s.rank(a) for s, a in zip(states, att.tolist(), strict=True)]

        t = time.perf_counter()
        ranks[label] = np.asarray(round_of(attained))
        first_s = time.perf_counter() - t
        rounds[label] = {
            "distinct_states": ranker.cached_states,
            "build_states_ms": build_s * 1e3,
            "first_round_ms": first_s * 1e3,
            "rerank_unchanged_ms": best_of(lambda: round_of(attained), 5, 1) * 1e3,
            "rerank_512_advanced_ms": best_of(lambda: round_of(some_advanced), 1, 1) * 1e3,
            "rerank_all_advanced_ms": best_of(lambda: round_of(all_advanced), 1, 1) * 1e3,
            "argsort_ms": best_of(partial(np.argsort, ranks[label], kind="stable"), 5, 1) * 1e3,
        }

    approx, exact = ranks["quantum_1ms"], ranks["exact"]
    abs_err = np.abs(approx - exact)
    pairs = rng.integers(len(items), size=(200_000, 2))
    sa = np.sign(approx[pairs[:, 0]] - approx[pairs[:, 1]])
    se = np.sign(exact[pairs[:, 0]] - exact[pairs[:, 1]])

    result = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
        "single_rank_1000_samples": single,
        "apps": len(items),
        "app_types": len(models),
        "rounds": rounds,
        "quantum_1ms_vs_exact": {
            "mean_abs_error_ms": float(abs_err.mean()) * 1e3,
            "p99_abs_error_ms": float(np.quantile(abs_err, 0.99)) * 1e3,
            "max_abs_error_ms": float(abs_err.max()) * 1e3,
            "pair_order_inversions": float(np.mean(sa * se < 0)),
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
