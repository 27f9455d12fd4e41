"""The house rules of docs/architecture.md, checked on the source so that they cannot erode:
small files and functions, and imports that flow one way (the functional core imports no
shell, the engine no policy, production never the lab)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "hermes"
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80

# (package, what it must not import, why)
FORBIDDEN: list[tuple[str, tuple[str, ...], str]] = [
    (
        "core",
        ("hermes.sim", "hermes.gateway", "hermes.experiments", "hermes.policies", "asyncio"),
        "the pure domain imports no shell, no policy and no event loop",
    ),
    (
        "policies",
        ("hermes.sim", "hermes.gateway", "hermes.experiments", "asyncio"),
        "decisions are pure: no shell, no event loop",
    ),
    (
        "engine",
        ("hermes.policies", "hermes.sim", "hermes.gateway", "hermes.experiments", "asyncio"),
        "the engine takes priorities, never policies, and knows no shell",
    ),
    (
        "gateway",
        ("hermes.experiments", "hermes.sim"),
        "production never imports the lab or the simulator",
    ),
    ("sim", ("hermes.gateway", "hermes.experiments"), "the simulator is a shell of its own"),
]
# Pure packages read no clock and do no I/O.
PURE = ("core", "policies", "engine")
CLOCKS = ("time", "datetime", "asyncio", "socket", "random")


def _sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(SRC)))
def test_source_files_are_small(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_FILE_LINES, f"{path.relative_to(SRC)}: {lines} lines > {MAX_FILE_LINES}"


def test_functions_are_short() -> None:
    long: list[str] = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(SRC)}::{node.name} ({n} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


@pytest.mark.parametrize(("package", "banned", "why"), FORBIDDEN, ids=[f[0] for f in FORBIDDEN])
def test_imports_flow_one_way(package: str, banned: tuple[str, ...], why: str) -> None:
    bad = [
        f"{path.relative_to(SRC)} imports {name}"
        for path in sorted((SRC / package).rglob("*.py"))
        for name in _imports(path)
        if any(_under(name, b) for b in banned)
    ]
    assert not bad, f"{why}: {bad}"


@pytest.mark.parametrize("package", PURE)
def test_the_functional_core_reads_no_clock(package: str) -> None:
    bad = [
        f"{path.relative_to(SRC)} imports {name}"
        for path in sorted((SRC / package).rglob("*.py"))
        for name in _imports(path)
        if any(_under(name, c) for c in CLOCKS)
    ]
    assert not bad, f"{package} must take time as an argument: {bad}"


def test_no_docstring_points_outside_the_repository() -> None:
    bad = [
        str(path.relative_to(SRC))
        for path in _sources()
        if "CALIBRATION.md" in (text := path.read_text(encoding="utf-8"))
        or "shared/docs" in text
        or "../shared" in text
    ]
    assert not bad, f"cite docs/ in this repository instead: {bad}"


def test_the_rules_catch_a_violation(tmp_path: Path) -> None:
    """The checks above can fail: a planted bad import is found."""
    bad = tmp_path / "x.py"
    bad.write_text("from hermes.policies.gittins import Gittins\nimport time\n")
    assert {"hermes.policies.gittins", "time"} <= _imports(bad)
