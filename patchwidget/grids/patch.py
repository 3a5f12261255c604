"""``patch``: one site swept over a grid of cells, a client of the engine's loop.

The request is checked once (``engine.prepare``), the grid built (``grids.grid.make_grid``),
the clean and corrupted runs cached (``runs.cached_runs``), then every cell of every
pair is one patched copy in the engine's batched loop (``engine.patched_metric``), or
with ``method="attribution"`` the gradient estimate; the values go into a ``PatchResult``.

Example:
    >>> from patchwidget import load_model, patch
    >>> r = patch(load_model(), "The capital of France is", "The capital of Japan is",
    ...           answer="Paris", wrong="Tokyo", metric="logit_diff_norm")
    >>> r.dims, r.values.shape
    (('layer', 'pos'), (4, 5))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from ..core import batches
from ..core import metrics as M
from ..core.cells import pair_writes
from ..core.engine import (
    Request,
    check_choice,
    entry_point,
    fit_budget,
    patched_metric,
    prepare,
    provenance,
    raw_baselines,
    summarize,
    warn_non_finite,
)
from ..core.runs import Progress, cached_runs, with_noise
from ..data.prompts import Noise, PromptBatch, Texts
from ..data.templates import SPAN_POSITIONS
from ..errors import SettingsError
from . import attribution
from .grid import Grid, make_grid
from .result import PatchResult


@entry_point
def patch(
    model: Any,
    clean: Texts,
    corrupt: Texts | Noise,
    *,
    answer: Texts,
    wrong: Texts,
    site: str = "resid_pre",
    metric: M.Metric = M.DEFAULT,
    direction: str = "denoise",
    method: str = "exact",
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    neurons: Sequence[int] | None = None,
    by_position: bool | None = None,
    span_positions: str = "all",
    within: str | None = None,
    batch_size: int = 64,
    memory_budget: int | None = None,
    progress: Progress | None = None,
    remote: bool | str = False,
    runs_cache: dict | None = None,
    speedups: batches.Speedups | None = None,
) -> PatchResult:
    """Patch one site over a grid of cells and measure the metric per cell.

    Prompts made from a template (``pw.Template(...).fill(...)``) may differ in
    length, within a pair and across pairs; the grid then has one column per
    span of the template (``"span"`` instead of ``"pos"``, ``positions`` index
    those columns), and a span cell patches all of the span's positions together,
    aligned from its last token (``span_positions="last"``: its last token only).
    ``within="PLACE"`` opens one span into its positions: the columns are the
    span's aligned positions that every pair has, ``"PLACE[0]"`` to ``"PLACE[n-1]"``
    (the last is the span's last token), one token each.

    ``direction="denoise"`` copies clean activations into the corrupted run;
    ``"noise"`` copies corrupted activations into the clean run. ``layers``,
    ``positions``, ``heads`` and ``neurons`` narrow the grid; ``by_position``
    chooses one cell per position (the default for most sites) or all chosen
    positions patched at once (the default for ``attn_pattern`` and
    ``mlp_neuron``). At most ``batch_size`` rows share a forward pass, fewer
    if ``memory_budget`` (bytes) says so; a row holds one patched copy, or
    several that start late in the prompt, packed end to end. ``progress(done, total)``
    is called after each batch. ``runs_cache``, a dict the caller keeps,
    holds the clean and corrupted runs between calls, so that a call with
    the same model, prompts, site and layers patches only its new cells.
    ``speedups`` (a ``patchwidget.Speedups``) switches the exact speed-ups
    off, for tests and benchmarks; none of them changes a number.

    Example:
        >>> from patchwidget import load_model, patch
        >>> r = patch(load_model(), "The capital of France is", "The capital of Japan is",
        ...           answer="Paris", wrong="Tokyo", site="head_out", layers=[3], by_position=False)
        >>> r.dims
        ('layer', 'head')
    """
    request = prepare(
        model,
        clean,
        corrupt,
        answer=answer,
        wrong=wrong,
        sites=[site],
        metric=metric,
        direction=direction,
        method=method,
        batch_size=batch_size,
        memory_budget=memory_budget,
        remote=remote,
        speedups=speedups,
    )
    info, prompts = request.info, request.prompts
    check_choice(span_positions, SPAN_POSITIONS, "span_positions")
    if within is not None:
        request = replace(request, prompts=_within(prompts, within))
        prompts = request.prompts
    grid = make_grid(info, site, prompts.n_pos, layers, positions, heads, neurons, by_position, prompts.columns)
    rows, noise = with_noise(model, info, prompts, remote)
    per_pass = fit_budget(model, request, {grid.site}, rows)
    if method == "attribution":
        per_row, clean_logits, corrupt_logits = attribution.estimate(
            model, info, grid, rows, request.metric, direction, noise, remote, per_pass, progress, span_positions
        )
    else:
        with torch.no_grad():
            reads = {grid.site: grid.layers}
            keep_kv = request.speedups.reuse_prefix
            runs = cached_runs(runs_cache, model, info, reads, rows, noise, remote, per_pass, progress, keep_kv)
            copies = [
                (pair, pair_writes((cell,), rows, pair, direction, span_positions))
                for pair in range(rows.n_pairs)
                for cell in grid.cells()
            ]
            directed = runs.directed(direction, noise)
            per_row = patched_metric(model, request, directed, copies, rows, per_pass, progress)
        per_row = per_row.view(rows.n_pairs, *grid.shape)
        clean_logits, corrupt_logits = runs.clean_logits, runs.corrupt_logits
    per_pair, clean_base, corrupt_base = summarize(
        per_row, rows, prompts.n_pairs, request.metric, clean_logits, corrupt_logits
    )
    raw_clean, raw_corrupt = raw_baselines(rows, prompts.n_pairs, request.metric, clean_logits, corrupt_logits)
    result = _result(model, grid, prompts, per_pair, clean_base, corrupt_base, request)
    finite = lambda t: [v if math.isfinite(v) else None for v in t.tolist()]  # JSON has no NaN
    result.settings["baselines"] = {"clean": finite(raw_clean), "corrupt": finite(raw_corrupt)}
    warn_non_finite(result.non_finite_cells(), request.metric)
    return result


def _within(prompts: PromptBatch, span: Any) -> PromptBatch:
    """The prompts with span ``span``'s positions as columns (``PromptBatch.within``), the label checked."""
    if prompts.columns is None:
        raise SettingsError(
            f"within={span!r} opens a span into its positions, which needs prompts made from a template"
        )
    if span not in prompts.columns:
        raise SettingsError(
            f"within={span!r} is not a span of the template: choose one of {', '.join(prompts.columns)}"
        )
    return prompts.within(prompts.columns.index(span))


def _result(
    model: Any,
    grid: Grid,
    prompts: PromptBatch,
    per_pair: torch.Tensor,
    clean_base: torch.Tensor,
    corrupt_base: torch.Tensor,
    request: Request,
) -> PatchResult:
    coords: dict[str, list] = {"layer": grid.layers}
    if grid.unit:
        coords[grid.unit] = grid.units
    if grid.by_position and grid.spans:
        coords["span"] = [prompts.columns[c] for c in grid.positions]
    elif grid.by_position:
        coords["pos"] = grid.positions
    settings = {
        "site": grid.site,
        "method": request.method,
        "patched_positions": [prompts.columns[c] for c in grid.positions] if grid.spans else grid.positions,
        "note": attribution.note(grid.site, grid.layers) if request.method == "attribution" else "",
        **provenance(model, request),
    }
    return PatchResult(
        per_pair=per_pair.detach().cpu().numpy(),
        dims=grid.dims,
        coords=coords,
        tokens=prompts.tokens,
        clean_baseline=clean_base.detach().float().cpu().numpy(),
        corrupt_baseline=corrupt_base.detach().float().cpu().numpy(),
        settings=settings,
    )
