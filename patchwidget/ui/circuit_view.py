"""What the searches found, as panels: the bottleneck's ranking and trace, the circuit diagram of nodes or of
edges, MIB's curve, and one edge's exact score.

The circuit diagram is laid out as ``circuit.plot()`` draws it (``Layout``): one row per layer, the last on
top, each layer's heads then its MLP, the embeddings in the last row; a circuit of edges adds the logits in a
row above. Its edges are a panel of their own (kind ``"edges"``, one row per edge) that the page draws as lines
over the diagram, from the sender's node to the receiver's: a head's query, key or value at that head (under
grouped-query attention a key-value head at the first head of its group), an MLP's input at its MLP, the logits
at the top.

Example:
    >>> Layout(4, 4, 4, logits=True).place(Cell("head_v", 3, head=1))
    (1, 1)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..circuits.edges import Edge, drawn_at
from ..core.cells import EMBED, Cell
from .panels import curve_panel, panel

CIRCUIT_PANEL = "circuit"
EDGES_PANEL = "edges"
EDGE_PANEL = "edge"  # the exact score of one clicked edge
INPUTS = {"head_q": "query", "head_k": "key", "head_v": "value"}
MAX_DRAWN_EDGES = 500  # a circuit that kept every edge of a large model is drawn by its largest edges only


@dataclass(frozen=True)
class Layout:
    """Where each node sits in the circuit diagram, as (row, column), and what each place holds."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    logits: bool = False  # a row for the logits above the last layer (a circuit of edges)

    @classmethod
    def of(cls, shape: Any, logits: bool = False) -> Layout:
        """The layout of a model's shape: a circuit's ``provenance["shape"]`` or a ``ModelInfo``."""
        get = shape.get if isinstance(shape, dict) else lambda k, d=None: getattr(shape, k, d)
        n_heads = int(get("n_heads"))
        return cls(int(get("n_layers")), n_heads, int(get("n_kv_heads") or n_heads), logits)

    @property
    def top(self) -> int:
        return 1 if self.logits else 0

    @property
    def rows(self) -> list[str]:
        return ["logits"] * self.top + [f"L{layer}" for layer in reversed(range(self.n_layers))] + ["embed"]

    @property
    def cols(self) -> list[str]:
        return [f"H{h}" for h in range(self.n_heads)] + ["MLP"]

    def first_head(self, cell: Cell) -> int:
        """The head a head's input is drawn at: a key-value head's at the first head of its group."""
        return drawn_at(cell, self.n_heads, self.n_kv_heads).head

    def place(self, cell: Cell) -> tuple[int, int]:
        """A sender's or receiver's node: (row, column)."""
        node = drawn_at(cell, self.n_heads, self.n_kv_heads)
        if node.site == EMBED:
            return self.top + self.n_layers, 0
        if node.site == "logits":
            return 0, 0
        row = self.top + self.n_layers - 1 - node.layer
        return (row, self.n_heads) if node.site == "mlp_out" else (row, node.head)

    def node_at(self, row: int, col: int) -> Cell | None:
        """The node at (row, col): the embeddings, the logits, a head's or an MLP's output, or None (no node)."""
        if row == self.top + self.n_layers:
            return Cell(EMBED) if col == 0 else None
        if row < self.top:
            return Cell("logits") if col == 0 else None
        layer = self.n_layers - 1 - (row - self.top)
        return Cell("mlp_out", layer) if col == self.n_heads else Cell("head_out", layer, head=col)

    def grid(self) -> dict:
        """The diagram's places: where no node is (``absent``), and which nodes open a narrower level."""
        shape = (len(self.rows), self.n_heads + 1)
        nodes = [[self.node_at(r, c) for c in range(shape[1])] for r in range(shape[0])]
        return {
            "absent": [[node is None for node in row] for row in nodes],
            "opens": [[node is not None and node.site != EMBED for node in row] for row in nodes],
        }


# --- the bottleneck (find_bottleneck) -------------------------------------------------------------


def search_panels(c: Any, target: float | None) -> list[dict]:
    """A bottleneck search so far or done: the last level's ranking with the kept cells marked, each level's
    counts and restore as a table, and the restore curve when done."""
    last = c.trace[-1]
    if c.reached is None:  # still searching: the level just done
        title = f"Level '{last['level']}': kept {last['kept']} of {last['candidates']} ({last['why']}); searching on"
    else:
        state = "reached" if c.reached else "did not reach"
        title = f"Bottleneck of {len(c.cells)} cells: copied together they restore {c.restore:.3f} ({state} {target})"
    kept = {cell.label for cell in c.cells}
    marked = [("● " if label in kept else "") + label for label, _ in last["ranked"]]
    ranked = panel(
        "ranked",
        title + "; ● marks the cells kept",
        "cell",
        "",
        marked,
        ["effect alone (estimate)"],
        np.array([[effect] for _, effect in last["ranked"]], dtype=float),
        False,
    )
    steps = panel(
        "trace",
        "Each level: candidates opened, kept, and the joint restore of what was kept",
        "level",
        "",
        [row["level"] for row in c.trace],
        ["candidates", "kept", "restore"],
        np.array([[row["candidates"], row["kept"], row["restore"]] for row in c.trace], dtype=float),
        False,
        diverging=False,
    ) | {"kind": "table"}  # counts and a share side by side: numbers to read, not colours
    if not c.curve:
        return [ranked, steps]
    note = (
        f"Area {c.curve['area']:.2f}: the area under this curve (1 would mean the first cell alone restores "
        "everything). This is the bottleneck's restore, not MIB's faithfulness."
    )
    title = "Restore of the last level's top cells, copied together, by how many are kept"
    line = curve_panel(title, "cells kept", "restored", c.curve["restore"], c.curve, "cells", target, note)
    return [ranked, steps, line]


# --- the circuit (find_circuit): its nodes, or its edges, and MIB's curve ------------------------------


def circuit_panels(c: Any, target: float | None) -> list[dict]:
    """The circuit as a diagram (see the module docstring), then MIB's curve as a line, the target marked,
    CPR and CMD said in words. A circuit of nodes colours each by its effect (the metric's change when that
    node alone is corrupted, in the metric's unit); a circuit of edges adds its edges as a panel of lines."""
    if c.edges:
        return [*_edge_diagram(c, target), _faithfulness_curve(c.curve, target, "edges")]
    return [_node_diagram(c, target), _faithfulness_curve(c.curve, target, "nodes")]


def _does(c: Any, what: str, target: float | None) -> str:
    state = "reached" if c.reached else "did not reach"
    return (
        f"Circuit of {what}: on their own, everything else corrupted, they do {c.faithfulness:.3f} of the task "
        f"(faithfulness as MIB defines it; {state} the target {target})"
    )


def _node_diagram(c: Any, target: float | None) -> dict:
    layout = Layout.of(c.provenance["shape"])
    values = np.full((len(layout.rows), len(layout.cols)), np.nan)
    for cell, effect in zip(c.cells, c.values):
        values[layout.place(cell)] = effect
    nodes = panel(CIRCUIT_PANEL, _does(c, f"{len(c.cells)} nodes", target), "layer", "node", layout.rows,
                  layout.cols, values, True)  # fmt: skip
    return (
        nodes
        | layout.grid()
        | {
            "kind": "nodes",
            "missing": "not in the circuit: corrupted when the circuit runs alone",
            "note": "Filled: the circuit's nodes, coloured by their effect when corrupted alone (hover for the value). "
            "Click a head for its breakdown, an MLP for its grid.",
        }
    )


def _edge_diagram(c: Any, target: float | None) -> list[dict]:
    """The nodes the circuit's edges join (filled, without a value) and the edges as a panel of lines."""
    layout = Layout.of(c.provenance["shape"], logits=True)
    ends = [(layout.place(e.sender), layout.place(e.receiver)) for e in c.edges]
    joined = {place for pair in ends for place in pair}
    values = np.full((len(layout.rows), len(layout.cols)), np.nan)
    title = _does(c, f"{len(c.edges)} edges", target)
    nodes = panel(CIRCUIT_PANEL, title, "layer", "node", layout.rows, layout.cols, values, True) | layout.grid()
    nodes |= {
        "kind": "nodes",
        "kept": [[(r, col) in joined for col in range(len(layout.cols))] for r in range(len(layout.rows))],
        "kept_note": "in the circuit: its kept edges join here",
        "missing": "not in the circuit: none of its edges is kept",
        "note": "Filled: the nodes the circuit's edges join. Click a head for its breakdown, an MLP for its grid, "
        "the logits for each head's direct path to them.",
    }
    return [nodes, _edges_panel(c, ends, layout)]


def _edges_panel(c: Any, ends: list, layout: Layout) -> dict:
    """The circuit's edges (its largest ``MAX_DRAWN_EDGES``, ranked first), one row each, to draw as lines."""
    shown = c.edges[:MAX_DRAWN_EDGES]
    drawn = f"the circuit's {len(shown)} edges" if len(shown) == len(c.edges) else (
        f"the {len(shown)} edges of largest |score| of the circuit's {len(c.edges)}"
    )  # fmt: skip
    values = np.array([[v] for v in c.edge_values[: len(shown)]], dtype=float)
    method = c.provenance.get("method", "")
    edges = panel(EDGES_PANEL, f"The circuit's {len(c.edges)} edges", "edge", "", [e.label for e in shown],
                  [f"ranking score ({method})"], values, True)  # fmt: skip
    return edges | {
        "kind": "edges",
        "on": CIRCUIT_PANEL,
        "ends": [[list(s), list(r)] for s, r in ends[: len(shown)]],
        "receivers": [e.receiver.site for e in shown],
        "edges": [[cell_fields(e.sender), cell_fields(e.receiver)] for e in shown],
        "tips": [_kv_tip(e.receiver, layout) for e in shown],
        "opens_to": [_opens_to(e.receiver, layout) for e in shown],
        "note": f"Lines: {drawn}, from the sender's node up to the receiver's (a head's query, key or value at "
        "that head, an MLP's input at its MLP); width by |score|, red where the score is negative (corrupting "
        "the edge lowers the metric), blue where positive. Hover or focus an edge for its score; click it (or "
        "Enter) for its exact score and path patching into its receiver.",
    }


def cell_fields(cell: Cell) -> dict:
    """A cell's fields that are set, as the page is sent them (``edge_at`` reads them back)."""
    return {k: getattr(cell, k) for k in ("site", "layer", "head") if getattr(cell, k) is not None}


def edge_at(edges_panel: dict, row: int) -> Edge:
    """The edge of row ``row`` of an ``"edges"`` panel, from the fields the panel holds (never its labels)."""
    sender, receiver = edges_panel["edges"][row]
    return Edge(Cell(**sender), Cell(**receiver))


def receiver_words(cell: Cell, layout: Layout) -> str:
    """A receiver in words: the value of L3 H1, the key of key-value head 0 of layer 3, the input of MLP L2."""
    if cell.site == "logits":
        return "the logits"
    if cell.site == "mlp_in":
        return f"the input of MLP L{cell.layer}"
    if cell.site in ("head_k", "head_v") and layout.n_kv_heads < layout.n_heads:
        return f"the {INPUTS[cell.site]} of key-value head {cell.head} of layer {cell.layer}"
    return f"the {INPUTS[cell.site]} of L{cell.layer} H{cell.head}"


def _kv_tip(cell: Cell, layout: Layout) -> list[str]:
    """Under grouped-query attention, where a key-value head's edge is drawn, and why."""
    if cell.site not in ("head_k", "head_v") or layout.n_kv_heads == layout.n_heads:
        return []
    first = layout.first_head(cell)
    last = first + layout.n_heads // layout.n_kv_heads - 1
    return [f"key-value head {cell.head} of layer {cell.layer} serves heads H{first}-H{last}: drawn at H{first}"]


def _opens_to(cell: Cell, layout: Layout) -> str:
    if cell.site == "mlp_in":
        return "its exact score (path patching into an MLP is not offered)"
    return f"its exact score, and path patching into {receiver_words(cell, layout)}"


def _faithfulness_curve(curve: dict, target: float | None, unit: str) -> dict:
    """MIB's faithfulness curve as a line over the circuit sizes, with CPR and CMD in a sentence each."""
    note = (
        f"CPR {curve['cpr']:.2f}: the area under this curve (higher is better; above 1 where a partial circuit "
        f"does more than the whole model). CMD {curve['cmd']:.2f}: the area between the curve and 1 (lower is "
        "better; 0 means every size does the whole task)."
    )
    title = f"Faithfulness of the top-ranked {unit}, at MIB's circuit sizes"
    return curve_panel(title, "circuit size", "faithfulness", curve["faithfulness"], curve, unit, target, note)


# --- one edge: its exact score --------------------------------------------------------------------------


def edge_score_panel(edge: Edge, score: dict, layout: Layout) -> dict:
    """One edge's exact score as a table (the clean run's metric, the metric with the edge alone corrupted, their
    difference), with what it means and what the path patching below it asks."""
    unit = f"mean over {score['n_pairs']} pair{'s' if score['n_pairs'] != 1 else ''} ({score['metric']}, as computed)"
    rows = ["m(every edge): the clean run", "m(every edge but this one)", "exact score: the difference"]
    values = np.array([[score["full"]], [score["without"]], [score["score"]]])
    title = f"Edge {edge.label}: exact score {score['score']:.3f} ({score['metric']})"
    note = (
        "The metric with this edge alone corrupted (its sender's corrupted output into this receiver only, every "
        "other edge clean) minus the clean run's, the mean over the pairs, as pw.edge_scores(method='exact') "
        "scores it: negative where the edge carries what the task needs. "
    )
    if edge.receiver.site == "mlp_in":
        note += (
            "Path patching into an MLP is not offered (pw.path_patch's receivers are heads' queries, keys and "
            "values, and the logits): click the MLP's node in the circuit view for its grid."
        )
    else:
        note += (
            f"Below: path patching into {receiver_words(edge.receiver, layout)}: each head's output sent to it in "
            "the widget's direction, every other head frozen and the MLPs between recomputing (so paths through "
            "MLPs count too); the edge is the direct path alone."
        )
    return panel(EDGE_PANEL, title, "", "", rows, [unit], values, False, diverging=False) | {
        "kind": "table",
        "note": note,
    }


def sender_mark(edge: Edge) -> dict:
    """Where the edge's sender is in a path-patching grid (layer by head), or why it is not there."""
    s = edge.sender
    if s.site == "head_out":
        return {"mark_cell": [s.layer, s.head], "note": f"Outlined: the edge's sender, L{s.layer} H{s.head}."}
    return {"note": f"The edge's sender, {s.label}, is not a head: path patching sends heads, so it is not here."}
