"""Saving and loading PDGraphs (all application types of a deployment in one JSON file)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from hermes.core.pdgraph import PDGraph, PDGraphFormatError, graphs_from_dict, graphs_to_dict


def save_pdgraphs(path: str | Path, graphs: Mapping[str, PDGraph]) -> None:
    Path(path).write_text(json.dumps(graphs_to_dict(graphs)), encoding="utf-8")


def load_pdgraphs(path: str | Path) -> dict[str, PDGraph]:
    """Graphs keyed by application type; a damaged file raises PDGraphFormatError naming it."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise PDGraphFormatError(
            f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})"
        ) from None
    except UnicodeDecodeError as e:
        raise PDGraphFormatError(f"{path}: not UTF-8 text ({e.reason})") from None
    try:
        return graphs_from_dict(obj)
    except PDGraphFormatError as e:
        raise PDGraphFormatError(f"{path}: {e}") from None
