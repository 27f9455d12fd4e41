"""Hermes: application-aware scheduling for LLM serving.

The curated public API; everything else is reachable through its module.
"""

from hermes.core.demand_cost import DemandCost, LinearCost
from hermes.core.demand_sampler import DemandModel, Progress
from hermes.core.gittins import DemandDistribution, gittins_index
from hermes.core.pdgraph import PDGraph, PDGraphFormatError, learn
from hermes.core.rank_cache import GittinsRanker, RankState
from hermes.core.runs import AppRun, LLMCall, RunFormatError, Stage, ToolCall
from hermes.workloads.pdgraph_files import load_pdgraphs, save_pdgraphs
from hermes.workloads.run_files import read_runs, write_runs

__all__ = [
    "AppRun",
    "DemandCost",
    "DemandDistribution",
    "DemandModel",
    "GittinsRanker",
    "LLMCall",
    "LinearCost",
    "PDGraph",
    "PDGraphFormatError",
    "Progress",
    "RankState",
    "RunFormatError",
    "Stage",
    "ToolCall",
    "gittins_index",
    "learn",
    "load_pdgraphs",
    "read_runs",
    "save_pdgraphs",
    "write_runs",
]
__version__ = "0.1.0"
