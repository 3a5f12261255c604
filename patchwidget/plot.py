"""Static matplotlib figures of a PatchResult, for papers and saved notebooks.

Example:
    >>> fig = result.plot()           # doctest: +SKIP
    >>> fig.savefig("grid.png")       # doctest: +SKIP
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure

if TYPE_CHECKING:  # plot draws results; result imports plot only when asked to draw
    from .result import PatchResult


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


def plot_curve(curve: dict, faithfulness: float | None, ax: Any = None, show: bool | None = None) -> Any:
    """Draw a faithfulness curve (see ``search.find_circuit``); returns the Figure."""
    if ax is None:
        fig = NotebookFigure(figsize=(5.5, 3.6), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    x = np.asarray(curve["percent"])
    for pair in np.asarray(curve["per_pair"]).T:
        ax.plot(x, pair, color="#9ab", linewidth=0.8, alpha=0.6)
    ax.plot(x, curve["faithfulness"], marker="o", color="#c33", label="mean over pairs")
    ax.axhline(1.0, color="#555", linewidth=0.8, linestyle="--")
    ax.set_xscale("log")
    ax.set_xlabel("cells patched together (% of the finest level, largest first)")
    ax.set_ylabel("share of the effect restored")
    found = "" if faithfulness is None else f"; found set {faithfulness:.2f}"
    ax.set_title(f"Faithfulness: CPR {curve['cpr']:.2f}, CMD {curve['cmd']:.2f}{found}", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
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
