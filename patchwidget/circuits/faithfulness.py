"""Faithfulness as the field defines it: does a circuit do the task on its own?

For a set C of components (nodes) and a metric m averaged over the prompt pairs,
MIB's circuit-localisation track (Mueller et al. 2025, "MIB: A Mechanistic
Interpretability Benchmark"; as ACDC and EAP-IG evaluate circuits) defines

    f(C) = (m(C) - m(∅)) / (m(N) - m(∅))

where m(C) runs the *clean* input with every component outside C replaced by its
activation on the *corrupted* input (its own corrupted-run activation, position by
position; ``ablation="mean"``: the mean over the corrupted prompts), m(∅) replaces
every component and m(N) none (the clean run). The means are taken over pairs
before the ratio, as MIB's ``evaluate_area_under_curve`` does.

This is not the denoising restore of the set (copy the set's clean activations into
the corrupted run, ``patch_sites``): that asks whether a set is a *bottleneck*
(``pw.find_bottleneck``); f asks whether it is a *circuit*.

The nodes: ``Cell("embed")`` (token and position embeddings), ``Cell("head_out", l,
head=h)`` and ``Cell("mlp_out", l)``. A node with ``pos=None`` is in the circuit at
every position; with a position (or a template's span label) only there, and it is
still replaced everywhere else. Each evaluated set is one patched copy per pair in
the engine's batched loop (``engine.patched_metric``), its writes the complement.

Example:
    >>> import patchwidget as pw
    >>> pairs = pw.demo_data.ioi_pairs(8)
    >>> f = pw.faithfulness(pw.load_model(), **pw.demo_data.as_prompts(pairs), circuit=pw.faithfulness_nodes(4, 4))
    >>> round(f, 3)
    1.0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ..core import metrics as M
from ..core.cells import EMBED, Cell, Write, check_choice, indices
from ..core.edge_pass import EdgeIndex, check_edge_model, edge_metric_logits, sender_outputs
from ..core.engine import Request, entry_point, fit_budget, patched_metric, prepare, summarize
from ..core.runs import Directed, Progress, cached_runs, with_noise
from ..data.prompts import Noise, PromptBatch, Texts
from ..errors import SettingsError
from .edges import Edge, check_in_model, is_edges, outside_masks

__all__ = ["ABLATIONS", "CURVE_PERCENTS", "faithfulness", "faithfulness_nodes"]

ABLATIONS = ("patch", "mean")
NODE_SITES = (EMBED, "head_out", "mlp_out")
EDGE_PASS_BYTES = 2**30  # what an edge pass's per-sender outputs and per-receiver inputs may hold at once
# MIB's circuit sizes, in % of the components; a size keeps int(p / 100 * n) top-ranked components.
CURVE_PERCENTS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)
Node = tuple[str, int, int]  # (site, layer, unit): the write that replaces the component


def faithfulness_nodes(n_layers: int, n_heads: int) -> list[Cell]:
    """Every component of a model, in forward order: the embeddings, then each layer's heads and MLP.

    Example:
        >>> [c.label for c in faithfulness_nodes(1, 2)]
        ['embed', 'head_out L0 H0', 'head_out L0 H1', 'mlp_out L0']
    """
    out = [Cell(EMBED)]
    for layer in range(n_layers):
        out += [Cell("head_out", layer, head=h) for h in range(n_heads)] + [Cell("mlp_out", layer)]
    return out


def _node(cell: Any, n_layers: int, n_heads: int) -> Node:
    """The component a Cell names, checked: only the three node kinds, in range."""
    if not isinstance(cell, Cell):
        raise SettingsError(f"a circuit's nodes must be patchwidget.Cell objects, got {cell!r}")
    if cell.site not in NODE_SITES:
        hint = " (neurons are not nodes here: use the MLP, Cell('mlp_out', layer))" if cell.site == "mlp_neuron" else ""
        raise SettingsError(
            f"{cell.label}: a circuit's nodes are Cell('embed'), Cell('head_out', layer, head=h) and "
            f"Cell('mlp_out', layer){hint}"
        )
    if cell.site == EMBED:
        if cell.layer is not None or cell.head is not None or cell.neuron is not None:
            raise SettingsError(f"{cell.label}: the 'embed' node has no layer, head or neuron; give Cell('embed')")
        return (cell.site, 0, 0)
    layer = indices([cell.layer], n_layers, "layer", "layers")[0]
    if cell.neuron is not None or (cell.site == "mlp_out") != (cell.head is None):
        raise SettingsError(f"{cell.label}: head_out nodes name a head, mlp_out nodes none")
    head = 0 if cell.head is None else indices([cell.head], n_heads, "head", "heads")[0]
    return (cell.site, layer, head)


def kept_positions(circuit: Sequence[Cell], prompts: PromptBatch, n_layers: int, n_heads: int) -> dict:
    """{component: None (in the circuit everywhere) or the set of positions or span labels it is kept at}."""
    kept: dict[Node, set | None] = {}
    for cell in circuit:
        node = _node(cell, n_layers, n_heads)
        if cell.pos is None:
            kept[node] = None
            continue
        if prompts.columns is None:
            if isinstance(cell.pos, str):
                raise SettingsError(f"{cell.label}: pos is a span label, which needs prompts made from a template")
            where = indices([cell.pos], prompts.n_pos, "pos", "tokens", negative_ok=True)[0]
        elif cell.pos not in prompts.columns:
            raise SettingsError(f"{cell.label}: pos must be a span label, one of {', '.join(prompts.columns)}")
        else:
            where = cell.pos
        if node not in kept or kept[node] is not None:
            kept[node] = (kept.get(node) or set()) | {where}
    return kept


def complement(kept: dict, every: list[Node], rows: PromptBatch, row: int) -> tuple[Write, ...]:
    """The writes of one copy (row ``row``'s clean prompt): every component outside the circuit takes the
    corrupted value at every position it is not kept at."""
    length = rows.n_pos if rows.clean_len is None else int(rows.clean_len[row])
    writes = []
    for node in every:
        if node in kept and kept[node] is None:
            continue
        out = set()
        for where in kept.get(node) or ():
            if isinstance(where, str):  # a span label: that pair's positions of the span
                out |= set(rows.clean_spans[row][rows.columns.index(where)])
            else:
                out.add(where)
        positions = tuple(p for p in range(length) if p not in out)
        if positions:
            site, layer, unit = node
            writes.append(Write(layer, "resid_pre" if site == EMBED else site, unit, positions))
    return tuple(writes)


def outside_writes(circuit: Sequence[Cell], prompts: PromptBatch, n_layers: int, n_heads: int) -> list:
    """Per pair, the writes that run ``circuit`` on its own, as m(C) does: every node outside it takes the
    corrupted run's value at every position it is not kept at (``complement``), in the clean run.

    Example:
        >>> outside_writes([Cell("embed")], prompts, 4, 4)[0][0]   # doctest: +SKIP
        Write(layer=0, site='head_out', unit=0, positions=(0, 1, ...))
    """
    kept = kept_positions(circuit, prompts, n_layers, n_heads)
    every = [_node(c, n_layers, n_heads) for c in faithfulness_nodes(n_layers, n_heads)]
    return [complement(kept, every, prompts, pair) for pair in range(prompts.n_pairs)]


# --- the prepared request: runs and baselines, then any number of sets ---------------------------


@dataclass
class CircuitRuns:
    """A request's runs, ready to measure m(C) for any sets C: ``measure(sets) -> (set, pair)``."""

    model: Any
    request: Request
    rows: PromptBatch  # one row per pair and noise sample
    directed: Directed  # source: the corrupted (or mean) values; target: the clean run
    per_pass: int
    every: list[Node]
    logits: tuple[torch.Tensor, torch.Tensor]  # the clean and corrupted runs' logits, (row, vocab)
    clean: torch.Tensor  # m(N) per pair, in the request's metric
    progress: Progress | None

    @property
    def n_pairs(self) -> int:
        return self.request.prompts.n_pairs

    def per_pair(self, values: torch.Tensor) -> torch.Tensor:
        """Per-row metrics ``(row, ...)`` as per-pair ones ``(pair, ...)`` in the request's metric: the mean
        over noise samples, then for ``logit_diff_norm`` each pair rescaled so its clean run is 1 and its
        corrupted run 0 (``engine.summarize``, as every grid does)."""
        return summarize(values, self.rows, self.n_pairs, self.request.metric, *self.logits)[0]

    def measure(self, sets: list[Sequence[Cell]], progress: Progress | None = None) -> torch.Tensor:
        """m(C) per set and pair, ``(set, pair)``: one patched copy of each row's clean prompt per set."""
        info, prompts = self.request.info, self.request.prompts
        kept = [kept_positions(s, prompts, info.n_layers, info.n_heads) for s in sets]
        copies = [(row, complement(k, self.every, self.rows, row)) for row in range(self.rows.n_pairs) for k in kept]
        with torch.no_grad():
            values = patched_metric(
                self.model, self.request, self.directed, copies, self.rows, self.per_pass, progress or self.progress
            )
        return self.per_pair(values.view(self.rows.n_pairs, len(sets))).T  # (set, pair)

    @property
    def edge_rows_per_pass(self) -> int:
        """Rows per edge pass (faithfulness's and the gradients'): each row holds every sender's output and the
        inputs of a layer's receivers at every position, ``EDGE_PASS_BYTES`` at most, and no more rows than the
        request's own passes take."""
        info, index = self.request.info, EdgeIndex.of(self.request.info)
        row_bytes = 4 * self.directed.target_ids.shape[1] * info.d_model * (2 * index.n_senders + 3 * index.per_layer)
        return max(1, min(self.per_pass, EDGE_PASS_BYTES // row_bytes))

    def measure_edges(self, sets: list[Sequence[Edge]], progress: Progress | None = None) -> torch.Tensor:
        """m(C) per set of kept edges and pair, ``(set, pair)``: each row's clean prompt once per set, every edge
        outside the set carrying its sender's corrupted (or mean) output into its receiver only
        (``core.edge_pass``)."""
        check_edge_request(self.model, self.request, sets)
        return self.measure_outside(outside_masks(sets, EdgeIndex.of(self.request.info)), progress)

    def measure_outside(self, outside: torch.Tensor, progress: Progress | None = None) -> torch.Tensor:
        """``measure_edges`` for sets given as which edges are outside them, ``(set, sender, receiver)`` bools in
        ``EdgeIndex`` numbering (already checked)."""
        info, model, n_sets = self.request.info, self.model, len(outside)
        corrupt = sender_outputs(model, info, self.directed.source)  # (row, pos, sender, d_model)
        copies = [(row, k) for row in range(self.rows.n_pairs) for k in range(n_sets)]
        per_pass = self.edge_rows_per_pass
        values, fn, d = torch.empty(len(copies)), self.request.metric, self.directed
        for start in range(0, len(copies), per_pass):
            rows = torch.tensor([row for row, _ in copies[start : start + per_pass]])
            kept = torch.tensor([k for _, k in copies[start : start + per_pass]])
            ext = None if d.target_ext is None else d.target_ext.rows(rows)
            with torch.no_grad():
                logits = edge_metric_logits(
                    model, info, d.target_ids[rows], d.target_len[rows], corrupt[rows], outside[kept],
                    self.request.remote, ext,
                )  # fmt: skip
            args = (self.rows.answer_ids[rows], self.rows.wrong_ids[rows], d.clean_logits[rows])
            values[start : start + len(rows)] = fn(logits, *args).float().cpu()
            if progress or self.progress:
                (progress or self.progress)(start + len(rows), len(copies))
        return self.per_pair(values.view(self.rows.n_pairs, n_sets)).T  # (set, pair)


def circuit_runs(
    model: Any,
    clean: Texts,
    corrupt: Texts | Noise,
    *,
    answer: Texts,
    wrong: Texts,
    ablation: str,
    metric: M.Metric,
    batch_size: int,
    memory_budget: float | None,
    progress: Progress | None,
    remote: bool | str,
    runs_cache: dict | None = None,
    circuits: Sequence[Sequence[Cell]] = (),
    more_reads: dict[str, list[int]] | None = None,
) -> CircuitRuns:
    """Validate a faithfulness request (and the node sets or edge sets ``circuits``) before any forward pass,
    then run the clean and corrupted runs: the one preamble of every circuit evaluation (``faithfulness``,
    ``find_circuit``, ``Circuit.faithfulness_on``, ``edge_scores``). The runs record every node's output,
    and ``more_reads`` (site -> layers) besides."""
    check_choice(ablation, ABLATIONS, "ablation")
    sites = {"resid_pre", "head_out", "mlp_out", *(more_reads or {})}
    request = prepare(
        model,
        clean,
        corrupt,
        answer=answer,
        wrong=wrong,
        sites=sites,
        metric=metric,
        direction="noise",  # the clean run, with components outside the circuit given corrupted values
        batch_size=batch_size,
        memory_budget=memory_budget,
        remote=remote,
    )
    info, prompts = request.info, request.prompts
    if not prompts.aligned_one_to_one:
        raise SettingsError(
            "faithfulness replaces each component position by position with its corrupted-run value, and these "
            "pairs' clean and corrupted prompts have spans of different lengths: give pairs whose spans match"
        )
    if ablation == "mean" and (prompts.clean_len is not None and bool((prompts.lengths != prompts.n_pos).any())):
        raise SettingsError(
            "ablation='mean' averages the corrupted prompts position by position: they must have one length"
        )
    for cells in circuits:
        if is_edges(cells):
            check_edge_request(model, request, [cells])
        else:
            kept_positions(cells, prompts, info.n_layers, info.n_heads)
    rows, noise = with_noise(model, info, prompts, remote)
    per_pass = fit_budget(model, request, sites, rows)
    reads = {"resid_pre": [0], "head_out": list(range(info.n_layers)), "mlp_out": list(range(info.n_layers))}
    for site, layers in (more_reads or {}).items():
        reads[site] = sorted({*reads.get(site, []), *layers})
    with torch.no_grad():
        keep_kv = request.speedups.reuse_prefix
        runs = cached_runs(runs_cache, model, info, reads, rows, noise, remote, per_pass, progress, keep_kv)
    directed = runs.directed("noise", noise)
    if ablation == "mean":  # every row's source value: the mean over the corrupted prompts, position by position
        directed = replace(
            directed, source={k: v.mean(0, keepdim=True).expand_as(v).clone() for k, v in directed.source.items()}
        )
    every = [_node(c, info.n_layers, info.n_heads) for c in faithfulness_nodes(info.n_layers, info.n_heads)]
    logits = (runs.clean_logits, runs.corrupt_logits)
    m_full = request.metric(runs.clean_logits, rows.answer_ids, rows.wrong_ids, runs.clean_logits)
    m_full = summarize(m_full, rows, prompts.n_pairs, request.metric, *logits)[0]
    return CircuitRuns(model, request, rows, directed, per_pass, every, logits, m_full, progress)


def check_edge_request(model: Any, request: Request, sets: Sequence[Sequence[Edge]]) -> None:
    """Refuse, before compute, edges this model does not have and a model whose receivers' inputs edges cannot
    write out."""
    check_edge_model(model, request.info)
    for edges in sets:
        check_in_model(edges, EdgeIndex.of(request.info))


def circuit_cells(circuit: Any) -> list[Cell]:
    """The nodes of ``circuit``: a ``pw.Circuit``, a list (or tuple, or set) of ``pw.Cell`` nodes, or one
    ``pw.Cell`` (a one-node circuit); anything else is refused naming these forms.

    Example:
        >>> circuit_cells(Cell("head_out", 3, head=1))
        [Cell(site='head_out', layer=3, head=1, neuron=None, pos=None)]
    """
    if isinstance(circuit, Cell | Edge):
        return [circuit]
    cells = getattr(circuit, "edges", None) or getattr(circuit, "cells", circuit)  # a Circuit: its edges, or nodes
    if isinstance(cells, list | tuple | set | frozenset):
        return list(cells)
    raise SettingsError(
        "circuit must be a pw.Circuit, a list of pw.Cell nodes or one pw.Cell (for example "
        f"[pw.Cell('embed'), pw.Cell('head_out', 3, head=1)]), got {circuit!r}"
    )


def ratio(m_circuit: torch.Tensor, m_empty: torch.Tensor, m_full: torch.Tensor) -> float:
    """MIB's f from per-pair metrics: (mean m(C) - mean m(∅)) / (mean m(N) - mean m(∅))."""
    span = float(m_full.mean() - m_empty.mean())
    if abs(span) < 1e-6 * max(1.0, float(m_full.abs().mean())):
        raise SettingsError(
            f"the full model and the empty circuit give the same mean metric ({float(m_full.mean()):.4g}): "
            "these pairs show no behaviour for a circuit to do"
        )
    return float(m_circuit.mean() - m_empty.mean()) / span


@entry_point
def faithfulness(
    model: Any,
    clean: Texts,
    corrupt: Texts | Noise,
    *,
    answer: Texts,
    wrong: Texts,
    circuit: Any,
    ablation: str = "patch",
    metric: M.Metric = M.DEFAULT,
    batch_size: int = 64,
    memory_budget: float | None = None,
    progress: Progress | None = None,
    remote: bool | str = False,
) -> float:
    """How much of the behaviour a circuit does on its own: MIB's faithfulness f(C) (see the module docstring).

    ``circuit`` is a ``pw.Circuit`` of nodes, a list of nodes (``Cell("embed")``,
    ``Cell("head_out", l, head=h)``, ``Cell("mlp_out", l)``), possibly empty, or one node;
    or a list of edges (``pw.Edge``, see ``pw.edge_graph``): every edge outside it then carries
    its sender's corrupted output into that one receiver (``core.edge_pass``).
    1 means the circuit alone, everything else corrupted, gives the full model's
    metric; 0 means it does no more than the empty circuit. ``ablation="mean"``
    replaces the components outside with their mean over the corrupted prompts.

    ``metric`` is the m of the formula, computed as every grid computes it. The
    default ``"logit_diff"`` is MIB's: the means of the raw logit differences.
    With ``"logit_diff_norm"`` each pair's logit difference is first rescaled by
    that pair's clean (1) and corrupted (0) runs, so every pair weighs the same
    whatever its scale; the number then differs from MIB's whenever the pairs'
    scales differ (see the README's *Faithfulness*).

    Example:
        >>> pw.faithfulness(model, **prompts, circuit=[pw.Cell("head_out", 3, head=1)])  # doctest: +SKIP
        0.0
    """
    cells = circuit_cells(circuit)
    edges = is_edges(cells)
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
        circuits=[cells],
    )
    if not edges:
        m_circuit, m_empty = runs.measure([cells, []])
        return ratio(m_circuit, m_empty, runs.clean)
    m_circuit, m_empty = runs.measure_edges([cells, []])
    if ablation == "patch":
        check_empty_is_corrupt(runs, m_empty)
    return ratio(m_circuit, m_empty, runs.clean)


def check_empty_is_corrupt(runs: CircuitRuns, m_empty: torch.Tensor) -> None:
    """Every edge corrupted must give the corrupted run: refuse a model on which it does not (its residual stream
    is not the sum of the outputs the edges carry), rather than report a number built on that sum."""
    corrupted = summarize(torch.zeros(runs.rows.n_pairs), runs.rows, runs.n_pairs, runs.request.metric, *runs.logits)[2]
    scale = max(1.0, float(corrupted.abs().max()))
    if not torch.allclose(m_empty, corrupted, rtol=0, atol=1e-3 * scale):
        raise SettingsError(
            f"with every edge corrupted this model gives {m_empty.tolist()} where its corrupted run gives "
            f"{corrupted.tolist()}: its residual stream is not the sum of the outputs edges carry"
        )


# --- MIB's curve: faithfulness at circuit sizes, and the areas CPR and CMD -----------------------


def curve_sizes(n: int) -> list[int]:
    """How many top-ranked components each of MIB's sizes keeps: ``int(p / 100 * n)``."""
    return [int(p / 100 * n) for p in CURVE_PERCENTS]


def areas(f: Sequence[float]) -> tuple[float, float]:
    """CPR and CMD of a faithfulness curve at ``CURVE_PERCENTS``, as MIB computes them: trapezoids over the
    fractions 0.001 ... 1 of the area under f (CPR) and of the area between f and 1 (CMD)."""
    x = np.asarray(CURVE_PERCENTS, dtype=float) / 100
    y = np.asarray(f, dtype=float)
    cpr = float(np.sum(np.diff(x) * (y[:-1] + y[1:]) / 2))
    cmd = float(np.sum(np.diff(x) * (np.abs(1 - y[:-1]) + np.abs(1 - y[1:])) / 2))
    return cpr, cmd


def curve(
    runs: CircuitRuns, ranked: list, measured: dict[int, torch.Tensor], m_empty: torch.Tensor, measure: Any = None
) -> dict:
    """f at MIB's sizes of the ranking (missing prefixes measured in one more batched pass), per pair and on
    average, with CPR and CMD of the mean curve and of each pair's. ``ranked`` holds nodes (measured by
    ``runs.measure``) or edges (``measure=runs.measure_edges``)."""
    sizes = curve_sizes(len(ranked))
    missing = sorted({k for k in sizes if k not in measured})
    if missing:
        measured.update(zip(missing, (measure or runs.measure)([ranked[:k] for k in missing])))
    mean = [ratio(measured[k], m_empty, runs.clean) for k in sizes]
    # Each pair's own f (NaN or infinite for a pair whose full and empty circuits agree), (pair, size).
    per_pair = np.stack([((measured[k] - m_empty) / (runs.clean - m_empty)).numpy() for k in sizes], axis=1)
    cpr, cmd = areas(mean)
    pair_areas = [areas(row) for row in per_pair]
    return {
        "kind": "faithfulness",
        "ranked": list(ranked),
        "percent": list(CURVE_PERCENTS),
        "size": sizes,
        "faithfulness": mean,
        "per_pair": per_pair.T.tolist(),  # (size, pair)
        "cpr": cpr,
        "cmd": cmd,
        "per_pair_cpr": [a[0] for a in pair_areas],
        "per_pair_cmd": [a[1] for a in pair_areas],
    }
