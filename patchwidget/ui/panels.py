"""Panels as the front end draws them: one grid, table, curve or diagram of a view (``protocol.Panel``).

Example:
    >>> panel("p", "A grid", "layer", "pos", ["L0"], ["a", "b"], np.array([[0.5, np.nan]]), True)["values"]
    [[0.5, None]]
"""

from __future__ import annotations

import math

import numpy as np


def table(values: np.ndarray) -> list[list[float | None]]:
    """Rows of numbers for JSON: 6 decimals, ``None`` where a value is NaN or infinite ("no value")."""
    return [[None if not math.isfinite(v) else round(float(v), 6) for v in row] for row in values]


def panel(
    pid: str,
    title: str,
    row_dim: str,
    col_dim: str,
    rows: list[str],
    cols: list[str],
    values: np.ndarray,
    clickable: bool,
    diverging: bool = True,
) -> dict:
    """One panel of a view (see ``protocol.Panel``)."""
    return {
        "id": pid,
        "title": title,
        "row_dim": row_dim,
        "col_dim": col_dim,
        "rows": rows,
        "cols": cols,
        "values": table(np.asarray(values, dtype=float)),
        "clickable": clickable,
        "diverging": diverging,
    }


def curve_panel(
    title: str, x_label: str, y_label: str, y: list, curve: dict, unit: str, target: float | None, note: str
) -> dict:
    """A search's curve as a line (kind ``"curve"``): ``y`` over ``curve``'s sizes in % of the candidates (a log
    axis), the target marked, ``note`` under it. Each column is labelled by its % and how many ``unit`` it keeps."""
    cols = [f"{p:.3g}% ({k} {unit})" for p, k in zip(curve["percent"], curve["size"])]
    line = panel("curve", title, "", x_label, [y_label], cols, np.asarray([y]), False)
    return line | {"kind": "curve", "x": [float(p) for p in curve["percent"]], "target": target, "note": note}
