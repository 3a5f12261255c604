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

``grids.patch`` (one site over a grid, one cell per row), ``circuits.joint.patch_sites``
(chosen cells alone and together) and ``grids.path.path_patch`` are clients of the same
pieces: ``prepare`` (the one validation preamble), ``runs.cached_runs`` (step 1)
and ``patched_metric`` (steps 2 and 3, with ``batches`` choosing which copies share a pass).

Example:
    >>> from patchwidget import load_model, patch
    >>> model = load_model()
    >>> r = patch(model, "The capital of France is", "The capital of Japan is",
    ...           answer="Paris", wrong="Tokyo", metric="logit_diff_norm")
    >>> r.dims, r.values.shape
    (('layer', 'pos'), (4, 5))
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import nnsight
import numpy as np
import torch

from ..data.prompts import Noise, PromptBatch, Texts, prepare_prompts
from ..errors import NonFiniteWarning, SettingsError
from . import batches, continuation, memory, passes
from . import metrics as M
from .batches import Copy, Key
from .cells import READ_ORDER, check_choice, indices
from .remote import prepare_remote, trace_kwargs
from .runs import Directed, Progress
from .sites import (
    CACHE,
    ModelInfo,
    add_noise,
    answer_logits,
    answer_unembedding,
    attend_all,
    check_site_supported,
    check_wrapped,
    final_hidden,
    last_logits,
    layer_module,
    mlp_at_read_positions,
    model_info,
    on_input_device,
    prefix_cache,
    segment_mask,
    skip_block,
    takes_segment_mask,
    view,
)

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
        with _TRACE_LOCK, drawn_progress(bound.arguments.get("progress"), fn.__name__) as progress:
            if "progress" in bound.arguments:
                bound.arguments["progress"] = progress
            modes = [(m, m.training) for m in model._module.modules()]
            model._module.eval()
            try:
                return fn(*bound.args, **bound.kwargs)
            finally:
                for m, training in modes:
                    m.training = training

    return locked  # type: ignore[return-value]


@contextlib.contextmanager
def drawn_progress(progress: Any, what: str) -> Iterator[Progress | None]:
    """``progress`` as the callback the loop calls, ``progress(done, total)``: None or a callable as given,
    ``True`` a tqdm bar (in a notebook, its widget) closed when the call ends; anything else is refused.

    Example:
        >>> with drawn_progress(None, "patch") as report:
        ...     report is None
        True
    """
    if progress is None or (callable(progress) and not isinstance(progress, bool)):
        yield progress
        return
    if progress is not True:
        raise SettingsError(
            f"progress must be None, True (draw a progress bar) or a callable progress(done, total), got {progress!r}"
        )
    from tqdm.auto import tqdm

    with tqdm(total=0, desc=what, unit="copy") as bar:

        def report(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        yield report


# --- the one validation preamble ---------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """A validated request: the model's shapes, the tokenized pairs and the settings."""

    info: ModelInfo
    prompts: PromptBatch
    metric: M.ResolvedMetric  # resolved once, here: every layer below reads this value
    direction: str
    method: str
    batch_size: int
    memory_budget: float | None
    remote: bool | str
    speedups: batches.Speedups  # the exact speed-ups that apply, chosen once here (batches.choose)


def prepare(
    model: Any,
    clean: Texts,
    corrupt: Texts | Noise,
    *,
    answer: Texts,
    wrong: Texts,
    sites: Iterable[str],
    metric: M.Metric | M.ResolvedMetric,
    direction: str,
    method: str = "exact",
    batch_size: int = 64,
    memory_budget: float | None = None,
    remote: bool | str = False,
    speedups: batches.Speedups | None = None,
) -> Request:
    """Check everything a patching request depends on, before any forward pass.

    Every entry point (``patch``, ``patch_sites``, ``path_patch``, ``find_circuit``)
    starts here, so a check added here protects all of them. Prompts made from a
    template are accepted here; each entry point patches them by span. The exact
    speed-ups of ``speedups`` (default: all) that apply to the request are chosen
    here, once (``batches.choose``).
    """
    info = model_info(model)
    sites = list(sites)
    for site in sites:
        check_site_supported(site, info)
        if site == "attn_pattern" and model.config._attn_implementation != "eager":
            raise SettingsError(
                "site 'attn_pattern' reads attention weights, which needs eager attention: load the model "
                "with attn_implementation='eager' (patchwidget.load_model does this by default)"
            )
    prepare_remote(model, remote)
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
    sequences = prompts.answer_seqs is not None
    resolved = M.resolve(metric, vocab=model.config.vocab_size, sequences=sequences)
    if sequences:
        check_sequences(model, prompts)
    if "attn_pattern" in sites and not prompts.aligned_one_to_one:
        raise SettingsError(
            "site 'attn_pattern' patches rows with one entry per key position, and the key positions of a pair's "
            "two prompts do not pair up when their spans differ in length; patch head_q/head_k/head_v or "
            "head_out instead"
        )
    if speedups is not None and not isinstance(speedups, batches.Speedups):
        raise SettingsError(f"speedups must be a patchwidget.Speedups or None, got {speedups!r}")
    device = model._module.get_input_embeddings().weight.device.type
    chosen = batches.choose(
        speedups or batches.Speedups(),
        remote=bool(remote),
        on_cpu=device == "cpu",
        packable=takes_segment_mask(model, prompts.width),
        columns_metric=resolved.answer_columns_only,
        sites=set(sites),
        sequences=sequences,
    )
    return Request(info, prompts, resolved, direction, method, int(batch_size), memory_budget, remote, chosen)


def check_sequences(model: Any, prompts: PromptBatch) -> None:
    """Refuse a model whose attention cannot take the continuations' mask, for answers of several tokens."""
    if not takes_segment_mask(model, prompts.width):
        raise SettingsError(
            "answers of several tokens are read in one row after their prompt under a 4D attention mask, which "
            f"this model's attention ({model.config._attn_implementation!r}, or a sliding window narrower than "
            f"{prompts.width} positions) does not take; load it with attn_implementation='eager', or give answers "
            "of one token"
        )


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
    widths = {"mlp_neuron": info.d_mlp, "attn_pattern": info.n_heads * rows.width}
    width = max(widths.get(site, info.d_model) for site in sites)
    vocab = model.config.vocab_size
    shape = (info, rows.width, vocab, dtype_bytes)
    if request.method == "attribution":
        return memory.attribution_rows(budget, batch_size, *shape, width, rows.reads)
    return memory.rows_per_batch(budget, batch_size, *shape, 2 * rows.n_pairs, width, rows.reads)


# --- patch: one site over a grid -----------------------------------------------------------------


def warn_non_finite(cells: list[str], metric: M.ResolvedMetric) -> None:
    """Say which cells have no value (NaN or infinite metric), rather than drawing them silently."""
    if cells:
        shown = ", ".join(cells[:10]) + (f" and {len(cells) - 10} more" if len(cells) > 10 else "")
        warnings.warn(
            f"metric {metric.name!r} gave NaN or an infinite value at {len(cells)} cell(s): {shown}; "
            "they are drawn as 'no value'",
            NonFiniteWarning,
            stacklevel=3,
        )


def summarize(
    values: torch.Tensor,
    rows: PromptBatch,
    n_pairs: int,
    metric: M.ResolvedMetric,
    clean_logits: torch.Tensor,
    corrupt_logits: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair values and baselines from per-row ones, ``values`` being ``(row, ...)``.

    Noise samples are rows of their own, so every number is their mean; then
    a normalised metric (``logit_diff_norm``) rescales each pair so that clean is 1 and corrupt 0.
    """
    clean_base, corrupt_base = raw_baselines(rows, n_pairs, metric, clean_logits, corrupt_logits)
    samples = rows.n_pairs // n_pairs
    values = values.float().cpu().view(n_pairs, samples, *values.shape[1:]).mean(1)
    if metric.normalized:
        values = M.normalize(values, clean_base, corrupt_base)
        clean_base, corrupt_base = torch.ones_like(clean_base), torch.zeros_like(corrupt_base)
    return values, clean_base, corrupt_base


def raw_baselines(
    rows: PromptBatch, n_pairs: int, fn: M.MetricFn, clean_logits: torch.Tensor, corrupt_logits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean and corrupted runs' own metric per pair ``(pair,)``, the mean over noise samples, before any
    rescaling (what ``logit_diff_norm`` rescales by, and what the widget's header shows)."""
    ids = (rows.answer_ids, rows.wrong_ids, clean_logits)
    samples = rows.n_pairs // n_pairs
    clean, corrupt = (
        fn(logits, *ids).float().cpu().view(n_pairs, samples).mean(1) for logits in (clean_logits, corrupt_logits)
    )
    return clean, corrupt


# --- steps 2 and 3: the patched copies ------------------------------------------------------------


def patched_metric(
    model: Any,
    request: Request,
    runs: Directed,
    copies: list[Copy],
    prompts: PromptBatch,
    batch_size: int,
    progress: Progress | None = None,
    captured: dict[Key, torch.Tensor] | None = None,
    capture: dict[str, list[int]] | None = None,
) -> Any:
    """The metric of every patched copy, ``(copy,)``.

    A copy is ``(pair, writes)``: a copy of pair ``pair``'s target prompt with each
    ``Write`` applied (see ``grid.Write``); ``captured`` holds the values of writes
    whose origin is ``"captured"``. With ``capture`` (site -> layers), each copy's
    activations there are recorded too, and ``(values, captured)`` is returned, the
    captured tensors ``(copy, pos, unit, width)``. ``passes.plan_passes`` plans the
    passes (no-op copies, prefix reuse, packed rows, at most ``batch_size`` rows
    each, with the request's ``speedups``); ``run_pass`` runs each.
    """
    fn, info = request.metric, request.info
    tables = {"source": runs.source, "target": runs.target, "captured": captured or {}}
    reads = sorted(
        {(layer, site) for site, layers in (capture or {}).items() for layer in layers},
        key=lambda k: (k[0], READ_ORDER.index(k[1])),
    )
    kept = {key: runs.target[key][[pair for pair, _ in copies]].clone() for key in reads}
    pairs_of = torch.tensor([pair for pair, _ in copies], dtype=torch.long)
    speedups = request.speedups
    unembed = answer_unembedding(model, info) if speedups.two_columns and runs.plain_logits else None
    width = runs.target_ids.shape[1]
    ext = runs.target_ext  # answers of several tokens: every copy computes its continuations to the row's end
    shape = passes.Shape(
        width,
        info.n_layers,
        info.d_model,
        runs.target_len[pairs_of].tolist() if ext is None else [width] * len(copies),
        reuse=speedups.reuse_prefix and runs.target_kv is not None,
        two_columns=unembed is not None and ext is None,
        ext=ext,
    )
    ids = (prompts.answer_ids, prompts.wrong_ids)
    planned = passes.plan_passes(copies, tables, reads, shape, speedups, batch_size, *ids)
    out = torch.empty(len(copies))
    if planned.noop:  # patching in an identical activation changes nothing: the target run's own value
        pairs = pairs_of[planned.noop]
        args = (prompts.answer_ids[pairs], prompts.wrong_ids[pairs], runs.clean_logits[pairs])
        out[planned.noop] = fn(runs.target_logits[pairs], *args).float().cpu()
    done = len(planned.noop)
    if progress is not None and done:
        progress(done, len(copies))
    for p in planned.passes:
        logits, got = run_pass(model, info, runs, p, unembed, request.remote, fn.answer_columns_only)
        pairs = pairs_of[p.copies]
        answer, wrong = prompts.answer_ids[pairs], prompts.wrong_ids[pairs]
        if p.columns is not None:  # the logits' columns are p.columns, in order
            answer, wrong = torch.searchsorted(p.columns, answer), torch.searchsorted(p.columns, wrong)
        out[torch.tensor(p.copies)] = fn(logits, answer, wrong, runs.clean_logits[pairs]).float().cpu()
        lay = p.lay  # each copy's computed positions of what it read; the rest stay the target run's
        spans = (t.tolist() for t in (lay.copy_first, lay.copy_end, lay.copy_offset, lay.copy_row))
        for i, f, e, o, r in zip(p.copies, *spans):
            for key in reads:
                kept[key][i, f:e] = got[key][r, o : o + e - f].to(kept[key].dtype).cpu()
        done += len(p.copies)
        if progress is not None:
            progress(done, len(copies))
    return (out, kept) if capture is not None else out


def run_pass(
    model: Any,
    info: ModelInfo,
    runs: Directed,
    p: passes.Pass,
    unembed: tuple[torch.Tensor, torch.Tensor | None] | None,
    remote: bool | str,
    difference_only: bool = False,
) -> tuple[Any, dict]:
    """One planned pass, inside one trace: its last-token logits ``(copy, vocab or len(p.columns))`` and its reads
    (with continuations, what ``metrics.with_scores`` holds; ``difference_only``: see ``scored_hidden``)."""
    lay = p.lay
    at = (lay.pairs[:, None], lay.positions)  # each index of the pass, as (pair, prompt position)
    ids = runs.target_ids[at]
    if p.mask is not None:  # packed rows, continuations: each index's own position, and which keys it sees
        inputs = {"attention_mask": segment_mask(model, p.mask), "position_ids": on_input_device(model, p.position_ids)}
    else:
        inputs = {"attention_mask": attend_all(model, len(lay.pairs), runs.target_ids.shape[1])}
    if p.cache_end:
        inputs[CACHE] = prefix_cache(model, runs.target_kv, lay.pairs, p.cache_end)
    if p.columns is not None:  # made here: names bound inside a trace's body do not come out of it
        weight, bias = unembed[0][p.columns], None if unembed[1] is None else unembed[1][p.columns]
    with model.trace(on_input_device(model, ids), **trace_kwargs(model, remote), logits_to_keep=p.keep, **inputs):
        got = nnsight.save({})  # made inside: only saved values come back from a server
        noise = None if runs.target_noise is None else runs.target_noise[at]
        add_noise(model, info, noise, slice(None))
        for layer in range(p.skip_below):
            skip_block(layer_module(model, info, layer), runs.block_form, runs.target_blocks[layer][at])
        for (layer, site), kind in p.steps:
            if kind == "write":
                write(model, info, site, layer, *p.writes[(layer, site)])
            else:
                got[(layer, site)] = view(model, info, site, layer).detach().clone().save()
        if p.trim_last_mlp:
            mlp_at_read_positions(model, info, p.keep)
        if unembed is None:
            logits = last_logits(model, info, p.last).detach().save()
        elif p.columns is None:  # continuations: the reads' hidden states, unembedded below as each needs
            hidden = final_hidden(model, info, p.last).detach().save()
        else:
            logits = answer_logits(model, info, p.last, weight, bias).detach().save()
    ext = None if runs.target_ext is None else runs.target_ext.rows(lay.pairs[lay.copy_row])
    if ext is not None and unembed is not None:
        logits = continuation.scored_hidden(hidden, ext, unembed, difference_only)
    elif ext is not None:  # (copy * read, vocab): the last prompt token's logits and the scores
        logits = continuation.scored(logits, ext)
    return logits, got


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
        "metric": request.metric.name,
        "direction": request.direction,
        "clean": prompts.clean,
        "corrupt": prompts.corrupt if prompts.noise is None else f"{prompts.noise}",
        "answer": prompts.answer,
        "wrong": prompts.wrong,
    }


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
