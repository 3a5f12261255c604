"""The edge graph: which component's output feeds which component's input.

Senders are the embeddings, every head's output and every MLP's output; receivers are every
head's query, key and value input (under grouped-query attention, the key and value of each
key-value head), every MLP's input and the logits. An edge runs from every sender to every
receiver above it; a layer's heads feed that layer's MLP. This is the graph MIB's circuit track
and EAP-IG score (Mueller et al. 2025; Hanna et al. 2024): GPT-2 small's 12 layers of 12 heads
have 32,491 edges. A receiver's input is the sum of its senders' outputs (and of what is the
same in every run, the biases); a circuit of edges keeps some of them.

Example:
    >>> edges = edge_graph(2, 2)
    >>> len(edges), edges[0].label
    (46, 'embed -> head_q L0 H0')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..core.cells import EMBED, Cell
from ..core.edge_pass import EdgeIndex
from ..core.sites import model_info
from ..errors import SettingsError

__all__ = ["Edge", "edge_graph"]

SENDER_SITES = (EMBED, "head_out", "mlp_out")
RECEIVER_SITES = ("head_q", "head_k", "head_v", "mlp_in", "logits")
LOGITS = Cell("logits")


@dataclass(frozen=True)
class Edge:
    """One edge of the graph: ``sender``'s output as part of ``receiver``'s input.

    ``receiver`` may be given as ``"logits"``; it is kept as ``Cell("logits")``.

    Example:
        >>> Edge(Cell("head_out", 0, head=3), Cell("head_q", 2, head=1)).label
        'head_out L0 H3 -> head_q L2 H1'
    """

    sender: Cell
    receiver: Cell

    def __post_init__(self) -> None:
        if self.receiver == "logits":
            object.__setattr__(self, "receiver", LOGITS)
        check_edge(self)

    @property
    def label(self) -> str:
        return f"{self.sender.label} -> {self.receiver.label}"


def _rank(cell: Cell) -> tuple[int, int]:
    """Where a component sits in the forward order, ``(layer, stage)``: the embeddings first, a layer's
    attention (stage 0) before its MLP (stage 1), the logits last."""
    if cell.site == EMBED:
        return (-1, 1)
    if cell.site == "logits":
        return (10**9, 0)
    return (cell.layer, 0 if cell.site in ("head_out", "head_q", "head_k", "head_v") else 1)


def check_edge(edge: Any) -> None:
    """Refuse an edge whose ends are not a sender and a receiver of the graph, or whose sender is not
    below its receiver (what a model cannot feed, it cannot patch)."""
    if not isinstance(edge, Edge):
        raise SettingsError(f"edges must be patchwidget.Edge objects, got {edge!r}")
    sender, receiver = edge.sender, edge.receiver
    for cell, name, sites in ((sender, "sender", SENDER_SITES), (receiver, "receiver", RECEIVER_SITES)):
        if not isinstance(cell, Cell) or cell.site not in sites or cell.pos is not None or cell.neuron is not None:
            raise SettingsError(
                f"an edge's {name} is one of {', '.join(repr(s) for s in sites)} (a Cell with a layer, a head "
                f"where it has heads, no position), got {cell!r}"
            )
    headed = {"head_out", "head_q", "head_k", "head_v"}
    for cell in (sender, receiver):
        layered = cell.site not in (EMBED, "logits")
        if layered != (cell.layer is not None) or (cell.site in headed) != (cell.head is not None):
            raise SettingsError(f"{cell.label}: give a layer for every site but 'embed' and 'logits', a head for heads")
    s, r = _rank(sender), _rank(receiver)
    if not s < r or (receiver.site in ("head_q", "head_k", "head_v") and sender.layer == receiver.layer):
        raise SettingsError(f"{edge.label}: the sender must come before the receiver (a layer's heads feed its MLP)")


def edge_graph(
    n_layers: Any, n_heads: int | None = None, n_kv_heads: int | None = None, parallel: bool = False
) -> list[Edge]:
    """Every edge of a model of ``n_layers`` layers of ``n_heads`` heads (``n_kv_heads`` key-value heads
    under grouped-query attention), receivers in forward order, each receiver's senders in forward order.
    ``parallel``: the model's attention and MLP read the same residual stream (GPT-NeoX's
    ``use_parallel_residual``), so a layer's heads do not feed its MLP. Give a loaded model instead of
    the sizes (``edge_graph(model)``) to read all four from it.

    Example:
        >>> len(edge_graph(12, 12))  # GPT-2 small, as MIB counts it
        32491
    """
    if not isinstance(n_layers, int):  # a model: its own sizes
        info = model_info(n_layers)
        n_layers, n_heads, n_kv_heads, parallel = info.n_layers, info.n_heads, info.n_kv_heads, info.parallel_residual
    if n_heads is None:
        raise SettingsError("edge_graph takes a loaded model, or n_layers and n_heads")
    kv = n_heads if n_kv_heads is None else n_kv_heads
    senders = [Cell(EMBED)]
    edges = []
    for layer in range(n_layers):
        receivers = [Cell("head_q", layer, head=h) for h in range(n_heads)]
        receivers += [Cell(site, layer, head=h) for site in ("head_k", "head_v") for h in range(kv)]
        edges += [Edge(s, r) for r in receivers for s in senders]
        heads = [Cell("head_out", layer, head=h) for h in range(n_heads)]
        edges += [Edge(s, Cell("mlp_in", layer)) for s in (senders if parallel else senders + heads)]
        senders += heads + [Cell("mlp_out", layer)]
    return edges + [Edge(s, LOGITS) for s in senders]


def is_edges(items: Any) -> bool:
    """Whether a circuit given as a list is a list of edges (a non-empty list whose items are all ``Edge``);
    a list mixing edges and nodes is refused, naming both.

    Example:
        >>> is_edges([Edge(Cell("embed"), "logits")]), is_edges([Cell("embed")])
        (True, False)
    """
    kinds = {isinstance(item, Edge) for item in items}
    if kinds == {True, False}:
        raise SettingsError("a circuit is a set of nodes (pw.Cell) or a set of edges (pw.Edge), not both")
    return kinds == {True}


def check_in_model(edges: Sequence[Edge], index: EdgeIndex) -> None:
    """Refuse an edge that this model does not have: a layer or head beyond its sizes, a key or value of a
    key-value head it lacks, or a layer's heads into its own MLP where attention and MLP run in parallel."""
    for edge in edges:
        check_edge(edge)
        for cell in (edge.sender, edge.receiver):
            heads = index.n_kv_heads if cell.site in ("head_k", "head_v") else index.n_heads
            if (cell.layer is not None and not 0 <= cell.layer < index.n_layers) or (
                cell.head is not None and not 0 <= cell.head < heads
            ):
                raise SettingsError(
                    f"{edge.label}: this model has {index.n_layers} layers of {index.n_heads} heads "
                    f"({index.n_kv_heads} key-value heads); {cell.label} is not one of its components"
                )
        same_layer = edge.sender.site == "head_out" and edge.receiver.site == "mlp_in"
        if index.parallel and same_layer and edge.sender.layer == edge.receiver.layer:
            raise SettingsError(
                f"{edge.label}: in this model a layer's attention and MLP read the same residual stream in "
                "parallel, so a layer's heads do not feed its MLP (edge_graph(..., parallel=True) leaves them out)"
            )


def numbers(edge: Edge, index: EdgeIndex) -> tuple[int, int]:
    """The edge's sender and receiver numbers in ``index``."""
    s, r = edge.sender, edge.receiver
    return index.sender(s.site, s.layer, s.head or 0), index.receiver(r.site, r.layer, r.head or 0)


def outside_masks(sets: Sequence[Sequence[Edge]], index: EdgeIndex) -> torch.Tensor:
    """Per set of kept edges, which edges of the graph are outside it: ``(set, sender, receiver)`` bools.

    Example:
        >>> index = EdgeIndex(2, 2, 2, False)
        >>> int(outside_masks([[]], index).sum()), len(edge_graph(2, 2))
        (46, 46)
    """
    out = index.exists.expand(len(sets), -1, -1).clone()
    for k, edges in enumerate(sets):
        check_in_model(edges, index)
        for edge in edges:
            out[(k, *numbers(edge, index))] = False
    return out


def drawn_at(cell: Cell, n_heads: int, n_kv_heads: int) -> Cell:
    """The node an edge's end is drawn at in a circuit diagram: a head's query, key or value at that head's
    output (a key-value head's at the first head of its group), an MLP's input at its output; senders and
    the logits at themselves. The widget's diagram and ``Circuit.plot`` both place edges so.

    Example:
        >>> drawn_at(Cell("head_v", 3, head=1), 4, 2)
        Cell(site='head_out', layer=3, head=2, neuron=None, pos=None)
    """
    if cell.site == "mlp_in":
        return Cell("mlp_out", cell.layer)
    if cell.site in ("head_q", "head_k", "head_v"):
        group = n_heads // n_kv_heads if cell.site != "head_q" else 1
        return Cell("head_out", cell.layer, head=cell.head * group)
    return cell
