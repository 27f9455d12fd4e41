"""Speed of the Gittins index and of re-ranking many applications in progress.

    python benchmarks/gittins_ranking.py [--sizes 1,10,100,1000,10000] [--json OUT.json]

1. One rank of a 1,000-sample demand distribution: from raw samples (sort included), from a
   prepared ``DemandDistribution``, and per value when ``gittins_many`` ranks 10,000 at once.
2. Ranking rounds over N active applications of nine types (the six templates and three
   variants with doubled tokens) at mixed progress, the scheduler holding each application's
   ``RankState``. A round re-ranks every application: (a) with nothing changed since the last
   round, (b) with min(N, 512) applications one decode step further (two engines' worth of
   running calls), (c) with all of them further. Two paths side by side: one ``RankState.rank``
   per application (cached per exact attained value) and one batched
   ``GittinsRanker.rank_states`` call; ``speedup`` is per-app time over batched time.
   Each timed round of (b) and (c) ranks values never ranked before (the per-app caches are
   fresh and warmed with the previous round's values), so cache hits flatter neither path.
3. Rounding attained service to 1 ms, compared with exact ranks of the same states.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from hermes.core.demand_sampler import DemandModel, Progress
from hermes.core.gittins import DemandDistribution, gittins_index
from hermes.core.pdgraph import learn
from hermes.core.rank_cache import GittinsRanker, RankState
from hermes.core.runs import AppRun, LLMCall
from hermes.workloads.templates import TEMPLATE_NAMES, generate_runs

DECODE_STEP_S = 0.012  # one decode iteration: how far an application advances between rounds
CHANGED_MAX = 512  # two engines with vLLM's default max_num_seqs of 256


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


def per_app_round(states: list[RankState], attained: list[float]) -> list[float]:
    """The old path: one cached exact rank per application."""
    return [s.rank(a) for s, a in zip(states, attained, strict=True)]


def time_rounds(
    ranker: GittinsRanker,
    states: list[RankState],
    base: np.ndarray,
    changed: np.ndarray,
    steps: range,
) -> dict[str, float]:
    """Best round times of both paths; round r moves the ``changed`` apps by ``steps[r]``
    decode steps (distinct steps per call, so no path meets a value it has ranked before)."""
    rounds = [base.copy() for _ in steps]
    for r, att in zip(steps, rounds, strict=True):
        att[changed] += r * DECODE_STEP_S
    per_app = batched = float("inf")
    worst_rel = 0.0
    for att in rounds:
        # Fresh per-app caches, warmed with the previous round's values (untimed).
        fresh = [RankState(s.dist, s.quantum_s) for s in states]
        per_app_round(fresh, base.tolist())
        values = att.tolist()
        t = time.perf_counter()
        old = per_app_round(fresh, values)
        per_app = min(per_app, time.perf_counter() - t)
        t = time.perf_counter()
        new = ranker.rank_states(states, att)
        batched = min(batched, time.perf_counter() - t)
        exact = np.asarray(old)
        diff = np.abs(new - exact)
        worst_rel = max(worst_rel, float(np.max(diff / np.maximum(np.abs(exact), 1e-300))))
    return {
        "per_app_ms": per_app * 1e3,
        "batched_ms": batched * 1e3,
        "speedup": per_app / batched,
        "max_rel_diff": worst_rel,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1,10,100,1000,10000", help="active applications N")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write results here")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rng = np.random.default_rng(args.seed)

    samples = rng.lognormal(0.0, 1.0, size=1000)
    dist = DemandDistribution(samples)
    many = np.random.default_rng(args.seed + 1).uniform(0.0, float(samples.max()), 10_000)

    def fresh_tables() -> object:
        return DemandDistribution(samples).rank_tables()

    single = {
        "raw_samples_us": best_of(lambda: gittins_index(samples, 0.7), 7, 2000) * 1e6,
        "prepared_us": best_of(lambda: dist.gittins(0.7), 7, 2000) * 1e6,
        "many_per_value_us": best_of(lambda: dist.gittins_many(many), 7, 20) / many.size * 1e6,
        "rank_tables_ms": best_of(fresh_tables, 7, 10) * 1e3,
    }

    runs = training_runs(300, args.seed)
    graphs = learn(runs)
    models = {app: DemandModel(g) for app, g in graphs.items()}
    items_all = mixed_progress(runs, max(sizes), rng)

    results: dict[str, dict[str, object]] = {}
    table: list[str] = []
    for n in sizes:
        items = items_all[:n]
        base = np.array([a for _, _, a in items])
        ranker = GittinsRanker(models, seed=args.seed)
        t = time.perf_counter()
        states = [ranker.state(app, p) for app, p, _ in items]
        build_s = time.perf_counter() - t
        t = time.perf_counter()
        ranker.rank_states(states, base)  # builds each state's rank tables and the pool
        first_s = time.perf_counter() - t
        repeat = 50 if n <= 100 else 20 if n <= 1000 else 7
        some = rng.permutation(n)[: min(n, CHANGED_MAX)]
        cases = {
            "unchanged": time_rounds(ranker, states, base, some[:0], range(repeat)),
            f"{some.size}_advanced": time_rounds(ranker, states, base, some, range(1, repeat + 1)),
            "all_advanced": time_rounds(
                ranker, states, base, np.arange(n), range(repeat + 1, 2 * repeat + 1)
            ),
        }
        results[str(n)] = {
            "distinct_states": ranker.cached_states,
            "build_states_ms": build_s * 1e3,
            "first_batched_round_ms": first_s * 1e3,
            **cases,
        }
        for case, c in cases.items():
            table.append(
                f"{n:>6} {case:>14} {c['per_app_ms']:>10.3f} {c['batched_ms']:>10.3f}"
                f" {c['speedup']:>8.1f}x {c['max_rel_diff']:>9.1e}"
            )

    # Rounding attained service to 1 ms against exact ranks, over the largest N.
    items = items_all[: max(sizes)]
    base = np.array([a for _, _, a in items])
    ranks = {}
    for label, quantum in (("quantum_1ms", 0.001), ("exact", 0.0)):
        ranker = GittinsRanker(models, seed=args.seed, quantum_s=quantum)
        ranks[label] = ranker.rank_states([ranker.state(a, p) for a, p, _ in items], base)
    approx, exact = ranks["quantum_1ms"], ranks["exact"]
    abs_err = np.abs(approx - exact)
    pairs = rng.integers(len(items), size=(200_000, 2))
    sa = np.sign(approx[pairs[:, 0]] - approx[pairs[:, 1]])
    se = np.sign(exact[pairs[:, 0]] - exact[pairs[:, 1]])

    result = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "single_rank_1000_samples": single,
        "app_types": len(models),
        "rounds": results,
        "quantum_1ms_vs_exact": {
            "apps": len(items),
            "mean_abs_error_ms": float(abs_err.mean()) * 1e3,
            "p99_abs_error_ms": float(np.quantile(abs_err, 0.99)) * 1e3,
            "max_abs_error_ms": float(abs_err.max()) * 1e3,
            "pair_order_inversions": float(np.mean(sa * se < 0)),
        },
    }
    print(f"{'N':>6} {'changed':>14} {'per-app ms':>10} {'batched ms':>10} {'speedup':>9}"
          f" {'max rel':>9}")  # fmt: skip
    print("\n".join(table))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
