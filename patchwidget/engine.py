"""Exact activation patching in batched nnsight traces.

The whole algorithm, in three steps:

1. **Cache.** Traces over the clean and corrupted prompts record the activations
   every patched copy will need, each block's output, and the metric's baselines.
2. **Patch.** Every patched copy becomes one row of a batch: a copy of the
   *target* prompt (the corrupted one when denoising) whose activations at its
   cells are overwritten with the *source* run's cached values. Many rows run in
   one forward pass, ``batch_size`` rows at a time (short copies share a row).
3. **Measure.** The metric reads each copy's logits at its last token; the
   per-pair values and their mean go into a ``PatchResult``.

``patch`` (one site over a grid, one cell per row), ``circuits.patch_sites``
(chosen cells alone and together) and ``path.path_patch`` are clients of the same
pieces: ``prepare`` (the one validation preamble), ``runs.cached_runs`` (step 1)
and ``patched_metric`` (steps 2 and 3, with ``plan`` choosing the batches).

Example:
    >>> from patchwidget import load_model, patch
    >>> model = load_model()
    >>> r = patch(model, "The capital of France is", "The capital of Japan is",
    ...           answer="Paris", wrong="Tokyo", metric="logit_diff_norm")
    >>> r.dims, r.values.shape
    (('layer', 'pos'), (4, 5))
"""

from __future__ import annotations

import functools
import inspect
import math
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import nnsight
import numpy as np
import torch

from . import attribution, memory, plan
from . import metrics as M
from . import sites as sites_mod
from .errors import NonFiniteWarning, SettingsError
from .grid import READ_ORDER, WRITE_ORDER, Grid, check_choice, indices, make_grid, pair_writes
from .plan import Copy, Key
from .prompts import Noise, PromptBatch, Texts, prepare_prompts
from .remote import prepare_remote, trace_kwargs
from .result import PatchResult
from .runs import Directed, Progress, cached_runs, with_noise
from .sites import (
    AFTER_LAST_MLP,
    CACHE,
    ModelInfo,
    add_noise,
    answer_logits,
    answer_unembedding,
    attend_all,
    check_site_supported,
    check_wrapped,
    last_logits,
    last_positions,
    layer_module,
    mlp_at_last_position,
    model_info,
    on_input_device,
    prefix_cache,
    segment_mask,
    skip_block,
    takes_segment_mask,
    view,
)
from .templates import SPAN_POSITIONS

DIRECTIONS = ("denoise", "noise")
METHODS = ("exact", "attribution")
F = TypeVar("F", bound=Callable[..., Any])

# nnsight traces are not thread-safe, and the widget's worker thread shares models with
# the notebook: every entry point that runs a trace takes this lock.
_TRACE_LOCK = threading.RLock()


def entry_point(fn: F) -> F:
    """Run ``fn(model, ...)`` (or a method ``fn(self, model, ...)``) under the trace lock, with the model in eval mode.

    The model is found by the signature's parameter name, so ``patch(model=m, ...)``
    gets the same checks as ``patch(m, ...)``; anything but a model wrapped by
    ``pw.load_model`` is refused, saying how to wrap it. Dropout in ``train()`` mode
    would make every patched copy differ at random; the model's own mode is put back
    afterwards, even after an error.
    """
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def locked(*args: Any, **kwargs: Any) -> Any:
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as err:
            raise TypeError(f"{fn.__qualname__}(): {err}") from None
        model = bound.arguments.get("model")
        check_wrapped(model)
        with _TRACE_LOCK:
            modes = [(m, m.training) for m in model._module.modules()]
            model._module.eval()
            try:
                return fn(*args, **kwargs)
            finally:
                for m, training in modes:
                    m.training = training

    return locked  # type: ignore[return-value]


# --- the one validation preamble ---------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """A validated request: the model's shapes, the tokenized pairs and the settings."""

    info: ModelInfo
    prompts: PromptBatch
    fn: M.MetricFn
    metric: M.Metric
    direction: str
    method: str
    batch_size: int
    memory_budget: float | None
    remote: bool | str


def prepare(
    model: Any,
    clean: Texts,
    corrupt: Texts | Noise,
    *,
    answer: Texts,
    wrong: Texts,
    sites: Iterable[str],
    metric: M.Metric,
    direction: str,
    method: str = "exact",
    batch_size: int = 64,
    memory_budget: float | None = None,
    remote: bool | str = False,
) -> Request:
    """Check everything a patching request depends on, before any forward pass.

    Every entry point (``patch``, ``patch_sites``, ``path_patch``, ``find_circuit``)
    starts here, so a check added here protects all of them. Prompts made from a
    template are accepted here; each entry point patches them by span.
    """
    info = model_info(model)
    for site in sites:
        check_site_supported(site, info)
        if site == "attn_pattern" and model.config._attn_implementation != "eager":
            raise SettingsError(
                "site 'attn_pattern' reads attention weights, which needs eager attention: load the model "
                "with attn_implementation='eager' (patchwidget.load_model does this by default)"
            )
    prepare_remote(model, remote)
    fn = M.resolve(metric, vocab=model.config.vocab_size)
    check_choice(direction, DIRECTIONS, "direction")
    check_choice(method, METHODS, "method")
    check_batching(batch_size, memory_budget)
    if method == "attribution" and torch.is_inference_mode_enabled():
        raise SettingsError(
            "method='attribution' takes gradients, which torch.inference_mode() forbids: call patch outside "
            "that block, or use method='exact'"
        )
    prompts = prepare_prompts(
        model.tokenizer, clean, corrupt, answer=answer, wrong=wrong, max_len=context_length(model)
    )
    if "attn_pattern" in sites and not prompts.aligned_one_to_one:
        raise SettingsError(
            "site 'attn_pattern' patches rows with one entry per key position, and the key positions of a pair's "
            "two prompts do not pair up when their spans differ in length; patch head_q/head_k/head_v or "
            "head_out instead"
        )
    return Request(info, prompts, fn, metric, direction, method, int(batch_size), memory_budget, remote)


def check_batching(batch_size: Any, memory_budget: Any) -> None:
    """``batch_size`` a positive integer, ``memory_budget`` None or a positive, finite number of bytes."""
    if not isinstance(batch_size, int | np.integer) or isinstance(batch_size, bool) or batch_size < 1:
        raise SettingsError(f"batch_size must be an integer of at least 1, got {batch_size!r}")
    if memory_budget is not None and (
        not isinstance(memory_budget, int | float | np.number)
        or isinstance(memory_budget, bool)
        or not math.isfinite(memory_budget)
        or memory_budget <= 0
    ):
        raise SettingsError(f"memory_budget must be a positive number of bytes or None, got {memory_budget!r}")


def context_length(model: Any) -> int | None:
    """The model's context length from its config, or None where the config does not say."""
    config = model.config
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def fit_budget(model: Any, request: Request, sites: Iterable[str], rows: PromptBatch) -> int:
    """Rows per forward pass under the request's memory budget, for patching ``sites``; checked before compute."""
    budget, batch_size, info = request.memory_budget, request.batch_size, request.info
    if budget is None:
        return batch_size
    dtype_bytes = next(iter(model._module.parameters())).element_size()
    widths = {"mlp_neuron": info.d_mlp, "attn_pattern": info.n_heads * rows.n_pos}
    width = max(widths.get(site, info.d_model) for site in sites)
    vocab = model.config.vocab_size
    if request.method == "attribution":
        return memory.attribution_rows(budget, batch_size, info, rows.n_pos, vocab, dtype_bytes, width)
    return memory.rows_per_batch(budget, batch_size, info, rows.n_pos, vocab, dtype_bytes, 2 * rows.n_pairs, width)


# --- patch: one site over a grid -----------------------------------------------------------------


@entry_point
def patch(
    model: Any,
    clean: Texts,
    corrupt: Texts | Noise,
    *,
    answer: Texts,
    wrong: Texts,
    site: str = "resid_pre",
    metric: M.Metric = "logit_diff",
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
            model, info, grid, rows, request.fn, direction, noise, remote, per_pass, progress, span_positions
        )
    else:
        with torch.no_grad():
            runs = cached_runs(
                runs_cache, model, info, {grid.site: grid.layers}, rows, noise, remote, per_pass, progress
            )
            copies = [
                (pair, pair_writes((cell,), rows, pair, direction, span_positions))
                for pair in range(rows.n_pairs)
                for cell in grid.cells()
            ]
            directed = runs.directed(direction, noise)
            per_row = patched_metric(model, info, directed, copies, rows, request.fn, per_pass, progress, remote)
        per_row = per_row.view(rows.n_pairs, *grid.shape)
        clean_logits, corrupt_logits = runs.clean_logits, runs.corrupt_logits
    per_pair, clean_base, corrupt_base = summarize(
        per_row, rows, prompts.n_pairs, request.fn, metric, clean_logits, corrupt_logits
    )
    result = _result(model, grid, prompts, per_pair, clean_base, corrupt_base, request)
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


def warn_non_finite(cells: list[str], metric: M.Metric) -> None:
    """Say which cells have no value (NaN or infinite metric), rather than drawing them silently."""
    if cells:
        shown = ", ".join(cells[:10]) + (f" and {len(cells) - 10} more" if len(cells) > 10 else "")
        warnings.warn(
            f"metric {M.metric_name(metric)!r} gave NaN or an infinite value at {len(cells)} cell(s): {shown}; "
            "they are drawn as 'no value'",
            NonFiniteWarning,
            stacklevel=3,
        )


def summarize(
    values: torch.Tensor,
    rows: PromptBatch,
    n_pairs: int,
    fn: M.MetricFn,
    metric: M.Metric,
    clean_logits: torch.Tensor,
    corrupt_logits: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair values and baselines from per-row ones, ``values`` being ``(row, ...)``.

    Noise samples are rows of their own, so every number is their mean; then
    ``logit_diff_norm`` rescales each pair so that clean is 1 and corrupt 0.
    """
    ids = (rows.answer_ids, rows.wrong_ids, clean_logits)
    clean_base, corrupt_base = fn(clean_logits, *ids).float().cpu(), fn(corrupt_logits, *ids).float().cpu()
    samples = rows.n_pairs // n_pairs
    values = values.float().cpu().view(n_pairs, samples, *values.shape[1:]).mean(1)
    clean_base = clean_base.view(n_pairs, samples).mean(1)
    corrupt_base = corrupt_base.view(n_pairs, samples).mean(1)
    if metric == "logit_diff_norm":
        values = M.normalize(values, clean_base, corrupt_base)
        clean_base, corrupt_base = torch.ones_like(clean_base), torch.zeros_like(corrupt_base)
    return values, clean_base, corrupt_base


# --- steps 2 and 3: the patched copies ------------------------------------------------------------


def patched_metric(
    model: Any,
    info: ModelInfo,
    runs: Directed,
    copies: list[Copy],
    prompts: PromptBatch,
    fn: M.MetricFn,
    batch_size: int,
    progress: Progress | None,
    remote: bool | str = False,
    captured: dict[Key, torch.Tensor] | None = None,
    capture: dict[str, list[int]] | None = None,
) -> Any:
    """The metric of every patched copy, ``(copy,)``.

    A copy is ``(pair, writes)``: a copy of pair ``pair``'s target prompt with
    each ``Write`` applied (see ``grid.Write``); ``captured`` holds the values of
    writes whose origin is ``"captured"``. With ``capture`` (site -> layers),
    each copy's activations there are recorded too, and ``(values, captured)``
    is returned, the captured tensors ``(copy, pos, unit, width)``.

    Four things keep this fast and exact. A copy changes nothing before the first
    position where one of its writes differs from the target run's own value: if
    there is none, the copy is a no-op and takes the target run's value; else it
    computes only the positions from there on, reading the keys and values of the
    earlier ones from the target run (prefix reuse). Copies of one pair that
    are shorter than the prompt share a row, end to end, each with its own
    position ids, under a 4D attention mask that shows each its cached prefix
    and its own segment only (``plan.pack_rows``; eager and SDPA attention
    without a narrower sliding window, not on a server, not for ``attn_pattern``).
    A batch skips the blocks below its lowest patched layer (their outputs are the
    cached target run's). Rows are split into batches of least work
    (``plan_batches``), at most ``batch_size`` rows each. The unembedding (and, in a
    pass of one copy per row, the last block's MLP) runs at the last position only.
    """
    tables = {"source": runs.source, "target": runs.target, "captured": captured or {}}
    reads = sorted(
        {(layer, site) for site, layers in (capture or {}).items() for layer in layers},
        key=lambda k: (k[0], READ_ORDER.index(k[1])),
    )
    kept: dict[Key, torch.Tensor] = {key: runs.target[key][[pair for pair, _ in copies]].clone() for key in reads}
    out = torch.empty(len(copies))
    first = plan.first_changes(copies, tables)
    noop = first == plan.NO_CHANGE
    if noop.any():  # patching in an identical activation changes nothing: the target run's own value
        pairs = torch.tensor([pair for (pair, _), same in zip(copies, noop) if same])
        out[noop] = (
            fn(runs.target_logits[pairs], prompts.answer_ids[pairs], prompts.wrong_ids[pairs], runs.clean_logits[pairs])
            .float()
            .cpu()
        )
    # The attention pattern's write and read span every key position: those copies run from position 0.
    sites = {w.site for _, writes in copies for w in writes} | {site for _, site in reads}
    if runs.target_kv is None or "attn_pattern" in sites:
        first = torch.zeros_like(first)
    todo = [i for i in range(len(copies)) if not noop[i]]
    done = len(copies) - len(todo)
    if progress is not None and done:
        progress(done, len(copies))
    n_pos, n_layers = runs.target_ids.shape[1], info.n_layers
    # Short copies of one pair share a row (plan.pack_rows) where a 4D attention mask can keep them apart.
    packable = not remote and "attn_pattern" not in sites and takes_segment_mask(model, n_pos)
    pairs_of = [pair for pair, _ in copies]
    ends = runs.target_len[pairs_of].tolist()
    lowest_layer = [min((w.layer for w in writes), default=0) for _, writes in copies]
    # The logit difference reads two logits per row: unembed only those columns (exact where the
    # unembedding is a plain linear layer whose output the model returns unchanged, see sites.answer_unembedding).
    narrow = getattr(fn, "answer_columns_only", False) and not remote and runs.plain_logits
    unembed = answer_unembedding(model, info) if narrow else None
    # On a server each pass is a request, whose round trip outweighs any work a finer split saves.
    overhead = plan.REMOTE_PASS_OVERHEAD if remote else None
    on_cpu = not remote and model._module.get_input_embeddings().weight.device.type == "cpu"
    rows, batches = plan.plan_rows(
        todo,
        pairs_of,
        first.tolist(),
        ends,
        lowest_layer,
        n_pos,
        n_layers,
        info.d_model,
        batch_size,
        pack=packable,
        pass_overhead=overhead,
        max_positions=plan.CPU_PASS_POSITIONS if on_cpu else None,
    )
    for batch in batches:
        index, lay = plan.layout([rows[b] for b in batch], n_pos)
        chunk = [copies[i] for i in index]
        pairs = torch.tensor([pair for pair, _ in chunk])
        writes = _batch_writes(chunk, tables, lay)
        # Reads and writes in forward order; a read of a site comes after a write of an earlier one.
        steps = sorted(
            [(key, "write") for key in writes] + [(key, "read") for key in reads],
            key=lambda s: (s[0][0], (WRITE_ORDER if s[1] == "write" else READ_ORDER).index(s[0][1]), s[1] == "read"),
        )
        lowest = min([layer for layer, _ in writes] + [layer for layer, _ in reads])
        at = (lay.pairs[:, None], lay.positions)  # each index of the pass, as (pair, prompt position)
        ids = runs.target_ids[at]
        inputs: dict[str, Any]
        if lay.start is None:  # packed rows: each copy's own positions, and a mask that keeps copies apart
            positions = on_input_device(model, lay.positions)
            inputs = {"attention_mask": segment_mask(model, plan.segment_mask(lay)), "position_ids": positions}
        else:
            inputs = {"attention_mask": attend_all(model, len(lay.pairs), n_pos)}
        if lay.cache_end:
            inputs[CACHE] = prefix_cache(model, runs.target_kv, lay.pairs, lay.cache_end)
        keep, last = last_positions(lay.copy_row, lay.copy_last, ids.shape[1])
        if unembed is not None:  # made here: names bound inside a trace's body do not come out of it
            columns = torch.unique(torch.cat([prompts.answer_ids[pairs], prompts.wrong_ids[pairs]]))
            weight, bias = unembed[0][columns], None if unembed[1] is None else unembed[1][columns]
        with model.trace(on_input_device(model, ids), **trace_kwargs(model, remote), logits_to_keep=keep, **inputs):
            got = nnsight.save({})  # made inside: only saved values come back from a server
            noise = None if runs.target_noise is None else runs.target_noise[at]
            add_noise(model, info, noise, slice(None))
            for layer in range(lowest):
                skip_block(layer_module(model, info, layer), runs.block_form, runs.target_blocks[layer][at])
            for (layer, site), kind in steps:
                if kind == "write":
                    write(model, info, site, layer, *writes[(layer, site)])
                else:
                    got[(layer, site)] = view(model, info, site, layer).detach().clone().save()
            if (
                sites_mod.TRIM_LAST_MLP
                and last is None
                and not any(key == (n_layers - 1, site) for key, _ in steps for site in AFTER_LAST_MLP)
            ):
                mlp_at_last_position(model, info)
            if unembed is None:
                logits = last_logits(model, info, last).detach().save()
            else:
                logits = answer_logits(model, info, last, weight, bias).detach().save()
        answer, wrong = prompts.answer_ids[pairs], prompts.wrong_ids[pairs]
        if unembed is not None:  # the logits' columns are `columns`, in order
            answer, wrong = torch.searchsorted(columns, answer), torch.searchsorted(columns, wrong)
        values = fn(logits, answer, wrong, runs.clean_logits[pairs])
        out[torch.tensor(index)] = values.float().cpu()
        if reads:  # each copy's computed positions; the rest stay the target run's
            spans = (t.tolist() for t in (lay.copy_first, lay.copy_end, lay.copy_offset, lay.copy_row))
            for i, f, e, o, r in zip(index, *spans):
                for key in reads:
                    kept[key][i, f:e] = got[key][r, o : o + e - f].to(kept[key].dtype).cpu()
        done += len(chunk)
        if progress is not None:
            progress(done, len(copies))
    return (out, kept) if capture is not None else out


def _batch_writes(
    chunk: list[Copy], tables: dict[str, dict[Key, torch.Tensor]], lay: plan.Layout
) -> dict[Key, tuple[torch.Tensor, ...]]:
    """Per (layer, site): batch rows, indices in the row (``lay.index``), units and the values to write there.

    Only writes at a copy's computed positions are kept: the ones before its first
    position put back the target run's own values (see ``first_changes``), which the
    cached prefix already holds, and the ones after its prompt's last token change
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


def write(
    model: Any,
    info: ModelInfo,
    site: str,
    layer: int,
    r: torch.Tensor,
    p: torch.Tensor,
    u: torch.Tensor,
    values: torch.Tensor,
) -> None:
    """Inside a trace: overwrite the site at (row, pos, unit) with ``values``."""
    if site == "attn_pattern":
        # The pattern is not a module's input or output, so patch what it
        # produces: head output = source pattern @ this run's values.
        v = view(model, info, "head_v", layer)  # (batch, key_pos, kv_head, d_head)
        kv = u // (info.n_heads // info.n_kv_heads)
        z = torch.einsum("wk,wkd->wd", values.to(v.dtype), v[r, :, kv])
        view(model, info, "head_out", layer)[r, p, u] = z
        return
    target = view(model, info, site, layer)
    target[r, p, u] = values.to(target.dtype)


def provenance(model: Any, request: Request) -> dict[str, Any]:
    """What every result and circuit records of where it came from: model, its shape, metric, direction, prompts."""
    prompts = request.prompts
    return {
        "model": getattr(model.config, "_name_or_path", "") or type(model).__name__,
        "shape": request.info.shape(),
        "metric": M.metric_name(request.metric),
        "direction": request.direction,
        "clean": prompts.clean,
        "corrupt": prompts.corrupt if prompts.noise is None else f"{prompts.noise}",
        "answer": prompts.answer,
        "wrong": prompts.wrong,
    }


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


@entry_point
def attention_pattern(model: Any, prompt: str, layer: int, head: int, remote: bool | str = False) -> np.ndarray:
    """The attention pattern of one head on one prompt, ``(query, key)``.

    Example:
        >>> attention_pattern(load_model(), "The capital of France is", 2, 1).shape  # doctest: +SKIP
        (5, 5)
    """
    info = model_info(model)
    if model.config._attn_implementation != "eager":
        raise SettingsError("attention patterns need eager attention: load with attn_implementation='eager'")
    indices([layer], info.n_layers, "layers", "layers")
    indices([head], info.n_heads, "heads", "heads")
    ids = torch.tensor([model.tokenizer(prompt)["input_ids"]])
    prepare_remote(model, remote)
    with torch.no_grad():
        with model.trace(on_input_device(model, ids), **trace_kwargs(model, remote)):
            pattern = view(model, info, "attn_pattern", layer)[0, :, head].detach().save()  # (query, key)
    return pattern.float().cpu().numpy()
