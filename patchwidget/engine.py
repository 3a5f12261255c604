"""Exact activation patching in batched nnsight traces.

The whole algorithm, in three steps:

1. **Cache.** Traces over the clean and corrupted prompts record the activations
   every patched copy will need, each block's output, and the metric's baselines.
2. **Patch.** Every patched copy becomes one row of a batch: a copy of the
   *target* prompt (the corrupted one when denoising) whose activations at its
   cells are overwritten with the *source* run's cached values. Many rows run in
   one forward pass, ``batch_size`` rows at a time.
3. **Measure.** The metric reads each row's logits at the last position; the
   per-pair values and their mean go into a ``PatchResult``.

``patch`` (one site over a grid, one cell per row) and ``circuits.patch_sites``
(chosen cells alone and together) are clients of the same pieces: ``prepare``
(the one validation preamble), ``cached_runs`` (step 1) and ``patched_metric``
(steps 2 and 3).

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
import math
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import nnsight
import numpy as np
import torch

from . import attribution, memory
from . import metrics as M
from .errors import NonFiniteWarning, PromptError, SettingsError
from .grid import READ_ORDER, WRITE_ORDER, Grid, Write, check_choice, indices, make_grid, span_write
from .prompts import Noise, PromptBatch, Texts, prepare_prompts
from .remote import prepare_remote, trace_kwargs
from .result import PatchResult
from .sites import (
    CACHE,
    ModelInfo,
    add_noise,
    answer_logits,
    answer_unembedding,
    attend_all,
    cache_tensors,
    check_site_supported,
    hidden_states,
    last_logits,
    last_positions,
    layer_module,
    model_info,
    module,
    on_input_device,
    output_form,
    prefix_cache,
    skip_block,
    view,
)
from .templates import SPAN_POSITIONS

DIRECTIONS = ("denoise", "noise")
METHODS = ("exact", "attribution")
Progress = Callable[[int, int], None]
F = TypeVar("F", bound=Callable[..., Any])

# nnsight traces are not thread-safe, and the widget's worker thread shares models with
# the notebook: every entry point that runs a trace takes this lock.
_TRACE_LOCK = threading.RLock()


def entry_point(fn: F) -> F:
    """Run ``fn(model, ...)`` (or a method ``fn(self, model, ...)``) under the trace lock, with the model in eval mode.

    Dropout in ``train()`` mode would make every patched copy differ at random;
    the model's own mode is put back afterwards, even after an error.
    """

    @functools.wraps(fn)
    def locked(*args: Any, **kwargs: Any) -> Any:
        model = next((a for a in args[:2] if hasattr(a, "_module")), None)  # fn(model, ...) or a method's
        with _TRACE_LOCK:
            torch_module = getattr(model, "_module", None)
            modes = [(m, m.training) for m in torch_module.modules()] if torch_module is not None else []
            if torch_module is not None:
                torch_module.eval()
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
    spans_ok: bool = False,
) -> Request:
    """Check everything a patching request depends on, before any forward pass.

    Every entry point (``patch``, ``patch_sites``) starts here, so a check added
    here protects all of them. ``spans_ok``: the caller takes prompts made from a
    template (so far ``patch`` and ``patch_sites``).
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
    if prompts.columns is not None and not spans_ok:
        raise PromptError(
            "prompts made from a template (pw.Template(...).fill(...)) work with pw.patch, pw.patch_sites, "
            "pw.path_patch and pw.explore, which patch them by span; here, pass the prompts as plain strings "
            "(str(prompt)) of equal token lengths"
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
    ``mlp_neuron``). At most ``batch_size`` patched copies share a forward
    pass, fewer if ``memory_budget`` (bytes) says so. ``progress(done, total)``
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
        spans_ok=True,
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
                (pair, (span_write(cell, rows, pair, direction, span_positions) if grid.spans else cell,))
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


# --- noise as the corruption ---------------------------------------------------------------------


def with_noise(
    model: Any, info: ModelInfo, prompts: PromptBatch, remote: bool | str = False
) -> tuple[PromptBatch, torch.Tensor | None]:
    """Prompts with one row per noise sample, and the noise to add to the
    corrupted rows' token embeddings, ``(row, pos, d_model)``; ``None`` when
    the corruption is a prompt."""
    spec = prompts.noise
    if spec is None:
        return prompts, None
    weight = module(model, info.arch.embed).weight
    std = embedding_std(model, info, remote) * spec.scale
    gen = torch.Generator().manual_seed(spec.seed)
    noise = torch.zeros(prompts.n_pairs * spec.samples, prompts.n_pos, weight.shape[1], dtype=weight.dtype)
    for pair, positions in enumerate(prompts.noise_positions or []):
        for sample in range(spec.samples):
            noise[pair * spec.samples + sample, positions] = (
                torch.randn(len(positions), weight.shape[1], generator=gen).to(weight.dtype) * std
            )
    return prompts.rows(torch.arange(prompts.n_pairs).repeat_interleave(spec.samples)), noise


def embedding_std(model: Any, info: ModelInfo, remote: bool | str = False) -> float:
    """The standard deviation of the token-embedding matrix, read where the weights are."""
    weight = module(model, info.arch.embed).weight
    if weight.device.type != "meta":
        return float(weight.detach().float().std())
    with torch.no_grad():  # weights not loaded here (remote=True): one token's trace reads them on the server
        with model.trace(torch.zeros(1, 1, dtype=torch.long), **trace_kwargs(model, remote)):
            std = module(model, info.arch.embed).weight.detach().float().std().save()
    return float(std)


# --- step 1: the clean and corrupted runs --------------------------------------------------------

Key = tuple[int, str]  # (layer, site)

# Patched copies compute only from their first patched position on, reading the keys and values
# of the positions before it from the target run (False: every copy runs from position 0).
REUSE_PREFIX = True


@dataclass
class Runs:
    """What the clean and corrupted runs leave behind; every tensor is
    ``(2 * pair, ...)`` with the clean rows first."""

    n_pairs: int
    acts: dict[Key, torch.Tensor]  # site activation per (layer, site), (run, pos, unit, width)
    blocks: list[torch.Tensor]  # each block's output, (run, pos, d_model), for skipping unpatched layers
    logits: torch.Tensor  # (run, vocab), last position
    ids: torch.Tensor  # (run, pos), padded on the right where prompts differ in length
    lengths: torch.Tensor  # (run,) real lengths
    block_form: int = 0  # how the blocks returned their output in these runs (sites.output_form)
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer (keys, values), (run, kv_head, pos, d_head)

    @property
    def clean_logits(self) -> torch.Tensor:
        return self.logits[: self.n_pairs]

    @property
    def corrupt_logits(self) -> torch.Tensor:
        return self.logits[self.n_pairs :]

    def directed(self, direction: str, noise: torch.Tensor | None = None) -> Directed:
        """Source and target halves: denoising patches clean into corrupt."""
        n = self.n_pairs
        src, tgt = (slice(0, n), slice(n, 2 * n)) if direction == "denoise" else (slice(n, 2 * n), slice(0, n))
        return Directed(
            source={key: a[src] for key, a in self.acts.items()},
            target={key: a[tgt] for key, a in self.acts.items()},
            target_blocks=[b[tgt] for b in self.blocks],
            block_form=self.block_form,
            target_logits=self.logits[tgt],
            target_ids=self.ids[tgt],
            target_len=self.lengths[tgt],
            clean_logits=self.clean_logits,
            target_noise=noise if direction == "denoise" else None,
            target_kv=None if self.kv is None else [(k[tgt], v[tgt]) for k, v in self.kv],
        )


@dataclass
class Directed:
    """The runs seen from one direction: the source activations copied into patched copies of the target prompt."""

    source: dict[Key, torch.Tensor]  # (pair, pos, unit, width)
    target: dict[Key, torch.Tensor]
    target_blocks: list[torch.Tensor]  # (pair, pos, d_model)
    block_form: int  # how the blocks returned their output in the target run (sites.output_form)
    target_logits: torch.Tensor  # (pair, vocab)
    target_ids: torch.Tensor  # (pair, pos)
    target_len: torch.Tensor  # (pair,) real lengths of the target prompts
    clean_logits: torch.Tensor  # (pair, vocab)
    target_noise: torch.Tensor | None = None  # (pair, pos, d_model) when the target run is the noised one
    target_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer, (pair, kv_head, pos, d_head)


def cached_runs(
    store: dict | None,
    model: Any,
    info: ModelInfo,
    reads: dict[str, list[int]],
    prompts: PromptBatch,
    noise: torch.Tensor | None,
    remote: bool | str,
    rows_per_pass: int,
    progress: Progress | None = None,
) -> Runs:
    """``run_cache``, remembered in ``store`` under everything its result depends on.

    Runs that recorded more sites serve a request for fewer: ``find_circuit`` records
    all its sites once, and every grid it ranks with reuses those runs.
    """
    if store is None:
        return run_cache(model, info, reads, prompts, noise, remote, rows_per_pass, progress)
    same = (
        id(model),
        prompts.clean_ids.numpy().tobytes(),
        prompts.corrupt_ids.numpy().tobytes(),
        prompts.clean_ids.shape,
        repr(prompts.noise),
    )
    for (*prefix, sites), runs in store.items():
        if tuple(prefix) == same and set(reads) <= set(sites):
            return runs
    # Every layer, so that any later grid of these sites finds its layers.
    every_layer = {site: list(range(info.n_layers)) for site in reads}
    runs = store[(*same, tuple(sorted(reads)))] = run_cache(
        model, info, every_layer, prompts, noise, remote, rows_per_pass, progress
    )
    return runs


def run_cache(
    model: Any,
    info: ModelInfo,
    reads: dict[str, list[int]],
    prompts: PromptBatch,
    noise: torch.Tensor | None = None,
    remote: bool | str = False,
    rows_per_pass: int = 64,
    progress: Progress | None = None,
) -> Runs:
    """Traces over the clean and corrupted prompts, recording ``reads`` (site -> layers) and what patching needs.

    The runs take at most ``rows_per_pass`` prompts a pass (clean and corrupted
    ones alike), so that many prompt pairs fit the same memory as the patched
    copies; when they take several passes, each reports ``progress``. Run here
    (not remotely), they also keep every layer's keys and values, which patched
    copies reuse for the positions before their first patched one.
    """
    ids = torch.cat([prompts.clean_ids, prompts.corrupt_ids])  # (run, pos)
    noise_all = None if noise is None else torch.cat([torch.zeros_like(noise), noise])
    keep_kv = REUSE_PREFIX and not remote  # a server would send every layer's keys and values back
    parts = []
    for start in range(0, len(ids), rows_per_pass):
        rows = slice(start, min(start + rows_per_pass, len(ids)))
        part_noise = None if noise_all is None else noise_all[rows]
        parts.append(_run_pass(model, info, reads, ids[rows], prompts.lengths[rows], part_noise, remote, keep_kv))
        if progress is not None and rows_per_pass < len(ids):
            progress(rows.stop, len(ids))
    acts = {key: torch.cat([p[0][key] for p in parts]) for key in parts[0][0]}
    blocks = [torch.cat([p[1][i] for p in parts]) for i in range(len(parts[0][1]))]
    logits = torch.cat([p[2] for p in parts])
    kv = None
    if keep_kv and all(p[4] is not None and len(p[4]) == info.n_layers for p in parts):
        kv = [tuple(torch.cat([p[4][layer][i] for p in parts]) for i in (0, 1)) for layer in range(info.n_layers)]
    return Runs(prompts.n_pairs, acts, blocks, logits, ids, prompts.lengths, parts[0][3], kv)


def _run_pass(
    model: Any,
    info: ModelInfo,
    reads: dict[str, list[int]],
    ids: torch.Tensor,
    lengths: torch.Tensor,
    noise: torch.Tensor | None,
    remote: bool | str,
    keep_kv: bool = False,
) -> tuple[dict[Key, torch.Tensor], list[torch.Tensor], torch.Tensor, int, list | None]:
    """One trace over some rows of the runs."""
    keys = sorted(
        {(layer, site) for site, layers in reads.items() for layer in layers},
        key=lambda k: (k[0], READ_ORDER.index(k[1])),
    )
    top = max(layer for layer, _ in keys)
    keep, index = last_positions(lengths, ids.shape[1])
    with model.trace(
        on_input_device(model, ids),
        **trace_kwargs(model, remote),
        logits_to_keep=keep,
        use_cache=keep_kv,
        attention_mask=attend_all(model, *ids.shape),
    ):
        acts, blocks = nnsight.save({}), nnsight.save([])  # made inside: only saved values come back from a server
        form = nnsight.save([0])
        add_noise(model, info, noise, slice(None))
        for layer in range(top + 1):
            for key in (k for k in keys if k[0] == layer):
                acts[key] = view(model, info, key[1], layer).detach().clone().save()
            if layer < top:
                out = layer_module(model, info, layer).output
                form[0] = output_form(out)  # observed, to skip blocks in the patched runs in the same form
                blocks.append(hidden_states(out).detach().clone().save())
        logits = last_logits(model, info, index).detach().save()
        cache = getattr(model.output, CACHE).save() if keep_kv else None
    return dict(acts), list(blocks), logits, form[0], cache_tensors(cache) if keep_kv else None


# --- steps 2 and 3: the patched copies ------------------------------------------------------------

Copy = tuple[int, tuple[Write, ...]]  # (pair, the writes of one patched copy of that pair's target prompt)


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
    earlier ones from the target run (prefix reuse). A batch skips the blocks
    below its lowest patched layer (their outputs are the cached target run's).
    Copies are sorted by first position and layer and split into batches of least
    work (``plan_batches``). The unembedding runs at the last position only.
    """
    tables = {"source": runs.source, "target": runs.target, "captured": captured or {}}
    reads = sorted(
        {(layer, site) for site, layers in (capture or {}).items() for layer in layers},
        key=lambda k: (k[0], READ_ORDER.index(k[1])),
    )
    kept: dict[Key, torch.Tensor] = {key: runs.target[key][[pair for pair, _ in copies]].clone() for key in reads}
    out = torch.empty(len(copies))
    first = first_changes(copies, tables)
    noop = first == NO_CHANGE
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
    first = first.tolist()
    lowest_layer = [min((w.layer for w in writes), default=0) for _, writes in copies]
    todo = [i for i in range(len(copies)) if not noop[i]]
    done = len(copies) - len(todo)
    if progress is not None and done:
        progress(done, len(copies))
    n_pos, n_layers = runs.target_ids.shape[1], info.n_layers
    # The logit difference reads two logits per row: unembed only those columns (exact where the
    # unembedding is a plain linear layer, see sites.answer_unembedding).
    unembed = answer_unembedding(model, info) if getattr(fn, "answer_columns_only", False) and not remote else None
    # On a server each pass is a request, whose round trip outweighs any work a finer split saves.
    overhead = REMOTE_PASS_OVERHEAD if remote else PASS_OVERHEAD
    costs = [(first[i], lowest_layer[i]) for i in todo]
    for index in plan_batches(costs, batch_size, n_pos, n_layers, todo, overhead):
        chunk = [copies[i] for i in index]
        pairs = torch.tensor([pair for pair, _ in chunk])
        start = min(first[i] for i in index)  # positions before it come from the target run's cache
        writes = _batch_writes(chunk, tables, start)
        # Reads and writes in forward order; a read of a site comes after a write of an earlier one.
        steps = sorted(
            [(key, "write") for key in writes] + [(key, "read") for key in reads],
            key=lambda s: (s[0][0], (WRITE_ORDER if s[1] == "write" else READ_ORDER).index(s[0][1]), s[1] == "read"),
        )
        lowest = min([layer for layer, _ in writes] + [layer for layer, _ in reads])
        ids = runs.target_ids[pairs, start:]
        prefix: dict[str, Any] = {"attention_mask": attend_all(model, len(pairs), runs.target_ids.shape[1])}
        if start:
            prefix[CACHE] = prefix_cache(model, runs.target_kv, pairs, start)
        keep, last = last_positions(runs.target_len[pairs], runs.target_ids.shape[1], start)
        if unembed is not None:  # made here: names bound inside a trace's body do not come out of it
            columns = torch.unique(torch.cat([prompts.answer_ids[pairs], prompts.wrong_ids[pairs]]))
            weight, bias = unembed[0][columns], None if unembed[1] is None else unembed[1][columns]
        with model.trace(on_input_device(model, ids), **trace_kwargs(model, remote), logits_to_keep=keep, **prefix):
            got = nnsight.save({})  # made inside: only saved values come back from a server
            noise = None if runs.target_noise is None else runs.target_noise[pairs, start:]
            add_noise(model, info, noise, slice(None))
            for layer in range(lowest):
                skip_block(layer_module(model, info, layer), runs.block_form, runs.target_blocks[layer][pairs, start:])
            for (layer, site), kind in steps:
                if kind == "write":
                    write(model, info, site, layer, *writes[(layer, site)])
                else:
                    got[(layer, site)] = view(model, info, site, layer).detach().clone().save()
            if unembed is None:
                logits = last_logits(model, info, last).detach().save()
            else:
                logits = answer_logits(model, info, last, weight, bias).detach().save()
        answer, wrong = prompts.answer_ids[pairs], prompts.wrong_ids[pairs]
        if unembed is not None:  # the logits' columns are `columns`, in order
            answer, wrong = torch.searchsorted(columns, answer), torch.searchsorted(columns, wrong)
        values = fn(logits, answer, wrong, runs.clean_logits[pairs])
        out[torch.tensor(index)] = values.float().cpu()
        for key in reads:
            kept[key][torch.tensor(index), start:] = got[key].to(kept[key].dtype).cpu()
        done += len(chunk)
        if progress is not None:
            progress(done, len(copies))
    return (out, kept) if capture is not None else out


NO_CHANGE = torch.iinfo(torch.long).max


def first_changes(copies: list[Copy], tables: dict[str, dict[Key, torch.Tensor]]) -> torch.Tensor:
    """Per copy, the first position where a write puts a value other than the target run's own, ``(copy,)``.

    ``NO_CHANGE`` where none does: the copy is a no-op. Before that position the copy
    is the target run at every layer (the model is causal), so writes there, freezes
    included, change nothing. One comparison per (layer, site) for all copies at once.
    """
    entries: dict[tuple[int, str, str], list[tuple[int, int, int, int, int]]] = {}
    for i, (pair, writes) in enumerate(copies):
        for w in writes:
            if w.origin == "target":  # a freeze puts back the target run's own value
                continue
            at = w.row if w.origin == "captured" else pair
            pairs = zip(w.positions, w.read_at or w.positions)
            entries.setdefault((w.layer, w.site, w.origin), []).extend((i, at, pair, p, r, w.unit) for p, r in pairs)
    first = torch.full((len(copies),), NO_CHANGE)
    target = tables["target"]
    for (layer, site, origin), rows in entries.items():
        i, at, pair, p, r, u = torch.tensor(rows).T
        values = tables[origin][(layer, site)][at, r, u]  # (entry, width)
        changed = (values != target[(layer, site)][pair, p, u]).flatten(1).any(1).cpu()
        first.scatter_reduce_(0, i[changed], p[changed], "amin")
    return first


# A forward pass costs about as much, beyond its rows' work, as this many positions run through every layer:
# every pass reads all the weights (the unembedding's most of all). Tuned on the GPT-2-small shape on 2 CPU
# cores (benchmarks/bench_resid_pre.py); smaller values split batches too finely there.
PASS_OVERHEAD = 30
REMOTE_PASS_OVERHEAD = 10**9  # as few requests as batch_size allows; among those, the least work


BAND_WIDTHS = (2, 3, 4, 6, 8)  # position bands tried by plan_batches


def plan_batches(
    costs: list[tuple[int, int]],
    batch_size: int,
    n_pos: int,
    n_layers: int,
    ids: list[int],
    pass_overhead: float = PASS_OVERHEAD,
) -> list[list[int]]:
    """Split copies into batches of at most ``batch_size`` that together do the least work.

    ``costs`` holds each copy's (first position, lowest layer). A batch runs its
    positions from its smallest first position and its blocks from its lowest
    layer, so its work is rows x positions x layers, plus a fixed overhead per
    pass. The copies are ordered by position then layer, by layer then position,
    and in bands of ``w`` positions each ordered by layer (``BAND_WIDTHS``: a band's
    copies at one layer share a pass and start within ``w`` positions of each
    other, which suits grids where every position changes); for each order,
    dynamic programming finds the split of least work into consecutive runs, and
    the plan of least work is taken.
    """
    overhead = pass_overhead * n_layers
    plans = []
    orders = [lambda i: costs[i], lambda i: costs[i][::-1]]
    orders += [lambda i, w=w: (costs[i][0] // w, costs[i][1], costs[i][0]) for w in BAND_WIDTHS]
    for key in orders:
        order = sorted(range(len(costs)), key=key)
        n = len(order)
        best = [0.0] + [math.inf] * n  # best[j]: least work for the first j copies of this order
        cut = [0] * (n + 1)
        for i in range(n):
            position, lowest = n_pos, n_layers
            for j in range(i, min(n, i + batch_size)):
                position = min(position, costs[order[j]][0])
                lowest = min(lowest, costs[order[j]][1])
                work = best[i] + overhead + (j - i + 1) * (n_pos - position) * (n_layers - lowest)
                if work < best[j + 1]:
                    best[j + 1], cut[j + 1] = work, i
        batches, j = [], n
        while j > 0:
            batches.append([ids[k] for k in order[cut[j] : j]])
            j = cut[j]
        plans.append((best[n], batches[::-1]))
    return min(plans, key=lambda plan: plan[0])[1]


def _batch_writes(
    chunk: list[Copy], tables: dict[str, dict[Key, torch.Tensor]], start: int = 0
) -> dict[Key, tuple[torch.Tensor, ...]]:
    """Per (layer, site): batch rows, positions (counted from ``start``), units and the values to write there.

    Writes before ``start`` put back the target run's own values (see ``first_changes``),
    which the cached prefix already holds: they are left out.
    """
    by_key: dict[Key, dict[str, list[tuple[int, int, int, int, int]]]] = {}
    for row, (pair, writes) in enumerate(chunk):
        for w in writes:
            at = w.row if w.origin == "captured" else pair  # which row of the origin's table holds the value
            by_key.setdefault((w.layer, w.site), {}).setdefault(w.origin, []).extend(
                (row, p, read, w.unit, at) for p, read in zip(w.positions, w.read_at or w.positions) if p >= start
            )
    out = {}
    for key, origins in by_key.items():
        parts = []
        for origin, entries in origins.items():
            if not entries:
                continue
            r, p, read, u, at = torch.tensor(entries).T
            parts.append((r, p - start, u, tables[origin][key][at, read, u]))  # values: (write, width)
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
