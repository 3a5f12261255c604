"""Edge scores: how much each edge of the graph matters, exactly or by a first-order estimate.

``pw.edge_scores`` scores every edge of ``pw.edge_graph(model)`` by the mean over pairs of
the metric's change when that edge alone carries its sender's corrupted output into its
receiver (every other edge clean): m(G \\ {e}) - m(G), negative where corrupting the edge
lowers the metric. ``method="exact"`` runs each edge's copy (``edge_exact``): the exact edge
activation patching MIB's circuit track scores best (Mueller et al. 2025). ``"eap"`` and
``"eap-ig"`` estimate the same change to first order from gradients (``edge_attribution``):
EAP (Syed et al. 2023) at the clean run, EAP-IG (Hanna et al. 2024; MIB's EAP-IG-inputs)
averaged over ``steps`` runs with embeddings interpolated between the corrupted and clean runs.

Example:
    >>> import patchwidget as pw
    >>> model = pw.load_model()
    >>> scores = pw.edge_scores(model, **pw.demo_data.as_prompts(pw.demo_data.ioi_pairs(8)))
    >>> scores.top(1)[0][0].receiver  # doctest: +SKIP
    Cell(site='logits', ...)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core import metrics as M
from ..core.cells import Cell, check_choice
from ..core.edge_pass import EdgeIndex, check_edge_model
from ..core.engine import entry_point, provenance
from ..core.runs import Progress
from ..core.sites import model_info
from ..data.prompts import Noise, Texts
from ..errors import ResultFileError, SettingsError
from ..files import write_atomic
from .edge_attribution import check_method, edge_attribution
from .edge_exact import exact_edge_scores, reads_for_exact
from .edges import Edge, edge_graph, numbers
from .faithfulness import circuit_runs

__all__ = ["METHODS", "EdgeScores", "edge_scores"]

METHODS = ("exact", "eap", "eap-ig")
FORMAT, VERSION = "patchwidget.edge_scores", 1


@dataclass
class EdgeScores:
    """A score per edge of the graph, in ``edges`` order: the mean change of the metric when that edge alone is
    corrupted. ``method`` says how it was computed; ``provenance`` what it was computed on.

    Example:
        >>> scores.score(pw.Edge(pw.Cell("head_out", 3, head=1), "logits"))  # doctest: +SKIP
        -2.41
    """

    edges: list[Edge]
    values: np.ndarray
    method: str
    provenance: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=float)
        self._at = {edge: i for i, edge in enumerate(self.edges)}

    def __len__(self) -> int:
        return len(self.edges)

    def __repr__(self) -> str:
        return f"EdgeScores({len(self)} edges, method={self.method!r})"

    def score(self, edge: Edge) -> float:
        """The score of one edge; an edge the graph lacks is refused, naming it."""
        if edge not in self._at:
            raise SettingsError(f"{getattr(edge, 'label', edge)} is not an edge of this graph")
        return float(self.values[self._at[edge]])

    def top(self, k: int = 10) -> list[tuple[Edge, float]]:
        """The ``k`` edges of largest score magnitude, largest first, with their scores."""
        order = np.argsort(-np.abs(self.values), kind="stable")[:k]
        return [(self.edges[i], float(self.values[i])) for i in order]

    def to_dataframe(self) -> Any:
        """One row per edge: sender, receiver and score (pandas)."""
        import pandas as pd

        return pd.DataFrame(
            {
                "sender": [e.sender.label for e in self.edges],
                "receiver": [e.receiver.label for e in self.edges],
                "score": self.values,
            }
        )

    def save(self, path: str | Path) -> Path:
        """Write the scores as versioned JSON (never pickle), all or nothing."""
        data = {
            "format": FORMAT,
            "version": VERSION,
            "method": self.method,
            "provenance": self.provenance,
            "edges": [[_cell_dict(e.sender), _cell_dict(e.receiver)] for e in self.edges],
            "values": [float(v) for v in self.values],
        }
        return write_atomic(path, json.dumps(data))

    @classmethod
    def load(cls, path: str | Path) -> EdgeScores:
        """Read scores written by ``save``; a damaged or altered file raises ``ResultFileError``."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError, RecursionError) as err:
            raise ResultFileError(f"could not read {str(path)!r}: {type(err).__name__}: {err}") from err
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
            raise ResultFileError(f"{str(path)!r} is not a patchwidget edge-scores file of version {VERSION}")
        try:
            edges = [Edge(Cell(**s), Cell(**r)) for s, r in data["edges"]]
            values = [float(v) for v in data["values"]]
            if len(values) != len(edges):
                raise ValueError(f"{len(edges)} edges but {len(values)} scores")
            return cls(edges, np.array(values), str(data["method"]), dict(data.get("provenance", {})))
        except (KeyError, TypeError, ValueError, SettingsError) as err:
            raise ResultFileError(f"edge-scores file {str(path)!r} is malformed: {err}") from err


def _cell_dict(cell: Cell) -> dict[str, Any]:
    return {k: getattr(cell, k) for k in ("site", "layer", "head") if getattr(cell, k) is not None}


@entry_point
def edge_scores(
    model: Any,
    clean: Texts,
    corrupt: Texts | Noise,
    *,
    answer: Texts,
    wrong: Texts,
    method: str = "exact",
    steps: int = 5,
    ablation: str = "patch",
    metric: M.Metric = M.DEFAULT,
    batch_size: int = 64,
    memory_budget: float | None = None,
    progress: Progress | None = None,
    remote: bool | str = False,
) -> EdgeScores:
    """Score every edge of ``pw.edge_graph(model)``: the mean over pairs of m(G \\ {e}) - m(G), the metric's change
    when edge e alone carries its sender's corrupted output (``ablation="mean"``: its mean over the corrupted
    prompts) into its receiver: exactly (``method="exact"``), or estimated from gradients (``"eap"``, ``"eap-ig"``
    over ``steps`` interpolations). See the module docstring.

    Example:
        >>> scores = pw.edge_scores(model, clean, corrupt, answer="Mary", wrong="John")  # doctest: +SKIP
        >>> scores.top(3)  # doctest: +SKIP
    """
    check_choice(method, METHODS, "method")
    if method != "exact":
        check_method(method, steps)
    info = model_info(model)
    check_edge_model(model, info)  # before the runs: their reads are the receivers' inputs, which it checks exist
    graph = edge_graph(model)
    runs = circuit_runs(
        model,
        clean,
        corrupt,
        answer=answer,
        wrong=wrong,
        ablation=ablation,
        metric=metric,
        batch_size=batch_size,
        memory_budget=memory_budget,
        progress=progress,
        remote=remote,
        circuits=[graph],
        more_reads=reads_for_exact(info) if method == "exact" else None,
    )
    values = score_edges(runs, graph, method, steps, progress)
    about = {
        **provenance(model, runs.request),
        "ablation": ablation,
        **({"steps": steps} if method == "eap-ig" else {}),
    }
    return EdgeScores(graph, values, method, about)


def score_edges(runs: Any, graph: list[Edge], method: str, steps: int, progress: Progress | None) -> np.ndarray:
    """The scores of ``graph``'s edges, in its order, by ``method`` on prepared runs (``circuit_runs``; for
    ``"exact"`` with ``reads_for_exact``)."""
    table = exact_edge_scores(runs, progress) if method == "exact" else edge_attribution(runs, method, steps, progress)
    index = EdgeIndex.of(runs.request.info)
    at = torch.tensor([numbers(e, index) for e in graph])
    return table[at[:, 0], at[:, 1]].numpy()
