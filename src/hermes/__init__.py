"""Hermes: application-aware scheduling for LLM serving."""

from hermes.core.gittins import DemandDistribution, gittins_index
from hermes.core.runs import AppRun, LLMCall, RunFormatError, Stage, ToolCall
from hermes.workloads.run_files import read_runs, write_runs

__all__ = [
    "AppRun",
    "DemandDistribution",
    "LLMCall",
    "RunFormatError",
    "Stage",
    "ToolCall",
    "gittins_index",
    "read_runs",
    "write_runs",
]
__version__ = "0.1.0"
