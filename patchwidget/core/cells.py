"""What is patched: cells, the writes they become, and the checks on the indices that name them.

A ``Cell`` is one site to patch (a layer, maybe a head or neuron, maybe a
position); a ``Write`` is what the loop writes for it. Both are plain data
(a grid of cells is ``grids.grid.Grid``).

Example:
    >>> from patchwidget import Cell
    >>> Cell("head_out", 3, head=1, pos=-1).label
    'head_out L3 H1 @-1'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..data.prompts import PromptBatch
from ..data.templates import align
from ..errors import SettingsError
from .sites import SITES, ModelInfo, check_site_supported

# Where each site sits inside a layer, in forward order: nnsight reads and writes a module's values
# in the order the model computes them. The attention pattern is read from the attention module's
# output but written through the head outputs (see engine.write), so it moves between the two lists.
WRITE_ORDER = (
    "resid_pre",
    "head_q",
    "head_k",
    "head_v",
    "attn_pattern",
    "head_out",
    "attn_out",
    "resid_mid",
    "mlp_neuron",
    "mlp_out",
    "resid_post",
)
READ_ORDER = (
    "resid_pre",
    "head_q",
    "head_k",
    "head_v",
    "head_out",
    "attn_pattern",
    "attn_out",
    "resid_mid",
    "mlp_neuron",
    "mlp_out",
    "resid_post",
)


class Write(NamedTuple):
    """One write of a patched copy: the site at (layer, unit, positions) takes the value of ``origin``.

    ``origin`` is ``"source"`` (the source run, at the copy's prompt pair), ``"target"`` (the
    target run's own value: freezing it against changes from upstream) or ``"captured"`` (what
    an earlier batch of copies captured, at copy ``row`` of it). ``read_at`` are the positions
    the value is read at in the origin, pairwise with ``positions``, where the prompts differ in
    length (spans aligned by ``templates.align``); None reads at ``positions``.
    """

    layer: int
    site: str
    unit: int
    positions: tuple[int, ...]
    origin: str = "source"
    row: int | None = None
    read_at: tuple[int, ...] | None = None


EMBED = "embed"  # the node of the token and position embeddings: written as resid_pre at layer 0


@dataclass(frozen=True)
class Cell:
    """One site to patch: a layer, a head or neuron where the site has them,
    and a position (``None`` patches every position; with prompts made from a
    template, a span label such as ``"S2"``).

    Example:
        >>> Cell("mlp_neuron", 2, neuron=17).label
        'mlp_neuron L2 N17'
    """

    site: str
    layer: int | None = None  # None only for the "embed" node (token and position embeddings)
    head: int | None = None
    neuron: int | None = None
    pos: int | str | None = None

    def __post_init__(self) -> None:
        # Indices taken from NumPy (np.unravel_index over a grid, say) become plain ints, so that
        # a circuit of such cells saves as JSON and compares equal to one typed by hand.
        for name in ("layer", "head", "neuron", "pos"):
            value = getattr(self, name)
            if isinstance(value, np.integer):
                object.__setattr__(self, name, int(value))
            elif isinstance(value, np.str_):
                object.__setattr__(self, name, str(value))

    @property
    def label(self) -> str:
        unit = f" H{self.head}" if self.head is not None else f" N{self.neuron}" if self.neuron is not None else ""
        where = "" if self.pos is None else f" @{self.pos}"
        layer = "" if self.layer is None else f" L{self.layer}"
        return f"{self.site}{layer}{unit}{where}"


def layers_by_site(writes: list[Write]) -> dict[str, list[int]]:
    """The layers each site is written at, sorted: what the runs must record for these writes.

    Example:
        >>> layers_by_site([Write(2, "head_q", 0, (0,)), Write(1, "head_q", 3, (0,))])
        {'head_q': [1, 2]}
    """
    out: dict[str, set[int]] = {}
    for w in writes:
        out.setdefault(w.site, set()).add(w.layer)
    return {site: sorted(layers) for site, layers in out.items()}


def span_write(write: Write, prompts: PromptBatch, pair: int, direction: str, mode: str = "all") -> Write:
    """A write whose positions are span columns, made concrete for one pair: written at the
    target prompt's positions of those spans, read at the source prompt's, aligned from each
    span's last token (``templates.align``)."""
    clean, corrupt = prompts.clean_spans[pair], prompts.corrupt_spans[pair]
    source, target = (clean, corrupt) if direction == "denoise" else (corrupt, clean)
    at: dict[int, int] = {}  # target position -> source position; spans may share a position
    for column in write.positions:
        read, written = align(source[column], target[column], mode)
        for r, w in zip(read, written):
            at.setdefault(w, r)
    return write._replace(positions=tuple(at), read_at=tuple(at.values()))


def pair_writes(
    writes: Sequence[Write], prompts: PromptBatch, pair: int, direction: str, mode: str = "all"
) -> tuple[Write, ...]:
    """The writes of one patched copy of pair ``pair``: as given for plain prompts, or with span
    columns made concrete for that pair (``span_write``) for prompts made from a template."""
    if prompts.columns is None:
        return tuple(writes)
    return tuple(span_write(w, prompts, pair, direction, mode) for w in writes)


def target_positions(write: Write, prompts: PromptBatch, pair: int, direction: str) -> tuple[int, ...]:
    """Every position of the target prompt of pair ``pair`` in the span columns ``write.positions``, in order."""
    spans = prompts.corrupt_spans[pair] if direction == "denoise" else prompts.clean_spans[pair]
    return tuple(sorted({p for column in write.positions for p in spans[column]}))


def cell_write(cell: Cell, info: ModelInfo, n_pos: int, columns: Sequence[str] | None = None) -> Write:
    """Check a cell against the model and the prompts, and turn it into one write.

    With ``columns`` (prompts made from a template), ``cell.pos`` is a span label or
    None, and the write's positions are column indices (see ``span_write``).
    """
    if not isinstance(cell, Cell):
        raise SettingsError(f"cells must be patchwidget.Cell objects, got {cell!r}")
    if cell.site == EMBED:  # the embeddings' output is the residual stream entering the first block
        if cell.layer is not None or cell.head is not None or cell.neuron is not None:
            raise SettingsError(f"{cell.label}: the 'embed' node has no layer, head or neuron; give Cell('embed')")
        cell = Cell("resid_pre", 0, pos=cell.pos)
    check_site_supported(cell.site, info)
    indices([cell.layer], info.n_layers, "layer", "layers")
    unit = SITES[cell.site].unit
    given = {"head": cell.head, "neuron": cell.neuron}
    for name, value in given.items():
        if value is not None and unit != name:
            raise SettingsError(f"{cell.label}: site {cell.site!r} has no {name} axis")
    if unit is not None and given[unit] is None:
        raise SettingsError(f"{cell.label}: site {cell.site!r} needs {unit}=...")
    units = [0] if unit is None else indices([given[unit]], info.n_units(cell.site), unit, f"{unit}s")
    if columns is not None:
        if cell.pos is not None and cell.pos not in columns:
            raise SettingsError(
                f"{cell.label}: with prompts made from a template, pos is a span label, one of "
                f"{', '.join(map(repr, columns))}, or None for every span"
            )
        picked = range(len(columns)) if cell.pos is None else [list(columns).index(cell.pos)]
        return Write(cell.layer, cell.site, units[0], tuple(picked))
    if isinstance(cell.pos, str):
        raise SettingsError(f"{cell.label}: pos is a span label, which needs prompts made from a template")
    if cell.pos is None:
        positions = list(range(n_pos))
    else:
        positions = indices([cell.pos], n_pos, "pos", "tokens", negative_ok=True)
    return Write(cell.layer, cell.site, units[0], tuple(positions))


def indices(given: Sequence[int] | None, size: int, name: str, what: str, negative_ok: bool = False) -> list[int]:
    """``given`` checked as distinct indices into ``size`` things (all of them for ``None``).

    Example:
        >>> indices([0, -1], 5, "positions", "tokens", negative_ok=True)
        [0, 4]
    """
    if given is None:
        return list(range(size))
    if isinstance(given, int | np.integer):
        given = [int(given)]
    out = []
    for i in given:
        if not isinstance(i, int | np.integer) or isinstance(i, bool):
            raise SettingsError(f"{name} must be integers, got {i!r}")
        j = int(i) + size if negative_ok and i < 0 else int(i)
        if not 0 <= j < size:
            raise SettingsError(f"{name} index {i} is out of range: the model has {size} {what} (0 to {size - 1})")
        out.append(j)
    if not out:
        raise SettingsError(f"{name} is empty; give at least one index or None for all")
    if len(set(out)) != len(out):
        raise SettingsError(f"{name} has repeated indices: {list(given)!r}")
    return out


def check_choice(value: object, choices: Sequence[str], name: str) -> None:
    """``value`` must be one of ``choices``; the error names ``name`` and lists them."""
    if not isinstance(value, str) or value not in choices:
        raise SettingsError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
