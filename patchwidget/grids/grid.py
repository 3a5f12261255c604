"""A grid of cells: every combination of layers, units and positions of one site.

``make_grid`` checks the narrowing arguments of ``patch`` (layers, heads or neurons,
positions, by position or not) and builds the grid; the grid turns into one write
per cell.

Example:
    >>> g = Grid("head_out", layers=[0, 1], units=[0, 1, 2], positions=[4], by_position=False)
    >>> g.dims, g.shape
    (('layer', 'head'), (2, 3))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..core.cells import Write, indices
from ..core.sites import SITES, ModelInfo
from ..errors import SettingsError


@dataclass(frozen=True)
class Grid:
    """The cells to patch: every combination of layer, unit and position of one site."""

    site: str
    layers: list[int]
    units: list[int]  # heads or neurons; [0] for sites with one unit per layer
    positions: list[int]
    by_position: bool
    kv_heads: bool = False  # head_k/head_v under grouped-query attention index key-value heads
    spans: bool = False  # positions index the prompts' span columns (prompts made from a template)

    @property
    def unit(self) -> str | None:
        return "kv_head" if self.kv_heads else SITES[self.site].unit

    @property
    def dims(self) -> tuple[str, ...]:
        where = ("span" if self.spans else "pos",) if self.by_position else ()
        return ("layer",) + ((self.unit,) if self.unit else ()) + where

    @property
    def shape(self) -> tuple[int, ...]:
        sizes = {"layer": len(self.layers), "pos": len(self.positions), "span": len(self.positions)}
        return tuple(sizes.get(d, len(self.units)) for d in self.dims)

    def cells(self) -> list[Write]:
        """One write per cell, in the order of ``shape``."""
        pos_groups = [(p,) for p in self.positions] if self.by_position else [tuple(self.positions)]
        return [Write(layer, self.site, unit, ps) for layer in self.layers for unit in self.units for ps in pos_groups]


def make_grid(
    info: ModelInfo,
    site: str,
    n_pos: int,
    layers: Sequence[int] | None,
    positions: Sequence[int] | None,
    heads: Sequence[int] | None,
    neurons: Sequence[int] | None,
    by_position: bool | None,
    spans: Sequence[str] | None = None,
) -> Grid:
    """Check the narrowing arguments and build the grid of cells.

    With ``spans`` (the column labels of prompts made from a template), ``positions``
    index those columns and the grid has a ``"span"`` axis instead of ``"pos"``.
    """
    unit = SITES[site].unit
    for name, given, wanted in (("heads", heads, "head"), ("neurons", neurons, "neuron")):
        if given is not None and unit != wanted:
            raise SettingsError(f"{name}={list(given)!r} does not apply to site {site!r}, which has no {wanted} axis")
    if by_position is not None and not isinstance(by_position, bool | np.bool_):
        raise SettingsError(f"by_position must be True, False or None, got {by_position!r}")
    n_units = info.n_units(site)
    kv_heads = site in ("head_k", "head_v") and info.n_kv_heads != info.n_heads
    unit_label = "key-value heads" if kv_heads else unit
    units = indices(heads if unit == "head" else neurons, n_units, unit or "unit", f"{unit_label}s") if unit else [0]
    return Grid(
        site=site,
        layers=indices(layers, info.n_layers, "layers", "layers"),
        units=units,
        positions=indices(
            positions,
            len(spans) if spans else n_pos,
            "positions",
            f"span columns ({', '.join(spans)})" if spans else "tokens in the prompts",
            negative_ok=True,
        ),
        by_position=SITES[site].by_position if by_position is None else bool(by_position),
        kv_heads=kv_heads,
        spans=bool(spans),
    )
