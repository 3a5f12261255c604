"""Attribution patching: a first-order estimate of every cell at once.

Patching a cell changes its activation by ``delta = source - target``; to first
order, the metric then changes by ``delta · ∂metric/∂activation``, the gradient
taken at the target run (Nanda, "Attribution patching"). Two forward passes
(source and target) and one backward pass give the estimate for every cell of a
grid, however large.

The estimate is good where activations are small and the model is close to
linear in them (head outputs), and known to be poor where patching changes a lot
(the residual stream, the first MLP layer): the result says so in its
``settings["note"]``.

Example:
    >>> r = patch(model, clean, corrupt, answer="Mary", wrong="John",
    ...           site="head_out", method="attribution")   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import nnsight
import torch

from ..core import continuation
from ..core import metrics as M
from ..core.cells import Write, span_write
from ..core.continuation import Extension
from ..core.remote import trace_kwargs
from ..core.sites import ModelInfo, add_noise, last_logits, on_input_device, raw, reshape
from ..data.prompts import PromptBatch
from .grid import Grid

POOR_NOTE = (
    "Attribution patching is a linear estimate; it is known to be poor for {what}, where patching "
    "changes activations a lot. Check the cells that matter with method='exact'."
)


def note(site: str, layers: list[int]) -> str:
    """The caveat to show with an estimate of ``site`` over ``layers``."""
    if site.startswith("resid"):
        return POOR_NOTE.format(what="the residual stream")
    if site in ("mlp_out", "mlp_neuron") and 0 in layers:
        return POOR_NOTE.format(what="the first MLP layer")
    return "Attribution patching is a linear estimate; check the cells that matter with method='exact'."


def estimate(
    model: Any,
    info: ModelInfo,
    grid: Grid,
    prompts: PromptBatch,
    fn: M.MetricFn,
    direction: str,
    noise: torch.Tensor | None = None,
    remote: bool | str = False,
    rows_per_pass: int = 64,
    progress: Callable[[int, int], None] | None = None,
    span_positions: str = "all",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``_estimate_rows`` over at most ``rows_per_pass`` prompt rows at a time.

    Rows are independent, so splitting them changes nothing but the memory the
    backward pass holds; ``progress(done, total)`` counts rows.
    """
    n = prompts.n_pairs
    parts = []
    for start in range(0, n, rows_per_pass):
        rows = slice(start, min(start + rows_per_pass, n))
        row_noise = None if noise is None else noise[rows]
        part = prompts.rows(rows)
        parts.append(_estimate_rows(model, info, grid, part, fn, direction, row_noise, remote, span_positions))
        if progress is not None:
            progress(rows.stop, n)
    return tuple(torch.cat(tensors) for tensors in zip(*parts))  # type: ignore[return-value]


def _span_contributions(
    grid: Grid,
    prompts: PromptBatch,
    direction: str,
    mode: str,
    src: torch.Tensor,
    tgt: torch.Tensor,
    grad: torch.Tensor,
) -> torch.Tensor:
    """Per pair, the estimate of each span cell: (source - target) . gradient summed over the span's
    positions, the source read at its own positions aligned to the target's (``cells.span_write``).
    Returns ``(pair, pos_group, unit)``."""
    groups = [(c,) for c in grid.positions] if grid.by_position else [tuple(grid.positions)]
    out = []
    for pair in range(prompts.n_pairs):
        cells = []
        for group in groups:
            w = span_write(Write(0, grid.site, 0, group), prompts, pair, direction, mode)
            at, read = list(w.positions), list(w.read_at or w.positions)
            delta = src[pair, read] - tgt[pair, at]  # (aligned, unit, width)
            cells.append((delta * grad[pair, at]).sum((0, -1))[grid.units])
        out.append(torch.stack(cells))
    return torch.stack(out)


def _source_pass(
    model: Any,
    info: ModelInfo,
    grid: Grid,
    source_ids: torch.Tensor,
    source_len: torch.Tensor,
    direction: str,
    noise: torch.Tensor | None,
    remote: bool | str,
    ext: Extension | None = None,
) -> tuple[dict, torch.Tensor]:
    """The source run, without gradients: the activations patching would copy in, and its last logits
    (with ``ext``, its rows' continuations, and the logits carry their scores: ``continuation.scored``)."""
    keep, last, every = continuation.kept(source_len, source_ids.shape[1], ext)
    # Containers filled in a trace are made and saved inside it: on a remote server only saved values come back.
    with torch.no_grad():
        with model.trace(
            on_input_device(model, source_ids),
            **trace_kwargs(model, remote),
            logits_to_keep=keep,
            **continuation.inputs(model, ext, source_ids.shape),
        ):
            source = nnsight.save({})
            add_noise(model, info, noise if direction == "noise" else None, slice(None))
            for layer in grid.layers:
                source[layer] = raw(model, info, grid.site, layer).detach().clone().save()
            source_logits = last_logits(model, info, last if ext is None else every).detach().save()
    return source, source_logits if ext is None else continuation.scored(source_logits, ext)


def _target_pass(
    model: Any,
    info: ModelInfo,
    grid: Grid,
    prompts: PromptBatch,
    target_ids: torch.Tensor,
    target_len: torch.Tensor,
    fn: M.MetricFn,
    direction: str,
    noise: torch.Tensor | None,
    remote: bool | str,
    source_logits: torch.Tensor,
    ext: Extension | None = None,
) -> tuple[dict, dict, torch.Tensor, torch.Tensor]:
    """The target run, and the metric's gradient at each of the grid's activations: acts, grads, logits, metric."""
    keep, last, every = continuation.kept(target_len, target_ids.shape[1], ext)
    answer, wrong = prompts.answer_ids, prompts.wrong_ids
    with torch.enable_grad():
        with model.trace(
            on_input_device(model, target_ids),
            **trace_kwargs(model, remote),
            logits_to_keep=keep,
            **continuation.inputs(model, ext, target_ids.shape),
        ):
            acts, target, grads = {}, nnsight.save({}), nnsight.save({})
            add_noise(model, info, noise if direction == "denoise" else None, slice(None))
            for layer in grid.layers:
                acts[layer] = raw(model, info, grid.site, layer)
                if not acts[layer].requires_grad:
                    # Frozen weights (requires_grad_(False), as large models are loaded) leave the
                    # activations out of the graph: the gradient is wanted with respect to them only.
                    acts[layer].requires_grad_(True)
            logits = last_logits(model, info, last if ext is None else every)
            if ext is not None:  # the continuations' scores, differentiable like the logits they come from
                logits = continuation.scored(logits, ext)
            clean = source_logits if direction == "denoise" else logits.detach()
            value = fn(logits, answer, wrong, clean)
            # The backward pass runs inside the trace, where the graph lives (also on a remote server).
            # Rows are independent, so one pass gives every row's gradient; autograd.grad, unlike
            # backward(), leaves the model's parameters without .grad.
            layer_grads = torch.autograd.grad(value.sum(), [acts[layer] for layer in grid.layers])
            for layer, grad in zip(grid.layers, layer_grads):
                target[layer] = acts[layer].detach().save()
                grads[layer] = grad.save()
            target_logits = logits.detach().save()
            value = value.detach().save()
    return target, grads, target_logits, value


def _directed_rows(prompts: PromptBatch, direction: str) -> tuple[tuple, tuple]:
    """The source's and the target's (ids, real lengths, continuations or None): denoising patches clean into
    corrupt. With answers of several tokens, each row carries its continuations (``core.continuation``)."""
    n, ext = prompts.n_pairs, continuation.extend(prompts)
    ids = torch.cat([prompts.clean_ids, prompts.corrupt_ids]) if ext is None else ext.ids
    runs = [
        (ids[half], prompts.lengths[half], None if ext is None else ext.rows(half))
        for half in (slice(0, n), slice(n, 2 * n))
    ]
    return (runs[0], runs[1]) if direction == "denoise" else (runs[1], runs[0])


def _estimate_rows(
    model: Any,
    info: ModelInfo,
    grid: Grid,
    prompts: PromptBatch,
    fn: M.MetricFn,
    direction: str,
    noise: torch.Tensor | None,
    remote: bool | str,
    span_positions: str = "all",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Estimated metric per (pair, cell), plus clean and corrupted last-position logits.

    Returns ``(per_pair, clean_logits, corrupt_logits)`` with ``per_pair``
    shaped ``(pair, *grid.shape)``. ``noise`` is added to the corrupted run's
    token embeddings (see ``runs.with_noise``).
    """

    (source_ids, source_len, source_ext), (target_ids, target_len, target_ext) = _directed_rows(prompts, direction)
    source, source_logits = _source_pass(
        model, info, grid, source_ids, source_len, direction, noise, remote, source_ext
    )
    target, grads, target_logits, value = _target_pass(
        model, info, grid, prompts, target_ids, target_len, fn, direction, noise, remote, source_logits, target_ext
    )
    per_layer = []
    for layer in grid.layers:
        src = reshape(info, grid.site, source[layer])  # (pair, pos, unit, width)
        tgt = reshape(info, grid.site, target[layer])
        grad = reshape(info, grid.site, grads[layer])
        if grid.spans:
            contrib = _span_contributions(grid, prompts, direction, span_positions, src, tgt, grad)
        else:
            contrib = ((src - tgt) * grad).sum(-1)[:, :, grid.units]  # (pair, pos, unit)
            contrib = contrib[:, grid.positions]
            if not grid.by_position:
                contrib = contrib.sum(1, keepdim=True)
        per_layer.append(contrib.transpose(1, 2))  # (pair, unit, pos_group)
    per_pair = torch.stack(per_layer, 1) + value[:, None, None, None]  # (pair, layer, unit, pos_group)
    if grid.unit is None:
        per_pair = per_pair[:, :, 0]
    if not grid.by_position:
        per_pair = per_pair[..., 0]
    clean, corrupt = (source_logits, target_logits) if direction == "denoise" else (target_logits, source_logits)
    return per_pair.float().cpu(), clean.detach(), corrupt.detach()
