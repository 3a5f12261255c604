"""Circuit checks: patch a chosen set of sites together and compare with their
single effects.

A user who has found candidate sites ("heads 0.2, 1.1 and 1.3") tests the
hypothesis that they are the circuit by patching all of them at once: if the
joint patch restores most of the behaviour, the set carries it; comparing the
joint effect with the sum of single effects shows whether they act together
(more than the sum) or redundantly (less).

Example:
    >>> r = patch_sites(model, clean, corrupt, answer="Mary", wrong="John",
    ...                 cells=[Cell("head_out", 0, head=2), Cell("head_out", 1, head=3)])  # doctest: +SKIP
    >>> r.joint, r.sum_of_singles                                                        # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import nnsight
import numpy as np
import torch

from . import metrics as M
from .engine import (
    DIRECTIONS,
    Progress,
    SettingsError,
    _check_choice,
    _indices,
    _write,
    check_batching,
    fit_budget,
    one_trace_at_a_time,
    summarize,
    with_noise,
)
from .prompts import Noise, Texts, prepare_prompts
from .remote import prepare_remote, trace_kwargs
from .sites import SITES, add_noise, check_site_supported, logits_module, model_info, on_input_device, view

# Where each site sits inside a layer, in forward order: nnsight needs this order. The
# attention pattern is read from the attention module's output but written through the
# head outputs (see engine._write), so it moves between the two lists.
WRITE_ORDER = ("resid_pre", "head_q", "head_k", "head_v", "attn_pattern", "head_out", "attn_out",
               "resid_mid", "mlp_neuron", "mlp_out", "resid_post")  # fmt: skip
READ_ORDER = ("resid_pre", "head_q", "head_k", "head_v", "head_out", "attn_pattern", "attn_out",
              "resid_mid", "mlp_neuron", "mlp_out", "resid_post")  # fmt: skip


@dataclass(frozen=True)
class Cell:
    """One site to patch: a layer, a head or neuron where the site has them,
    and a position (``None`` patches every position)."""

    site: str
    layer: int
    head: int | None = None
    neuron: int | None = None
    pos: int | None = None

    @property
    def label(self) -> str:
        unit = f" H{self.head}" if self.head is not None else f" N{self.neuron}" if self.neuron is not None else ""
        where = "" if self.pos is None else f" @{self.pos}"
        return f"{self.site} L{self.layer}{unit}{where}"


@dataclass
class JointResult:
    """Joint and single effects of a set of cells, per prompt pair and on average."""

    cells: list[Cell]
    per_pair_joint: np.ndarray  # (pair,)
    per_pair_singles: np.ndarray  # (pair, cell)
    clean_baseline: np.ndarray
    corrupt_baseline: np.ndarray
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def joint(self) -> float:
        return float(self.per_pair_joint.mean())

    @property
    def singles(self) -> np.ndarray:
        return self.per_pair_singles.mean(0)

    @property
    def sum_of_singles(self) -> float:
        """Sum of the single effects, each measured from the unpatched baseline."""
        base = self.corrupt_baseline if self.settings.get("direction") == "denoise" else self.clean_baseline
        return float((self.per_pair_singles - base[:, None]).sum(1).mean() + base.mean())

    def to_dataframe(self) -> Any:
        import pandas as pd

        rows = [{"cells": c.label, "value": v} for c, v in zip(self.cells, self.singles)]
        rows += [{"cells": "sum of singles", "value": self.sum_of_singles},
                 {"cells": "all together", "value": self.joint}]  # fmt: skip
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        return f"JointResult({len(self.cells)} cells: joint {self.joint:.3f}, sum of singles {self.sum_of_singles:.3f})"


@one_trace_at_a_time
def patch_sites(
    model: Any,
    clean: Texts,
    corrupt: Texts | Noise,
    *,
    answer: Texts,
    wrong: Texts,
    cells: Sequence[Cell],
    metric: M.Metric = "logit_diff_norm",
    direction: str = "denoise",
    batch_size: int = 64,
    memory_budget: int | None = None,
    progress: Progress | None = None,
    remote: bool | str = False,
) -> JointResult:
    """Patch every cell alone and all cells together, in batched runs.

    Each prompt pair gives one patched copy per cell and one with every cell;
    ``batch_size``, ``memory_budget`` and ``progress`` are as in ``patch``.

    Example:
        >>> import patchwidget as pw
        >>> p = pw.demo_data.ioi_pairs(1)[0]
        >>> r = pw.patch_sites(pw.load_model(), p.clean, p.corrupt, answer=p.answer, wrong=p.wrong,
        ...                    cells=[pw.Cell("head_out", 0, head=2), pw.Cell("head_out", 1, head=1)])
        >>> r.joint > max(r.singles)
        True
    """
    info = model_info(model)
    M.check_metric(metric)
    _check_choice(direction, DIRECTIONS, "direction")
    prepare_remote(model, remote)
    if not cells:
        raise SettingsError("cells is empty; give at least one Cell to patch")
    check_batching(batch_size, memory_budget)
    prompts = prepare_prompts(model.tokenizer, clean, corrupt, answer=answer, wrong=wrong)
    writes = [_cell_writes(cell, info, prompts.n_pos) for cell in cells]
    rows_prompts, noise = with_noise(model, info, prompts, remote)
    sites = {cell.site for cell in cells}
    batch_size = fit_budget(model, info, sites, rows_prompts, "exact", batch_size, memory_budget)
    n_rows = rows_prompts.n_pairs
    keys = sorted({(c.layer, c.site) for c in cells}, key=lambda k: (k[0], WRITE_ORDER.index(k[1])))
    ids = torch.cat([rows_prompts.clean_ids, rows_prompts.corrupt_ids])
    with torch.no_grad():
        with model.trace(on_input_device(model, ids), **trace_kwargs(model, remote), logits_to_keep=1):
            cache = nnsight.save({})  # made inside the trace: only saved values come back from a server
            add_noise(model, info, noise, slice(n_rows, None))
            for layer, site in sorted(keys, key=lambda k: (k[0], READ_ORDER.index(k[1]))):
                cache[(layer, site)] = view(model, info, site, layer).detach().clone().save()
            logits = logits_module(model, info).output[:, -1].detach().save()
        source_half = slice(0, n_rows) if direction == "denoise" else slice(n_rows, None)
        target_ids = rows_prompts.corrupt_ids if direction == "denoise" else rows_prompts.clean_ids
        n_cells = len(cells)
        # Row layout: for each pair, one row per single cell, then the joint row.
        members = [[i] for i in range(n_cells)] + [list(range(n_cells))]
        row_pairs = torch.arange(n_rows).repeat_interleave(n_cells + 1)
        parts = []
        for start in range(0, len(row_pairs), batch_size):
            rows = range(start, min(start + batch_size, len(row_pairs)))
            batch_pairs = row_pairs[start : rows.stop]
            with model.trace(
                on_input_device(model, target_ids[batch_pairs]), **trace_kwargs(model, remote), logits_to_keep=1
            ):
                add_noise(model, info, noise[batch_pairs] if noise is not None and direction == "denoise" else None,
                          slice(None))  # fmt: skip
                for layer, site in keys:
                    r, p, u, pair = [], [], [], []
                    for k, row in enumerate(rows):
                        for i in members[row % (n_cells + 1)]:
                            if (cells[i].layer, cells[i].site) == (layer, site):
                                for pos, unit in writes[i]:
                                    r.append(k), p.append(pos), u.append(unit), pair.append(int(row_pairs[row]))
                    if r:  # this batch has rows that write here
                        r_t, p_t, u_t = torch.tensor(r), torch.tensor(p), torch.tensor(u)
                        values = cache[(layer, site)][source_half][torch.tensor(pair), p_t, u_t]
                        _write(model, info, site, layer, r_t, p_t, u_t, values)
                patched = logits_module(model, info).output[:, -1].detach().save()
            parts.append(patched)
            if progress is not None:
                progress(rows.stop, len(row_pairs))
        patched = torch.cat(parts)

    fn = M.resolve(metric)
    clean_logits, corrupt_logits = logits[:n_rows], logits[n_rows:]
    rep = lambda t: t.repeat_interleave(n_cells + 1, 0)  # noqa: E731
    values = fn(patched, rep(rows_prompts.answer_ids), rep(rows_prompts.wrong_ids), rep(clean_logits))
    values, clean_base, corrupt_base = summarize(values.view(n_rows, n_cells + 1), rows_prompts, prompts.n_pairs,
                                                 fn, metric, clean_logits, corrupt_logits)  # fmt: skip
    return JointResult(
        cells=list(cells),
        per_pair_joint=values[:, -1].numpy(),
        per_pair_singles=values[:, :-1].numpy(),
        clean_baseline=clean_base.numpy(),
        corrupt_baseline=corrupt_base.numpy(),
        settings={"metric": M.metric_name(metric), "direction": direction, "cells": [c.label for c in cells]},
    )


def _cell_writes(cell: Cell, info: Any, n_pos: int) -> list[tuple[int, int]]:
    """Validate a cell and list its (position, unit) writes."""
    if not isinstance(cell, Cell):
        raise SettingsError(f"cells must be patchwidget.Cell objects, got {cell!r}")
    check_site_supported(cell.site, info)
    _indices([cell.layer], info.n_layers, "layer", "layers")
    unit = SITES[cell.site].unit
    given = {"head": cell.head, "neuron": cell.neuron}
    for name, value in given.items():
        if value is not None and unit != name:
            raise SettingsError(f"{cell.label}: site {cell.site!r} has no {name} axis")
    if unit is not None and given[unit] is None:
        raise SettingsError(f"{cell.label}: site {cell.site!r} needs {unit}=...")
    units = [0] if unit is None else _indices([given[unit]], info.n_units(cell.site), unit, f"{unit}s")
    positions = list(range(n_pos)) if cell.pos is None else _indices([cell.pos], n_pos, "pos", "tokens",
                                                                      negative_ok=True)  # fmt: skip
    return [(p, units[0]) for p in positions]
