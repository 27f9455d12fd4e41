#!/usr/bin/env bash
# Set up (once) and run every check: lint, format, types, tests. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is needed")'
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# real-engine compiles llama.cpp (about 4 minutes on 2 cores the first time, then cached).
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[dev,real-engine,ray]'
.venv/bin/ruff check src tests benchmarks
.venv/bin/ruff format --check src tests benchmarks
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
