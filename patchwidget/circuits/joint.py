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

import numpy as np
import torch

from ..core import metrics as M
from ..core.cells import EMBED, Cell, cell_write, layers_by_site, pair_writes
from ..core.engine import entry_point, fit_budget, patched_metric, prepare, summarize, warn_non_finite
from ..core.runs import Progress, cached_runs, with_noise
from ..data.prompts import Noise, Texts
from ..errors import SettingsError

__all__ = ["Cell", "JointResult", "patch_sites"]


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

    def normalized(self) -> JointResult:
        """Rescaled per pair so that the clean baseline is 1 and the corrupted 0 (as ``PatchResult.normalized``).

        Example:
            >>> joint.normalized().clean_baseline  # doctest: +SKIP
            array([1., 1.], dtype=float32)
        """
        base = (self.clean_baseline, self.corrupt_baseline)
        settings = {**self.settings, "metric": f"{self.settings.get('metric', 'metric')} (normalized)"}
        ones = np.ones_like(self.clean_baseline)
        return JointResult(
            self.cells,
            M.normalize(self.per_pair_joint, *base),
            M.normalize(self.per_pair_singles, *base),
            ones,
            ones * 0,
            settings,
        )

    def to_dataframe(self) -> Any:
        import pandas as pd

        rows = [{"cells": c.label, "value": v} for c, v in zip(self.cells, self.singles)]
        rows += [
            {"cells": "sum of singles", "value": self.sum_of_singles},
            {"cells": "all together", "value": self.joint},
        ]
        return pd.DataFrame(rows)

    def __repr__(self) -> str:
        return f"JointResult({len(self.cells)} cells: joint {self.joint:.3f}, sum of singles {self.sum_of_singles:.3f})"


@entry_point
def patch_sites(
    model: Any,
    clean: Texts,
    corrupt: Texts | Noise,
    *,
    answer: Texts,
    wrong: Texts,
    cells: Sequence[Cell],
    metric: M.Metric = M.DEFAULT,
    direction: str = "denoise",
    batch_size: int = 64,
    memory_budget: int | None = None,
    progress: Progress | None = None,
    remote: bool | str = False,
    speedups: Any = None,
) -> JointResult:
    """Patch every cell alone and all cells together, in batched runs.

    Each prompt pair gives one patched copy per cell and one with every cell;
    ``batch_size``, ``memory_budget`` and ``progress`` are as in ``patch``.
    With prompts made from a template, a cell's ``pos`` is a span label (or None
    for every span), patched at each pair's own positions of that span, aligned
    from its last token as in ``patch``. ``speedups`` as in ``patch``.

    Example:
        >>> import patchwidget as pw
        >>> p = pw.demo_data.ioi_pairs(1)[0]
        >>> r = pw.patch_sites(pw.load_model(), p.clean, p.corrupt, answer=p.answer, wrong=p.wrong,
        ...                    cells=[pw.Cell("head_out", 0, head=2), pw.Cell("head_out", 1, head=1)])
        >>> r.joint > max(r.singles)
        True
    """
    if not isinstance(cells, Sequence) or isinstance(cells, str):
        raise SettingsError(f"cells must be a list of patchwidget.Cell objects, got {cells!r}")
    if not cells:
        raise SettingsError("cells is empty; give at least one Cell to patch")
    request = prepare(
        model,
        clean,
        corrupt,
        answer=answer,
        wrong=wrong,
        sites={"resid_pre" if cell.site == EMBED else cell.site for cell in cells if isinstance(cell, Cell)},
        metric=metric,
        direction=direction,
        batch_size=batch_size,
        memory_budget=memory_budget,
        remote=remote,
        speedups=speedups,
    )
    info, prompts = request.info, request.prompts
    writes = [cell_write(cell, info, prompts.n_pos, prompts.columns) for cell in cells]
    repeated = sorted({cells[i].label for i, w in enumerate(writes) if writes.index(w) != i})
    if repeated:  # the sum of singles would count them twice, and the joint patch once
        raise SettingsError(f"cells has repeated cells: {', '.join(repeated)}; give each cell once")
    rows, noise = with_noise(model, info, prompts, remote)
    reads = layers_by_site(writes)
    per_pass = fit_budget(model, request, reads, rows)
    # One patched copy per pair and cell, then one per pair with every cell.
    copies = [
        (pair, pair_writes(members, rows, pair, direction))
        for pair in range(rows.n_pairs)
        for members in [(w,) for w in writes] + [tuple(writes)]
    ]
    with torch.no_grad():
        runs = cached_runs(
            None, model, info, reads, rows, noise, remote, per_pass, progress, request.speedups.reuse_prefix
        )
        directed = runs.directed(direction, noise)
        values = patched_metric(model, request, directed, copies, rows, per_pass, progress)
    values, clean_base, corrupt_base = summarize(
        values.view(rows.n_pairs, len(cells) + 1),
        rows,
        prompts.n_pairs,
        request.metric,
        runs.clean_logits,
        runs.corrupt_logits,
    )
    labels = [c.label for c in cells] + ["all together"]
    warn_non_finite([labels[i] for i in np.flatnonzero(~np.isfinite(values.numpy()).all(0))], request.metric)
    return JointResult(
        cells=list(cells),
        per_pair_joint=values[:, -1].numpy(),
        per_pair_singles=values[:, :-1].numpy(),
        clean_baseline=clean_base.numpy(),
        corrupt_baseline=corrupt_base.numpy(),
        settings={"metric": request.metric.name, "direction": direction, "cells": [c.label for c in cells]},
    )
