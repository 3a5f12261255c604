"""Static matplotlib figures of a PatchResult, for papers and saved notebooks.

Example:
    >>> fig = result.plot()           # doctest: +SKIP
    >>> fig.savefig("grid.png")       # doctest: +SKIP
"""

from __future__ import annotations

import io
from typing import Any, Protocol

import numpy as np
from matplotlib.figure import Figure


class PatchResult(Protocol):
    """What plot reads of a result (``grids.result.PatchResult`` is one): plot sits on the ground floor,
    below the results it draws, so it names the shape it needs instead of importing the class."""

    dims: tuple[str, ...]
    settings: dict[str, Any]

    @property
    def values(self) -> np.ndarray: ...

    def labels(self, dim: str) -> list[str]: ...


def grid_2d(result: PatchResult) -> tuple[np.ndarray, list[str], list[str]]:
    """The result as one 2-D table: (rows, columns, row labels, column labels).

    The last axis becomes the columns and the others are flattened into rows,
    so a (layer, head, pos) grid shows one row per layer and head.
    """
    values = result.values
    if values.ndim == 1:
        values = values[:, None]
        return values, result.labels(result.dims[0]), [""]
    rows = [""]
    for dim in result.dims[:-1]:
        rows = [f"{r} {label}".strip() for r in rows for label in result.labels(dim)]
    return values.reshape(-1, values.shape[-1]), rows, result.labels(result.dims[-1])


def plot_result(
    result: PatchResult,
    ax: Any = None,
    vmax: float | None = None,
    cmap: str = "RdBu",
    title: str | None = None,
    show: bool | None = None,
) -> Any:
    """Draw the grid as a heat map with a diverging colour map centred at 0.

    ``vmax`` fixes the colour range to ``[-vmax, vmax]`` so that figures can be
    compared; by default it is the largest absolute value. NaN cells (no value)
    are grey. Returns the matplotlib Figure.

    In a notebook the figure is shown where ``plot()`` is called, even as
    ``result.plot();`` (the semicolon hides a cell's value, and the figure is not
    made through pyplot, which would show it). ``show=False`` does not show it;
    a figure drawn into your own ``ax`` is yours to show.

    Example:
        >>> fig = plot_result(result, vmax=1.0, show=False)  # doctest: +SKIP
        >>> fig.savefig("grid.png")                          # doctest: +SKIP
    """
    import matplotlib

    table, row_labels, col_labels = grid_2d(result)
    if ax is None:
        width = min(2 + 0.6 * table.shape[1], 16)
        height = min(1.5 + 0.35 * table.shape[0], 14)
        # Not through pyplot: a notebook then shows the returned figure once, not twice.
        fig = NotebookFigure(figsize=(width, height), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    finite = table[np.isfinite(table)]
    limit = vmax if vmax is not None else (float(np.abs(finite).max()) if finite.size else 1.0) or 1.0
    colours = matplotlib.colormaps[cmap].with_extremes(bad="#bbbbbb")
    image = ax.imshow(np.ma.masked_invalid(table), cmap=colours, vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(row_labels)), row_labels, fontsize=8)
    s = result.settings
    ax.set_title(title or f"{s.get('site', '')} · {s.get('metric', '')} · {s.get('direction', '')}", fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.8, label=s.get("metric", "value"))
    if isinstance(fig, NotebookFigure) and show is not False:
        fig.show_in_notebook()
    return fig


def plot_curve(curve: dict, found: float | None, ax: Any = None, show: bool | None = None) -> Any:
    """Draw a search's curve against circuit size; returns the Figure.

    ``curve["kind"]`` says which: ``"faithfulness"`` (``find_circuit``: MIB's f, with CPR and
    CMD) or ``"restore"`` (``find_bottleneck``: the joint denoising restore, with its area).
    """
    fig, ax = _figure(ax, (5.5, 3.6))
    faithful = curve.get("kind") == "faithfulness"
    x = np.asarray(curve["percent"])
    for pair in np.asarray(curve["per_pair"]).T:
        ax.plot(x, pair, color="#9ab", linewidth=0.8, alpha=0.6)
    ax.plot(x, curve["faithfulness" if faithful else "restore"], marker="o", color="#c33", label="mean over pairs")
    ax.axhline(1.0, color="#555", linewidth=0.8, linestyle="--")
    ax.set_xscale("log")
    if faithful:
        ax.set_xlabel("nodes kept (% of all, top-ranked first); everything else corrupted")
        ax.set_ylabel("faithfulness f (MIB)")
        shown = "" if found is None else f"; found circuit {found:.2f}"
        ax.set_title(f"Faithfulness: CPR {curve['cpr']:.2f}, CMD {curve['cmd']:.2f}{shown}", fontsize=10)
    else:
        ax.set_xlabel("cells copied together (% of the finest level, largest first)")
        ax.set_ylabel("share of the effect restored")
        shown = "" if found is None else f"; found set {found:.2f}"
        ax.set_title(f"Bottleneck restore: area {curve['area']:.2f}{shown}", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return _shown(fig, show)


def plot_circuit(
    circuit: Any, n_layers: int, n_heads: int, ax: Any = None, show: bool | None = None, ends: list | None = None
) -> Any:
    """Draw a circuit of nodes: one row per layer (embeddings at the bottom, logits at the top), each
    layer's heads then its MLP; the circuit's nodes filled, sized by |effect|, the rest hollow. A circuit
    of edges also draws its edges, ``ends`` giving each edge's two ends as the nodes they are drawn at
    (``edges.drawn_at``; its nodes: the senders)."""
    fig, ax = _figure(ax, (1.6 + 0.55 * (n_heads + 1), 1.4 + 0.6 * (n_layers + 2)))
    effect = dict(zip((c.label for c in circuit.cells), circuit.values or [1.0] * len(circuit.cells)))
    largest = max([abs(v) for v in effect.values()] + [1e-12])

    def node(x: float, y: float, label: str, text: str) -> None:
        kept = label in effect
        size = 80 + 420 * abs(effect[label]) / largest if kept else 60
        face = "#c33" if kept else "white"
        ax.scatter([x], [y], s=size, facecolor=face, edgecolor="#333", linewidth=0.8, zorder=3)
        ax.annotate(text, (x, y), xytext=(0, -17), textcoords="offset points", ha="center", fontsize=6, color="#333")

    if ends:
        _draw_edges(ax, ends, circuit.edge_values or [1.0] * len(ends), n_layers, n_heads)
    node(n_heads / 2, 0, "embed", "embed")
    for layer in range(n_layers):
        ax.axhline(layer + 1, color="#eee", linewidth=0.6, zorder=0)
        for head in range(n_heads):
            node(head, layer + 1, f"head_out L{layer} H{head}", f"L{layer}H{head}")
        node(n_heads + 0.4, layer + 1, f"mlp_out L{layer}", f"MLP{layer}")
    ax.scatter([n_heads / 2], [n_layers + 1], marker="s", s=120, color="#333", zorder=3)
    ax.annotate(
        "logits", (n_heads / 2, n_layers + 1), xytext=(0, 8), textcoords="offset points", ha="center", fontsize=7
    )
    ax.set_xlim(-0.8, n_heads + 1.2)
    ax.set_ylim(-0.8, n_layers + 1.6)
    ax.set_yticks(range(n_layers + 2), ["embed", *[f"layer {i}" for i in range(n_layers)], "logits"], fontsize=7)
    ax.set_xticks([])
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    faith = "" if circuit.faithfulness is None else f": faithfulness {circuit.faithfulness:.2f}"
    if ends:
        key = "width by |score|; red: corrupting it lowers the metric, blue: raises it"
        what = f"{len(ends)} edges{faith}\n({key})"
    else:
        what = f"{len(circuit.cells)} nodes{faith}\n(filled: in the circuit, sized by effect)"
    ax.set_title(f"Circuit of {what}", fontsize=9)
    return _shown(fig, show)


def _node_xy(node: Any, n_layers: int, n_heads: int) -> tuple[float, float]:
    """Where a node sits in the diagram, as ``plot_circuit`` draws it: the embeddings at the bottom, the logits
    at the top, a layer's heads then its MLP."""
    if node.site == "embed":
        return n_heads / 2, 0
    if node.site == "logits":
        return n_heads / 2, n_layers + 1
    return (n_heads + 0.4 if node.site == "mlp_out" else node.head), node.layer + 1


def _draw_edges(ax: Any, ends: list, values: list[float], n_layers: int, n_heads: int) -> None:
    """Edges as lines between the nodes they are drawn at, width by |score|, colour by sign."""
    from matplotlib.collections import LineCollection

    largest = max([abs(v) for v in values] + [1e-12])
    segments = [[_node_xy(a, n_layers, n_heads), _node_xy(b, n_layers, n_heads)] for a, b in ends]
    widths = [0.6 + 3.4 * abs(v) / largest for v in values]
    colours = ["#c33" if v < 0 else "#36c" for v in values]
    ax.add_collection(LineCollection(segments, linewidths=widths, colors=colours, alpha=0.55, zorder=2))


def _figure(ax: Any, size: tuple[float, float]) -> tuple[Any, Any]:
    if ax is not None:
        return ax.figure, ax
    fig = NotebookFigure(figsize=size, layout="constrained")
    return fig, fig.add_subplot()


def _shown(fig: Any, show: bool | None) -> Any:
    if isinstance(fig, NotebookFigure) and show is not False:
        fig.show_in_notebook()
    return fig


class NotebookFigure(Figure):
    """A Figure that a notebook shows once, where it was made, and again only when asked in a later cell."""

    _shown_in: int | None = None  # the notebook cell (execution count) that showed it

    def show_in_notebook(self) -> None:
        shell = _kernel_shell()
        if shell is None:
            return
        from IPython.display import Image, display

        buf = io.BytesIO()
        self.savefig(buf, format="png", dpi=100)
        display(Image(buf.getvalue(), format="png"))
        self._shown_in = shell.execution_count

    def _ipython_display_(self) -> None:
        """IPython shows a cell's value through this: not again in the cell that already showed it."""
        shell = _kernel_shell()
        if shell is not None and self._shown_in != shell.execution_count:
            self.show_in_notebook()


def _kernel_shell() -> Any:
    """The running IPython kernel's shell, or None outside a notebook (scripts, the CLI, tests)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    return shell if shell is not None and getattr(shell, "kernel", None) is not None else None
