"""Static matplotlib figures of a PatchResult, for papers and saved notebooks.

Example:
    >>> fig = result.plot()           # doctest: +SKIP
    >>> fig.savefig("grid.png")       # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np

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
) -> Any:
    """Draw the grid as a heat map with a diverging colour map centred at 0.

    ``vmax`` fixes the colour range to ``[-vmax, vmax]`` so that figures can be
    compared; by default it is the largest absolute value. NaN cells are grey.
    Returns the matplotlib Figure.
    """
    import matplotlib
    from matplotlib.figure import Figure

    table, row_labels, col_labels = grid_2d(result)
    if ax is None:
        width = min(2 + 0.6 * table.shape[1], 16)
        height = min(1.5 + 0.35 * table.shape[0], 14)
        # Not through pyplot: a notebook then shows the returned figure once, not twice.
        fig = Figure(figsize=(width, height), layout="constrained")
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
    return fig
