"""Speed of the bidirectional KV pool (BROS) against the plain paged `BlockPool`.

    python benchmarks/bench_bidir_kv.py [--blocks 4096] [--block-size 16] [--be 200] [--rt 50]
        [--iterations 400] [--seed 0] [--json OUT.json]

1. A workload drives a `BidirBlockPool` and records what it did: `--be` BE and `--rt` RT
   requests stay active; each new request takes its prompt in one grow and then one token per
   iteration until its output is done, when it is released and a new one arrives. Prompts and
   outputs are long enough that memory runs short: a BE request that does not fit is
   suspended (it waits, its KV left in place); an RT request that does not fit suspends
   running BE requests, largest first, until it fits with `reclaim=True`. Each iteration,
   suspended requests resume, in order of suspension, if their overwritten slots can be
   swapped back in with room for one more token; and when suspended requests hold more than
   `--suspended-share` of the cache, the longest-suspended is released and recomputed
   (vLLM's preemption by recompute: it later prefills again).
2. The recorded operations are replayed, timed, on a fresh `BidirBlockPool` (same results:
   the pool is deterministic) and on a `BlockPool` doing the equivalent block-count
   bookkeeping (per request a token count, blocks allocated when it crosses a block
   boundary, all freed at release; suspend and resume have no counterpart). The plain pool
   gets room to spare, so that it never refuses what the bidirectional pool granted.

Reported: grows per second for both (best of `--repeat` replays) and their ratio.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from collections.abc import Hashable
from typing import Any

from hermes.engine.bidir_kv import BidirBlockPool
from hermes.engine.kv_pool import BlockPool

# Trace operations: (kind, owner, side, tokens_total, reclaim); kind g(row), r(elease),
# s(uspend), u (resume).
Op = tuple[str, int, str, int, bool]

# Token ranges (uniform). With the defaults memory runs short: about two thirds of the
# requests run at a time, RT prefills overwrite suspended BE slots, and some BE requests are
# recomputed.
PROMPT_BE, OUTPUT_BE = (50, 300), (50, 250)
PROMPT_RT, OUTPUT_RT = (100, 800), (20, 200)


def record(args: argparse.Namespace) -> tuple[list[Op], dict[str, Any]]:
    rng = random.Random(args.seed)
    pool = BidirBlockPool(args.blocks, args.block_size)
    trace: list[Op] = []
    target: dict[int, int] = {}  # owner -> tokens when done
    tokens: dict[int, int] = {}  # owner -> tokens computed so far (resident or checkpointed)
    side: dict[int, str] = {}
    suspended: list[int] = []  # in order of suspension
    next_id = 0
    stats = dict.fromkeys(
        ("suspensions", "resumes", "recomputed", "overwritten_slots", "finished"), 0
    )

    def arrive(s: str) -> None:
        nonlocal next_id
        owner, next_id = next_id, next_id + 1
        prompt, output = (
            (rng.randint(PROMPT_BE[0], PROMPT_BE[1]), rng.randint(OUTPUT_BE[0], OUTPUT_BE[1]))
            if s == "be"
            else (rng.randint(PROMPT_RT[0], PROMPT_RT[1]), rng.randint(OUTPUT_RT[0], OUTPUT_RT[1]))
        )
        side[owner], tokens[owner], target[owner] = s, prompt - 1, prompt + output

    def grow(owner: int, total: int, reclaim: bool = False) -> None:
        growth = pool.grow(owner, side[owner], total, reclaim)
        trace.append(("g", owner, side[owner], total, reclaim))
        stats["overwritten_slots"] += sum(growth.overwritten.values())

    def suspend(owner: int) -> None:
        pool.suspend(owner)
        trace.append(("s", owner, "be", 0, False))
        suspended.append(owner)
        stats["suspensions"] += 1

    for _ in range(args.be):
        arrive("be")
    for _ in range(args.rt):
        arrive("rt")
    for _ in range(args.iterations):
        # Bound the memory that waiting requests hold: recompute the longest-suspended (it
        # is released and later prefills again, to the tokens it had).
        while pool.reclaimable_slots > args.suspended_share * pool.num_blocks * pool.block_size:
            owner = suspended.pop(0)
            pool.release(owner)
            trace.append(("r", owner, "be", 0, False))
            stats["recomputed"] += 1
        # Resume, in order of suspension, those with room for their swap-in and one token.
        for owner in list(suspended):
            if pool.fits(owner, "be", tokens[owner] + 1):
                lost = pool.resume(owner)
                trace.append(("u", owner, "be", 0, False))
                suspended.remove(owner)
                stats["resumes"] += 1
                if lost:
                    grow(owner, tokens[owner])  # the swap-in
        for owner in [o for o in side if side[o] == "rt"] + [o for o in side if side[o] == "be"]:
            if owner in pool and pool.is_suspended(owner):
                continue
            total = tokens[owner] + 1
            if side[owner] == "rt" and not pool.fits(owner, "rt", total):
                running = sorted(
                    (o for o in side if side[o] == "be" and o in pool and not pool.is_suspended(o)),
                    key=pool.held,
                )
                while running and not pool.fits(owner, "rt", total, reclaim=True):
                    suspend(running.pop())
            if not pool.fits(owner, side[owner], total, reclaim=side[owner] == "rt"):
                if side[owner] == "be" and owner in pool:
                    suspend(owner)
                continue
            grow(owner, total, reclaim=side[owner] == "rt")
            tokens[owner] = total
            if total == target[owner]:
                pool.release(owner)
                trace.append(("r", owner, side[owner], 0, False))
                stats["finished"] += 1
                s = side.pop(owner)
                del tokens[owner], target[owner]
                arrive(s)
    pool.check_invariants()
    stats["shared_blocks_at_end"] = sum(len(pool.owners(b)) == 2 for b in range(args.blocks))
    stats["used_slots_at_end"] = pool.used_slots
    return trace, stats


def replay_bidir(trace: list[Op], blocks: int, block_size: int) -> float:
    pool = BidirBlockPool(blocks, block_size)
    grow, release, suspend, resume = pool.grow, pool.release, pool.suspend, pool.resume
    start = time.perf_counter()
    for kind, owner, side, total, reclaim in trace:
        if kind == "g":
            grow(owner, side, total, reclaim)
        elif kind == "r":
            release(owner)
        elif kind == "s":
            suspend(owner)
        else:
            resume(owner)
    return time.perf_counter() - start


def replay_plain(trace: list[Op], blocks: int, block_size: int) -> float:
    pool = BlockPool(4 * blocks, block_size)  # room to spare: it must not refuse
    tokens: dict[Hashable, int] = {}
    blocks_for = pool.blocks_for
    start = time.perf_counter()
    for kind, owner, _side, total, _reclaim in trace:
        if kind == "g":
            held = tokens.get(owner, 0)
            if total > held:
                new = blocks_for(total) - blocks_for(held)
                if new:
                    if not pool.fits(new):
                        raise RuntimeError("plain pool ran out: give it more room")
                    pool.allocate(new)
                tokens[owner] = total
        elif kind == "r":
            pool.release(blocks_for(tokens.pop(owner, 0)))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=4096)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--be", type=int, default=200)
    parser.add_argument("--rt", type=int, default=50)
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument(
        "--suspended-share", type=float, default=0.25, help="of the cache, before recomputing"
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=str, default=None)
    args = parser.parse_args()

    trace, stats = record(args)
    grows = sum(op[0] == "g" for op in trace)
    bidir_s = min(replay_bidir(trace, args.blocks, args.block_size) for _ in range(args.repeat))
    plain_s = min(replay_plain(trace, args.blocks, args.block_size) for _ in range(args.repeat))
    report = {
        "python": platform.python_version(),
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "operations": len(trace),
        "grows": grows,
        "workload": stats,
        "bidir_grows_per_s": round(grows / bidir_s),
        "plain_grows_per_s": round(grows / plain_s),
        "bidir_over_plain_time": round(bidir_s / plain_s, 2),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
