"""QLM on WB against the paper's baseline, `vllm-shared` (issue 19), at chosen rates: the runs
of `hermes bench qlm` (same settings, same code: `qlm_paper.run_one`) for a subset, when the
whole sweep is too long for the machine at hand.

    python benchmarks/qlm_shared_baseline.py [--rates 40,80] [--policies vllm-shared,qlm]
        [--json OUT]

Prints, per rate and policy, SLO attainment, throughput and model swaps; `hermes bench qlm`
checks the targets on the whole sweep (WB: qlm / vllm-shared attainment >= 1.4 at the lightest
rate where vllm-shared attains < 60 %, throughput >= 1.2 at the top rate).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any

from hermes.experiments.qlm_paper import POLICIES, QlmSettings, run_one


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="40,80", help="WB arrivals per second (cluster)")
    ap.add_argument("--policies", default="vllm-shared,qlm")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    try:
        rates = [float(x) for x in a.rates.split(",")]
    except ValueError:
        ap.error(f"--rates: expected comma-separated numbers, got {a.rates!r}")
    if not rates or any(not r > 0 for r in rates):
        ap.error(f"--rates: expected positive numbers, got {a.rates!r}")
    policies = [p.strip() for p in a.policies.split(",") if p.strip()]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown or not policies:
        ap.error(f"--policies: unknown or none {unknown!r}; known: {', '.join(POLICIES)}")
    s = QlmSettings()
    rows: list[dict[str, Any]] = []
    for rate in rates:
        for p in policies:
            out = run_one("WB", rate, p, s)
            rows.append({"rate": rate, "policy": p, **out})
            swaps = out["model_swaps"]
            print(
                f"WB {rate:g} req/s {p:12s} SLO attainment {out['slo_attainment']:.3f} "
                f"throughput {out['throughput_req_s']:.2f} req/s swaps {swaps}",
                flush=True,
            )
    if a.json is not None:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "rows": rows,
            "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version()},
        }
        a.json.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
