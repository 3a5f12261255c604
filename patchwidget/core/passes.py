"""The forward passes of a request's patched copies, planned before any trace: pure data.

``plan_passes`` turns copies (``(pair, writes)``) into passes: which copies share each
pass and where they sit (``batches.plan_rows``, ``batches.layout``), what it writes and reads
in forward order, its attention mask and position ids, the cached prefix it reuses, the
blocks below it that keep the target run's outputs, which logits it reads, and whether
its last MLP runs at the last position only. ``engine.run_pass`` runs one pass: the only
code inside a trace. No model is needed here, so a plan is tested as data.

Example:
    >>> plan_passes(copies, tables, reads=[], shape=shape, speedups=Speedups())  # doctest: +SKIP
    Plan(noop=[...], passes=[Pass(...), ...])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import batches
from .batches import Copy, Key, Layout, Speedups
from .cells import READ_ORDER, WRITE_ORDER
from .continuation import Extension
from .sites import AFTER_LAST_MLP, last_positions

Writes = dict[Key, tuple[torch.Tensor, ...]]  # per (layer, site): rows, indices in the row, units, values


@dataclass(frozen=True)
class Shape:
    """What planning needs of the model and the runs."""

    n_pos: int  # positions of a pass's widest row: the (padded) prompt length
    n_layers: int
    d_model: int
    ends: list[int]  # per copy: its target prompt's real length
    reuse: bool  # the runs hold every position's keys and values (observed) and reuse is chosen
    two_columns: bool  # the unembedding's output is the model's logits (observed) and two columns are chosen
    ext: Extension | None = None  # answers of several tokens: each pair's target row with its continuations


@dataclass
class Pass:
    """One forward pass of patched copies."""

    copies: list[int]  # indices into the request's copies, in row order
    lay: Layout  # where each copy sits: rows, positions, segments
    steps: list[tuple[Key, str]]  # ((layer, site), "write" or "read"), in forward order
    writes: Writes
    skip_below: int  # blocks below this layer are not run: they output the target run's cached values
    mask: torch.Tensor | None  # which keys each query sees (packed rows, continuations); None: all earlier
    position_ids: torch.Tensor | None  # with a mask: each index's position id
    cache_end: int  # the target run's keys and values of positions before this are reused
    keep: int | torch.Tensor  # logits_to_keep
    last: tuple[torch.Tensor, torch.Tensor] | None  # where each copy's last token lands among the kept logits
    columns: torch.Tensor | None  # the unembedding's columns read, sorted (None: every column)
    trim_last_mlp: bool  # run the last block's MLP at the read positions only (``keep``)


@dataclass
class Plan:
    """A request's copies as no-ops and passes."""

    noop: list[int]  # copies that change nothing: each takes its target run's own value
    passes: list[Pass]


def plan_passes(
    copies: list[Copy],
    tables: dict[str, dict[Key, torch.Tensor]],
    reads: list[Key],
    shape: Shape,
    speedups: Speedups,
    batch_size: int,
    answer_ids: torch.Tensor,
    wrong_ids: torch.Tensor,
) -> Plan:
    """The passes that run ``copies`` with the least estimated work, reading ``reads`` (in forward order) in each.

    ``tables`` holds the values writes take (``"source"``, ``"target"``, ``"captured"``), by (layer, site).
    """
    first = batches.first_changes(copies, tables)
    changes = first != batches.NO_CHANGE
    noop = [i for i in range(len(copies)) if not changes[i]]
    todo = [i for i in range(len(copies)) if changes[i]]
    pairs_of = [pair for pair, _ in copies]
    if not shape.reuse:  # every copy from position 0
        first = torch.zeros_like(first)
    elif shape.ext is not None:  # a copy computes its last prompt token, where both answers' first tokens are read
        first = torch.minimum(first, shape.ext.reads[pairs_of, 0])
    lowest = [min((w.layer for w in writes), default=0) for _, writes in copies]
    rows, groups = batches.plan_rows(
        todo,
        pairs_of,
        first.tolist(),
        shape.ends,
        lowest,
        shape.n_pos,
        shape.n_layers,
        shape.d_model,
        batch_size,
        pack=speedups.pack,
        pass_overhead=speedups.pass_overhead,
        max_positions=speedups.max_positions,
    )
    passes = []
    for batch in groups:
        index, lay = batches.layout([rows[b] for b in batch], shape.n_pos)
        writes = batch_writes([copies[i] for i in index], tables, lay)
        steps = sorted(
            [(key, "write") for key in writes] + [(key, "read") for key in reads],
            key=lambda s: (s[0][0], (WRITE_ORDER if s[1] == "write" else READ_ORDER).index(s[0][1]), s[1] == "read"),
        )
        pairs = torch.tensor([pairs_of[i] for i in index])
        columns = torch.unique(torch.cat([answer_ids[pairs], wrong_ids[pairs]])) if shape.two_columns else None
        touches_last = any(key == (shape.n_layers - 1, site) for key, _ in steps for site in AFTER_LAST_MLP)
        mask, position_ids = masks(lay, shape.ext)
        read = reads_of(lay, pairs, shape.ext)
        passes.append(
            Pass(
                copies=index,
                lay=lay,
                steps=steps,
                writes=writes,
                skip_below=min([layer for layer, _ in writes] + [layer for layer, _ in reads]),
                mask=mask,
                position_ids=position_ids,
                cache_end=lay.cache_end,
                **read,
                columns=columns,
                trim_last_mlp=speedups.trim_last_mlp and not touches_last,
            )
        )
    return Plan(noop, passes)


def masks(lay: Layout, ext: Extension | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A pass's attention mask and position ids: none for whole rows of one copy (every earlier key);
    packed rows keep copies apart; continuations see their own branch (``batches.tree_mask``)."""
    packed = lay.start is None
    if ext is None:
        return (batches.segment_mask(lay), lay.positions) if packed else (None, None)
    mask = batches.tree_mask(lay, ext.allowed)
    if packed:
        mask = mask & batches.segment_mask(lay)
    return mask, ext.positions[lay.pairs[:, None], lay.positions]


def reads_of(lay: Layout, pairs: torch.Tensor, ext: Extension | None) -> dict:
    """``keep`` (``logits_to_keep``) and ``last``: where each copy's read logits land among the kept ones;
    with continuations, every read of every copy, ``(copy * read,)``, copy by copy."""
    if ext is None:
        keep, last = last_positions(lay.copy_row, lay.copy_last, lay.positions.shape[1])
        return {"keep": keep, "last": last}
    copy = torch.arange(len(pairs))[:, None]
    at = lay.index(copy, ext.reads[pairs])  # (copy, read): each read's index in its copy's row
    rows = lay.copy_row[:, None].expand_as(at)
    keep, last = last_positions(rows.flatten(), at.flatten(), lay.positions.shape[1])  # several reads per row
    return {"keep": keep, "last": last}


def batch_writes(chunk: list[Copy], tables: dict[str, dict[Key, torch.Tensor]], lay: Layout) -> Writes:
    """Per (layer, site): batch rows, indices in the row (``lay.index``), units and the values to write there.

    Only writes at a copy's computed positions are kept: the ones before its first
    position put back the target run's own values (see ``batches.first_changes``), which
    the cached prefix already holds, and the ones after its prompt's last token change
    nothing that is read.
    """
    by_key: dict[Key, dict[str, list[tuple[int, int, int, int, int]]]] = {}
    first, end = lay.copy_first.tolist(), lay.copy_end.tolist()
    for k, (pair, writes) in enumerate(chunk):
        for w in writes:
            at = w.row if w.origin == "captured" else pair  # which row of the origin's table holds the value
            by_key.setdefault((w.layer, w.site), {}).setdefault(w.origin, []).extend(
                (k, p, read, w.unit, at)
                for p, read in zip(w.positions, w.read_at or w.positions)
                if first[k] <= p < end[k]
            )
    out = {}
    for key, origins in by_key.items():
        parts = []
        for origin, entries in origins.items():
            if not entries:
                continue
            k, p, read, u, at = torch.tensor(entries).T
            parts.append((lay.copy_row[k], lay.index(k, p), u, tables[origin][key][at, read, u]))  # (write, width)
        if parts:
            out[key] = tuple(torch.cat(column) for column in zip(*parts))
    return out
