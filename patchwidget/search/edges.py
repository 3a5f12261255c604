"""Find a circuit of edges: the smallest top-ranked set of edges that does the task on its own.

``find_circuit(..., level="edges")`` ranks every edge of ``pw.edge_graph(model)`` by its score
(``pw.edge_scores``: EAP-IG by default, ``method="exact"`` on request), then measures MIB's
faithfulness of the top-k edges exactly (``faithfulness`` of edges: every edge outside the set
carries its sender's corrupted output into its receiver) at MIB's sizes, 0.1 to 100 % of the
edges, in batched passes. Between the last size short of ``target`` and the first that reaches
it, the top-k are bisected, eight sizes per batched pass, down to the smallest k that reaches
the target with k - 1 short of it. (f need not grow with k: this is the smallest on the way down
from MIB's sizes, not a search of every k.) The curve of f at MIB's sizes, with CPR and CMD,
comes with the circuit.

Example:
    >>> found = pw.find_circuit(model, **prompts, level="edges", target=0.9)  # doctest: +SKIP
    >>> len(found.edges), found.faithfulness  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..circuits.circuit import Circuit
from ..circuits.edge_exact import reads_for_exact
from ..circuits.edge_scores import score_edges
from ..circuits.edges import edge_graph
from ..circuits.faithfulness import CircuitRuns, circuit_runs, curve, curve_sizes, ratio
from ..core.edge_pass import check_edge_model
from ..core.engine import provenance
from ..core.runs import Progress
from ..core.sites import model_info

__all__ = ["find_edge_circuit"]

CHUNK = 8  # sizes measured per batched pass while bisecting
TOP_SHOWN = 20  # ranked edges recorded in the trace
RANKING = {"attribution": "eap-ig", "eap": "eap", "eap-ig": "eap-ig", "exact": "exact"}


def find_edge_circuit(
    model: Any, texts: dict, target: float, method: str, settings: dict, progress: Progress | None
) -> Circuit:
    """``find_circuit(level="edges")``: see the module docstring. ``settings`` holds ablation, metric,
    batch_size, memory_budget and remote; ``method`` is one of ``RANKING``."""
    info = model_info(model)
    check_edge_model(model, info)
    ranking = RANKING[method]
    graph = edge_graph(model)
    more = reads_for_exact(info) if ranking == "exact" else None
    runs = circuit_runs(model, **texts, **settings, progress=None, circuits=[graph], more_reads=more)
    scores = score_edges(runs, graph, ranking, 5, progress)
    order = np.argsort(-np.abs(scores), kind="stable")
    ranked = [graph[i] for i in order]
    m_empty = runs.measure_edges([[]])[0]
    sizes = curve_sizes(len(ranked))
    measured = dict(zip(sizes, runs.measure_edges([ranked[:k] for k in sizes], progress)))
    size, faith = _smallest_reaching(runs, ranked, measured, m_empty, target, progress)
    reached = faith[size] >= target
    why = f"the top {size} of {len(graph)} edges by {ranking} score do {faith[size]:.3f} of the task on their own" + (
        f" >= {target}; the top {size - 1} do less" if reached else f", short of {target}: kept every edge"
    )
    trace = [
        {
            "level": "edges",
            "candidates": len(graph),
            "kept": size,
            "faithfulness": faith[size],
            "reached": reached,
            "why": why,
            "ranked": [[ranked[j].label, float(scores[order[j]])] for j in range(min(TOP_SHOWN, len(ranked)))],
        }
    ]
    about = {**provenance(model, runs.request), "method": ranking, "ablation": settings["ablation"]}
    return Circuit(
        [],
        provenance={**about, "search": {"target": target, "level": "edges"}},
        faithfulness=faith[size],
        reached=reached,
        trace=trace,
        curve=curve(runs, ranked, measured, m_empty, measure=runs.measure_edges),
        edges=ranked[:size],
        edge_values=[float(scores[order[j]]) for j in range(size)],
    )


def _smallest_reaching(
    runs: CircuitRuns,
    ranked: list,
    measured: dict[int, torch.Tensor],
    m_empty: torch.Tensor,
    target: float,
    progress: Progress | None,
) -> tuple[int, dict[int, float]]:
    """The smallest size reaching ``target`` by bisection between MIB's sizes, and f of every measured size."""
    faith = {k: ratio(v, m_empty, runs.clean) for k, v in measured.items() if k > 0}
    reaching = sorted(k for k, f in faith.items() if f >= target)
    if not reaching:
        return len(ranked), faith
    high = reaching[0]
    low = max([k for k in faith if k < high], default=0)  # short of the target (or nothing kept)
    while high - low > 1:
        step = max(1, (high - low) // (CHUNK + 1))
        sizes = list(range(low + step, high, step))[:CHUNK]
        got = runs.measure_edges([ranked[:k] for k in sizes], progress)
        for k, m in zip(sizes, got):
            measured[k] = m
            faith[k] = ratio(m, m_empty, runs.clean)
        above = [k for k in sizes if faith[k] >= target]
        high = above[0] if above else high
        low = max([k for k in sizes if k < high], default=low)
    return high, faith
