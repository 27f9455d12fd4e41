"""The Probabilistic Demand Graph (PDGraph) of one application type.

Nodes are stages (functional units) with their backend; edges carry empirical transition
counts, including loops and the end, in aggregate and by how many times the run had visited
the source stage (``visit_edges``: a loop's exit hazard per iteration, ``visit_hazards``). Each
node keeps sliding windows of what its visits showed: fan-out per visit and, per call, prompt
and completion tokens or tool seconds. Each
sample carries the sequence number of the run it came from, so that a later stage can be
conditioned on what earlier stages of the same application showed (``refinement``).

Learning is online: ``observe(run)`` folds one finished run in. Sampling lives in
``demand_sampler``; persistence is ``to_dict`` / ``from_dict`` (pure; files are the shell's).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hermes.core.prefix_learning import StagePrefix, detected, passed, resend_checks
from hermes.core.runs import AppRun, LLMCall, Stage, StageKind
from hermes.core.visit_hazards import VisitTable, visit_table

START = "<start>"
END = "<end>"
DEFAULT_WINDOW = 1000
DEFAULT_CORRELATION_THRESHOLD = 0.5
DEFAULT_PREFIX_FRACTION = 1.0
FORMAT = "hermes-pdgraph/1"


class PDGraphFormatError(ValueError):
    """A persisted PDGraph does not have the expected shape; the message says where."""


@dataclass(frozen=True, slots=True)
class StageFeatures:
    """What one stage showed in one run, summed over its visits."""

    calls: int
    tokens: int  # prompt + completion over llm calls; 0 for tool stages
    first: int  # position of its first and last visit in the run
    last: int


@dataclass(frozen=True, slots=True)
class RunRecord:
    seq: int
    stages: Mapping[str, StageFeatures]


@dataclass(slots=True)
class Node:
    """A stage and the sliding windows of its observed demand."""

    name: str
    kind: StageKind
    backend: str
    window: int
    model: str | None = None
    # (run seq, fan-out) per visit; (run seq, prompt tokens, completion tokens) per llm call or
    # (run seq, duration s, 0.0) per tool call.
    fanouts: deque[tuple[int, int]] = field(init=False)
    calls: deque[tuple[int, float, float]] = field(init=False)
    # (run seq, previous call's prompt + completion, prompt) per history-resend check of an
    # llm call (`prefix_learning.resend_checks`).
    resends: deque[tuple[int, float, float]] = field(init=False)

    def __post_init__(self) -> None:
        self.fanouts = deque(maxlen=self.window)
        self.calls = deque(maxlen=self.window)
        self.resends = deque(maxlen=self.window)

    @property
    def resend_share(self) -> float | None:
        """The share of this stage's checked calls long enough to resend the previous call."""
        checks = [(a, b) for _, a, b in self.resends]
        return passed(checks) / len(checks) if checks else None

    @property
    def history_resend(self) -> bool:
        """Learned: each call resends the run's context (off until the window shows it)."""
        return detected([(a, b) for _, a, b in self.resends])

    @property
    def smallest_prompt(self) -> int | None:
        if self.kind != "llm" or not self.calls:
            return None
        return int(min(p for _, p, _ in self.calls))


def stage_features(stages: Iterable[Stage]) -> dict[str, StageFeatures]:
    """Per stage name: calls and tokens summed over visits, and first and last position."""
    calls: Counter[str] = Counter()
    tokens: Counter[str] = Counter()
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for pos, stage in enumerate(stages):
        calls[stage.name] += stage.fanout
        tokens[stage.name] += sum(c.prompt_tokens + c.completion_tokens for c in stage.llm_calls())
        first.setdefault(stage.name, pos)
        last[stage.name] = pos
    return {
        name: StageFeatures(calls[name], tokens[name], first[name], last[name]) for name in first
    }


class PDGraph:
    """The demand graph of one application type, learned online from finished runs."""

    def __init__(
        self,
        app: str,
        *,
        window: int = DEFAULT_WINDOW,
        correlation_threshold: float = DEFAULT_CORRELATION_THRESHOLD,
        prefix_fraction: float = DEFAULT_PREFIX_FRACTION,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if not 0.0 <= prefix_fraction <= 1.0:
            raise ValueError(f"prefix_fraction must be in [0, 1], got {prefix_fraction}")
        if not 0.0 <= correlation_threshold < 1.0:
            raise ValueError(
                f"correlation_threshold must be in [0, 1), got {correlation_threshold}"
            )
        self.app = app
        self.window = window
        self.correlation_threshold = correlation_threshold
        # The learned shared prefix of a stage is this fraction of its smallest prompt.
        self.prefix_fraction = prefix_fraction
        self.nodes: dict[str, Node] = {}
        self.edges: dict[str, Counter[str]] = {}
        # src -> k -> where runs went after their k-th visit of src (k from 1).
        self.visit_edges: dict[str, dict[int, Counter[str]]] = {}
        self.runs: deque[RunRecord] = deque(maxlen=window)
        self.runs_seen = 0
        self.longest_run = 0
        # Bumped on every change; samplers and caches built from the graph key on it.
        self.version = 0

    # ---- learning ------------------------------------------------------------------------------

    def observe(self, run: AppRun) -> None:
        """Fold one finished run into the graph."""
        if run.app != self.app:
            raise ValueError(f"run {run.run_id!r} is of app {run.app!r}, not {self.app!r}")
        seq = self.runs_seen
        prev = START
        visits: Counter[str] = Counter({START: 1})
        for stage in run.stages:
            node = self.nodes.get(stage.name)
            if node is None:
                node = Node(stage.name, stage.kind, stage.backend, self.window, stage.model)
                self.nodes[stage.name] = node
            elif node.kind != stage.kind:
                raise ValueError(
                    f"run {run.run_id!r}: stage {stage.name!r} is {stage.kind!r} here but"
                    f" {node.kind!r} in earlier runs of {self.app!r}"
                )
            node.backend = stage.backend
            node.model = stage.model or node.model
            node.fanouts.append((seq, stage.fanout))
            for call in stage.calls:
                if isinstance(call, LLMCall):
                    node.calls.append(
                        (seq, float(call.prompt_tokens), float(call.completion_tokens))
                    )
                else:
                    node.calls.append((seq, call.duration_s, 0.0))
            self._count(prev, visits[prev], stage.name)
            visits[stage.name] += 1
            prev = stage.name
        for name, resent, prompt in resend_checks(run):
            self.nodes[name].resends.append((seq, float(resent), float(prompt)))
        self._count(prev, visits[prev], END)
        self.runs.append(RunRecord(seq, stage_features(run.stages)))
        self.runs_seen += 1
        self.longest_run = max(self.longest_run, len(run.stages))
        self.version += 1

    def _count(self, src: str, visit: int, dst: str) -> None:
        self.edges.setdefault(src, Counter())[dst] += 1
        self.visit_edges.setdefault(src, {}).setdefault(visit, Counter())[dst] += 1

    def observe_all(self, runs: Iterable[AppRun]) -> None:
        for run in runs:
            self.observe(run)

    # ---- queries -------------------------------------------------------------------------------

    def transition_probabilities(self, src: str, visit: int | None = None) -> dict[str, float]:
        """Empirical P(next stage | current stage ``src``), ``END`` included; given ``visit``,
        on the run's visit-th visit of ``src`` (``visit_table``'s row)."""
        counts = self.edges.get(src)
        if not counts:
            return {}
        if visit is not None:
            return self.visit_table(src).probabilities(visit)
        total = sum(counts.values())
        return {dst: n / total for dst, n in counts.items()}

    def visit_table(self, src: str) -> VisitTable:
        """Next-stage probabilities of ``src`` by visit number, destinations in graph order."""
        counts = self.edges.get(src, Counter())
        by_visit = self.visit_edges.get(src, {})
        order = {name: i for i, name in enumerate([*self.nodes, END])}
        seen = set(counts).union(*by_visit.values())
        return visit_table(sorted(seen, key=lambda d: order[d]), counts, by_visit)

    def successors(self) -> dict[str, dict[str, float]]:
        return {src: self.transition_probabilities(src) for src in self.edges}

    def learned_prefix(self, stage: str) -> StagePrefix | None:
        """What the calls of an llm stage share, as learned from token counts alone."""
        node = self.nodes.get(stage)
        smallest = None if node is None else node.smallest_prompt
        if node is None or smallest is None:
            return None
        return StagePrefix(int(smallest * self.prefix_fraction), node.history_resend)

    def learned_prefixes(self) -> dict[str, StagePrefix]:
        """`learned_prefix` of every llm stage."""
        out = {name: self.learned_prefix(name) for name in self.nodes}
        return {name: p for name, p in out.items() if p is not None}

    # ---- persistence ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "window": self.window,
            "correlation_threshold": self.correlation_threshold,
            "prefix_fraction": self.prefix_fraction,
            "runs_seen": self.runs_seen,
            "longest_run": self.longest_run,
            "nodes": {
                name: {
                    "kind": n.kind,
                    "backend": n.backend,
                    "model": n.model,
                    "fanouts": [list(v) for v in n.fanouts],
                    "calls": [list(v) for v in n.calls],
                    "resends": [list(v) for v in n.resends],
                }
                for name, n in self.nodes.items()
            },
            "edges": {src: dict(dsts) for src, dsts in self.edges.items()},
            "visit_edges": {
                src: {str(k): dict(dsts) for k, dsts in sorted(by_visit.items())}
                for src, by_visit in self.visit_edges.items()
            },
            "runs": [
                {
                    "seq": r.seq,
                    "stages": {
                        name: [f.calls, f.tokens, f.first, f.last] for name, f in r.stages.items()
                    },
                }
                for r in self.runs
            ],
        }

    @classmethod
    def from_dict(cls, obj: Any, where: str = "pdgraph") -> PDGraph:
        """Rebuild a graph from ``to_dict`` output; a malformed object raises PDGraphFormatError."""
        d = _mapping(obj, where)
        g = cls(
            _str(d, "app", where),
            window=_int(d, "window", where, minimum=1),
            correlation_threshold=_float(d, "correlation_threshold", where),
            # Files written before prefixes were learned have neither key: nothing learned.
            prefix_fraction=_fraction(d, "prefix_fraction", where),
        )
        g.runs_seen = _int(d, "runs_seen", where)
        g.longest_run = _int(d, "longest_run", where)
        for name, raw in _mapping(d.get("nodes"), f"{where}.nodes").items():
            at = f"{where}.nodes.{name}"
            n = _mapping(raw, at)
            kind = n.get("kind")
            if kind not in ("llm", "tool"):
                raise PDGraphFormatError(f"{at}.kind: expected 'llm' or 'tool', got {kind!r}")
            model = n.get("model")
            if model is not None and not isinstance(model, str):
                raise PDGraphFormatError(f"{at}.model: expected a string or null")
            node = Node(name, kind, _str(n, "backend", at), g.window, model)
            node.fanouts.extend(
                (int(s), int(f)) for s, f in _rows(n.get("fanouts"), 2, f"{at}.fanouts")
            )
            node.calls.extend(
                (int(s), float(a), float(b)) for s, a, b in _rows(n.get("calls"), 3, f"{at}.calls")
            )
            # Absent in files written before history resend was learned: nothing learned.
            node.resends.extend(
                (int(s), float(a), float(b))
                for s, a, b in _rows(n.get("resends", []), 3, f"{at}.resends")
            )
            g.nodes[name] = node
        for src, raw in _mapping(d.get("edges"), f"{where}.edges").items():
            g.edges[src] = _counts(raw, g, f"{where}.edges.{src}")
        # Absent in files written before visits were counted: the aggregate counts are used.
        g.visit_edges = _visit_edges(d.get("visit_edges", {}), g, f"{where}.visit_edges")
        runs = d.get("runs")
        if not isinstance(runs, list):
            raise PDGraphFormatError(f"{where}.runs: expected a list")
        for i, raw in enumerate(runs):
            at = f"{where}.runs[{i}]"
            r = _mapping(raw, at)
            stages = {
                name: StageFeatures(*(int(v) for v in vals))
                for name, vals in _mapping(r.get("stages"), f"{at}.stages").items()
                for vals in [_row(vals, 4, f"{at}.stages.{name}")]
            }
            g.runs.append(RunRecord(_int(r, "seq", at), stages))
        g.version = 1
        return g


# ---- validation helpers for persisted graphs ---------------------------------------------------


def _mapping(obj: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise PDGraphFormatError(f"{where}: expected an object, got {type(obj).__name__}")
    return obj


def _str(d: Mapping[str, Any], key: str, where: str) -> str:
    v = d.get(key)
    if not isinstance(v, str) or not v:
        raise PDGraphFormatError(f"{where}.{key}: expected a non-empty string, got {v!r}")
    return v


def _int(d: Mapping[str, Any], key: str, where: str, minimum: int = 0) -> int:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise PDGraphFormatError(f"{where}.{key}: expected an integer >= {minimum}, got {v!r}")
    return v


def _float(d: Mapping[str, Any], key: str, where: str) -> float:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise PDGraphFormatError(f"{where}.{key}: expected a number, got {v!r}")
    return float(v)


def _fraction(d: Mapping[str, Any], key: str, where: str) -> float:
    if key not in d:
        return DEFAULT_PREFIX_FRACTION
    v = _float(d, key, where)
    if not 0.0 <= v <= 1.0:
        raise PDGraphFormatError(f"{where}.{key}: expected a number in [0, 1], got {v!r}")
    return v


def _counts(obj: Any, g: PDGraph, where: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for dst, count in _mapping(obj, where).items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise PDGraphFormatError(f"{where}.{dst}: expected a count, got {count!r}")
        if dst != END and dst not in g.nodes:
            raise PDGraphFormatError(f"{where}.{dst}: no such node")
        counts[dst] = count
    return counts


def _visit_edges(obj: Any, g: PDGraph, where: str) -> dict[str, dict[int, Counter[str]]]:
    out: dict[str, dict[int, Counter[str]]] = {}
    for src, raw in _mapping(obj, where).items():
        if src != START and src not in g.nodes:
            raise PDGraphFormatError(f"{where}.{src}: no such node")
        by_visit: dict[int, Counter[str]] = {}
        for k, counts in _mapping(raw, f"{where}.{src}").items():
            # A visit is a stage of some run: no number beyond the longest run's length.
            if not (isinstance(k, str) and k.isdigit() and 1 <= int(k) <= g.longest_run + 1):
                raise PDGraphFormatError(
                    f"{where}.{src}.{k}: expected a visit number from 1 to {g.longest_run + 1}"
                )
            by_visit[int(k)] = _counts(counts, g, f"{where}.{src}.{k}")
        out[src] = by_visit
    return out


def _row(obj: Any, width: int, where: str) -> list[float]:
    if (
        not isinstance(obj, list)
        or len(obj) != width
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in obj)
    ):
        raise PDGraphFormatError(f"{where}: expected a list of {width} numbers, got {obj!r}")
    return obj


def _rows(obj: Any, width: int, where: str) -> list[list[float]]:
    if not isinstance(obj, list):
        raise PDGraphFormatError(f"{where}: expected a list")
    return [_row(v, width, f"{where}[{i}]") for i, v in enumerate(obj)]


def graphs_to_dict(graphs: Mapping[str, PDGraph]) -> dict[str, Any]:
    return {"format": FORMAT, "apps": {app: g.to_dict() for app, g in sorted(graphs.items())}}


def graphs_from_dict(obj: Any, where: str = "pdgraphs") -> dict[str, PDGraph]:
    d = _mapping(obj, where)
    if d.get("format") != FORMAT:
        raise PDGraphFormatError(f"{where}.format: expected {FORMAT!r}, got {d.get('format')!r}")
    apps = _mapping(d.get("apps"), f"{where}.apps")
    return {app: PDGraph.from_dict(g, f"{where}.apps.{app}") for app, g in apps.items()}


def learn(runs: Iterable[AppRun], **kwargs: Any) -> dict[str, PDGraph]:
    """One PDGraph per application type found in ``runs``, learned in the order given."""
    graphs: dict[str, PDGraph] = {}
    for run in runs:
        graph = graphs.get(run.app)
        if graph is None:
            graph = graphs[run.app] = PDGraph(run.app, **kwargs)
        graph.observe(run)
    return graphs
