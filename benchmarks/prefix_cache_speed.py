"""Simulator speed with prefix caching on and off: the default `hermes sim` job (the Azure
conversation trace, whose requests share nothing) in fresh interpreters, taking turns.

    .venv/bin/python benchmarks/prefix_cache_speed.py --rounds 5 \
        --json benchmarks/results/prefix_cache_speed.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, sys, time
from hermes.sim.build import simulate
from hermes.sim.config import DEFAULT_CONFIG, config_from_dict
data = DEFAULT_CONFIG.model_dump(mode="python")
for g in data["instances"]:
    g["enable_prefix_caching"] = sys.argv[1] == "on"
cfg = config_from_dict(data)
t = time.perf_counter()
simulate(cfg)
print(json.dumps(time.perf_counter() - t))
"""


def once(mode: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True
    )
    return float(json.loads(out.stdout))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    times: dict[str, list[float]] = {"on": [], "off": []}
    for k in range(args.rounds):
        for mode in ("on", "off") if k % 2 == 0 else ("off", "on"):
            times[mode].append(once(mode))
            print(f"round {k + 1}: caching {mode}: {times[mode][-1]:.3f} s", flush=True)
    on, off = statistics.median(times["on"]), statistics.median(times["off"])
    print(f"median simulate: caching on {on:.3f} s, off {off:.3f} s, ratio {on / off:.3f}")
    if args.json is not None:
        result = {"times_s": times, "median_on_s": on, "median_off_s": off, "ratio": on / off}
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
