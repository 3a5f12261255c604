"""Exact activation patching in batched nnsight traces.

The whole algorithm, in three steps:

1. **Cache.** One trace over the clean and corrupted prompts records the site's
   activation at every requested layer, and the metric's baselines.
2. **Patch.** Every cell of the grid (a layer, maybe a head or neuron, maybe a
   position) becomes one row of a batch: a copy of the *target* prompt (the
   corrupted one when denoising) whose activation at that cell is overwritten
   with the *source* run's cached value. Many rows run in one forward pass,
   ``batch_size`` rows at a time.
3. **Measure.** The metric reads each row's logits at the last position; the
   per-pair values and their mean go into a ``PatchResult``.

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
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import nnsight
import numpy as np
import torch

from . import attribution, memory
from . import metrics as M
from .prompts import Noise, PromptBatch, Texts, prepare_prompts
from .remote import prepare_remote, trace_kwargs
from .result import PatchResult
from .sites import (
    SITES,
    ModelInfo,
    PatchwidgetError,
    add_noise,
    check_site_supported,
    hidden_states,
    layer_module,
    logits_module,
    model_info,
    module,
    on_input_device,
    output_form,
    skip_block,
    view,
)

DIRECTIONS = ("denoise", "noise")
METHODS = ("exact", "attribution")
Progress = Callable[[int, int], None]
F = TypeVar("F", bound=Callable[..., Any])

# nnsight traces are not thread-safe, and the widget's worker thread shares models with
# the notebook: every entry point that runs a trace takes this lock.
_TRACE_LOCK = threading.RLock()


def one_trace_at_a_time(fn: F) -> F:
    """Run ``fn`` under the lock that keeps traces from different threads apart."""

    @functools.wraps(fn)
    def locked(*args: Any, **kwargs: Any) -> Any:
        with _TRACE_LOCK:
            return fn(*args, **kwargs)

    return locked  # type: ignore[return-value]


class SettingsError(PatchwidgetError):
    """A setting (direction, method, layers, heads, ...) is not valid."""


@dataclass(frozen=True)
class Grid:
    """The cells to patch: every combination of layer, unit and position."""

    site: str
    layers: list[int]
    units: list[int]  # heads or neurons; [0] for sites with one unit per layer
    positions: list[int]
    by_position: bool
    kv_heads: bool = False  # head_k/head_v under grouped-query attention index key-value heads

    @property
    def unit(self) -> str | None:
        return "kv_head" if self.kv_heads else SITES[self.site].unit

    @property
    def dims(self) -> tuple[str, ...]:
        return ("layer",) + ((self.unit,) if self.unit else ()) + (("pos",) if self.by_position else ())

    @property
    def shape(self) -> tuple[int, ...]:
        sizes = {"layer": len(self.layers), "pos": len(self.positions)}
        return tuple(sizes.get(d, len(self.units)) for d in self.dims)

    def cells(self) -> list[tuple[int, int, tuple[int, ...]]]:
        """(layer, unit, positions) per cell, in the order of ``shape``."""
        pos_groups = [(p,) for p in self.positions] if self.by_position else [tuple(self.positions)]
        return [(layer, unit, ps) for layer in self.layers for unit in self.units for ps in pos_groups]


@one_trace_at_a_time
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
    batch_size: int = 64,
    memory_budget: int | None = None,
    progress: Progress | None = None,
    remote: bool | str = False,
    runs_cache: dict | None = None,
) -> PatchResult:
    """Patch one site over a grid of cells and measure the metric per cell.

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
    info = model_info(model)
    check_site_supported(site, info)
    prepare_remote(model, remote)
    M.check_metric(metric)
    _check_choice(direction, DIRECTIONS, "direction")
    _check_choice(method, METHODS, "method")
    check_batching(batch_size, memory_budget)
    if site == "attn_pattern" and model.config._attn_implementation != "eager":
        raise SettingsError(
            "site 'attn_pattern' reads attention weights, which needs eager attention: load the model "
            "with attn_implementation='eager' (patchwidget.load_model does this by default)"
        )
    prompts = prepare_prompts(
        model.tokenizer, clean, corrupt, answer=answer, wrong=wrong, max_len=_context_length(model)
    )
    grid = make_grid(info, site, prompts.n_pos, layers, positions, heads, neurons, by_position)

    fn = M.resolve(metric)
    rows, noise = with_noise(model, info, prompts, remote)
    batch_size = fit_budget(model, info, {grid.site}, rows, method, batch_size, memory_budget)
    if method == "attribution":
        per_row, clean_logits, corrupt_logits = attribution.estimate(
            model, info, grid, rows, fn, direction, noise, remote, batch_size, progress
        )
    else:
        with torch.no_grad():
            runs = cached_runs(runs_cache, model, info, grid, rows, noise, remote)
            directed = runs.directed(direction, noise)
            per_row = patched_metric(model, info, grid, directed, rows, fn, batch_size, progress, remote)
        per_row = per_row.view(rows.n_pairs, *grid.shape)
        clean_logits, corrupt_logits = runs.clean_logits, runs.corrupt_logits
    per_pair, clean_base, corrupt_base = summarize(per_row, rows, prompts.n_pairs, fn, metric, clean_logits,
                                                   corrupt_logits)  # fmt: skip
    return _result(model, grid, prompts, per_pair, clean_base, corrupt_base, metric, direction, method)


def summarize(
    values: torch.Tensor, rows: PromptBatch, n_pairs: int, fn: M.MetricFn, metric: M.Metric,
    clean_logits: torch.Tensor, corrupt_logits: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
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


def check_batching(batch_size: Any, memory_budget: Any) -> None:
    """``batch_size`` a positive integer, ``memory_budget`` None or a positive number of bytes."""
    if not isinstance(batch_size, int | np.integer) or isinstance(batch_size, bool) or batch_size < 1:
        raise SettingsError(f"batch_size must be an integer of at least 1, got {batch_size!r}")
    if memory_budget is not None and (
        not isinstance(memory_budget, int | float | np.number) or isinstance(memory_budget, bool) or memory_budget <= 0
    ):
        raise SettingsError(f"memory_budget must be a positive number of bytes or None, got {memory_budget!r}")


def fit_budget(
    model: Any, info: ModelInfo, sites: set[str], rows: PromptBatch, method: str, batch_size: int,
    budget: int | None,
) -> int:  # fmt: skip
    """Rows per forward pass under ``budget`` bytes, for patching ``sites``; checked before any compute."""
    if budget is None:
        return batch_size
    dtype_bytes = next(iter(model._module.parameters())).element_size()
    widths = {"mlp_neuron": info.d_mlp, "attn_pattern": info.n_heads * rows.n_pos}
    width = max(widths.get(site, info.d_model) for site in sites)
    vocab = model.config.vocab_size
    if method == "attribution":
        return memory.attribution_rows(budget, batch_size, info, rows.n_pos, vocab, dtype_bytes, width)
    return memory.rows_per_batch(budget, batch_size, info, rows.n_pos, vocab, dtype_bytes, 2 * rows.n_pairs, width)


def make_grid(
    info: ModelInfo,
    site: str,
    n_pos: int,
    layers: Sequence[int] | None,
    positions: Sequence[int] | None,
    heads: Sequence[int] | None,
    neurons: Sequence[int] | None,
    by_position: bool | None,
) -> Grid:
    """Check the narrowing arguments and build the grid of cells."""
    unit = SITES[site].unit
    for name, given, wanted in (("heads", heads, "head"), ("neurons", neurons, "neuron")):
        if given is not None and unit != wanted:
            raise SettingsError(f"{name}={list(given)!r} does not apply to site {site!r}, which has no {wanted} axis")
    n_units = info.n_units(site)
    kv_heads = site in ("head_k", "head_v") and info.n_kv_heads != info.n_heads
    unit_label = "key-value heads" if kv_heads else unit
    return Grid(
        site=site,
        layers=_indices(layers, info.n_layers, "layers", "layers"),
        units=_indices(heads if unit == "head" else neurons, n_units, unit or "unit", f"{unit_label}s")
        if unit
        else [0],
        positions=_indices(positions, n_pos, "positions", "tokens in the prompts", negative_ok=True),
        by_position=SITES[site].by_position if by_position is None else bool(by_position),
        kv_heads=kv_heads,
    )


def _indices(given: Sequence[int] | None, size: int, name: str, what: str, negative_ok: bool = False) -> list[int]:
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


def _check_choice(value: str, choices: tuple[str, ...], name: str) -> None:
    if value not in choices:
        raise SettingsError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


def _context_length(model: Any) -> int | None:
    config = model.config
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


@dataclass
class Runs:
    """What the clean and corrupted runs leave behind; every tensor is
    ``(2 * pair, ...)`` with the clean rows first."""

    n_pairs: int
    acts: dict[int, torch.Tensor]  # site activation per layer, (run, pos, unit, width)
    blocks: list[torch.Tensor]  # each block's output, (run, pos, d_model), for skipping unpatched layers
    logits: torch.Tensor  # (run, vocab), last position
    ids: torch.Tensor  # (run, pos)
    block_form: int = 0  # how the blocks returned their output in these runs (sites.output_form)

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
            source={layer: a[src] for layer, a in self.acts.items()},
            target={layer: a[tgt] for layer, a in self.acts.items()},
            target_blocks=[b[tgt] for b in self.blocks],
            block_form=self.block_form,
            target_logits=self.logits[tgt],
            target_ids=self.ids[tgt],
            clean_logits=self.clean_logits,
            target_noise=noise if direction == "denoise" else None,
        )


@dataclass
class Directed:
    source: dict[int, torch.Tensor]  # (pair, pos, unit, width)
    target: dict[int, torch.Tensor]
    target_blocks: list[torch.Tensor]  # (pair, pos, d_model)
    block_form: int  # how the blocks returned their output in the target run (sites.output_form)
    target_logits: torch.Tensor  # (pair, vocab)
    target_ids: torch.Tensor  # (pair, pos)
    clean_logits: torch.Tensor  # (pair, vocab)
    target_noise: torch.Tensor | None = None  # (pair, pos, d_model) when the target run is the noised one


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


def cached_runs(
    store: dict | None, model: Any, info: ModelInfo, grid: Grid, prompts: PromptBatch, noise: torch.Tensor | None,
    remote: bool | str,
) -> Runs:  # fmt: skip
    """``run_cache``, remembered in ``store`` under everything its result depends on."""
    if store is None:
        return run_cache(model, info, grid, prompts, noise, remote)
    key = (id(model), prompts.clean_ids.numpy().tobytes(), prompts.corrupt_ids.numpy().tobytes(),
           prompts.clean_ids.shape, repr(prompts.noise), grid.site)  # fmt: skip
    if key not in store:  # every layer, so that any later grid of this site finds its layers
        store[key] = run_cache(model, info, replace(grid, layers=list(range(info.n_layers))), prompts, noise, remote)
    return store[key]


def run_cache(
    model: Any, info: ModelInfo, grid: Grid, prompts: PromptBatch, noise: torch.Tensor | None = None,
    remote: bool | str = False,
) -> Runs:  # fmt: skip
    """One trace over the clean and corrupted prompts, recording what patching needs."""
    ids = torch.cat([prompts.clean_ids, prompts.corrupt_ids])
    with model.trace(on_input_device(model, ids), **trace_kwargs(model, remote), logits_to_keep=1):
        acts, blocks = nnsight.save({}), nnsight.save([])  # made inside: only saved values come back from a server
        form = nnsight.save([0])
        add_noise(model, info, noise, slice(prompts.n_pairs, None))
        for layer in range(max(grid.layers) + 1):
            if layer in grid.layers:
                acts[layer] = view(model, info, grid.site, layer).detach().clone().save()
            if layer < max(grid.layers):
                out = layer_module(model, info, layer).output
                form[0] = output_form(out)  # observed, to skip blocks in the patched runs in the same form
                blocks.append(hidden_states(out).detach().clone().save())
        logits = logits_module(model, info).output[:, -1].detach().save()
    return Runs(prompts.n_pairs, dict(acts), list(blocks), logits, ids, form[0])


def patched_metric(
    model: Any,
    info: ModelInfo,
    grid: Grid,
    runs: Directed,
    prompts: PromptBatch,
    fn: M.MetricFn,
    batch_size: int,
    progress: Progress | None,
    remote: bool | str = False,
) -> torch.Tensor:
    """The metric of every (pair, cell) row, ``(pair * cell,)``, pair-major.

    Three things keep this fast and exact: a cell whose source activation
    equals the target's is a no-op and takes the target run's value; rows are
    sorted by layer, so a batch skips the blocks below its lowest patched
    layer (their outputs are the cached target run's); and the unembedding
    runs at the last position only.
    """
    cells = grid.cells()
    rows = [(pair, cell) for pair in range(prompts.n_pairs) for cell in cells]
    out = torch.empty(len(rows))
    noop = torch.tensor([
        torch.equal(runs.source[layer][pair, list(ps), unit], runs.target[layer][pair, list(ps), unit])
        for pair, (layer, unit, ps) in rows
    ], dtype=torch.bool)  # fmt: skip
    if noop.any():  # patching in an identical activation changes nothing: the target run's own value
        pairs = torch.tensor([pair for (pair, _), same in zip(rows, noop) if same])
        out[noop] = fn(runs.target_logits[pairs], prompts.answer_ids[pairs], prompts.wrong_ids[pairs],
                       runs.clean_logits[pairs]).float().cpu()  # fmt: skip
    todo = [i for i in range(len(rows)) if not noop[i]]
    todo.sort(key=lambda i: rows[i][1][0])  # by layer
    done = len(rows) - len(todo)
    if progress is not None:
        progress(done, len(rows))
    for start in range(0, len(todo), batch_size):
        index = todo[start : start + batch_size]
        chunk = [rows[i] for i in index]
        pairs = torch.tensor([pair for pair, _ in chunk])
        writes = _writes(chunk, runs.source)
        lowest = min(writes)
        with model.trace(
            on_input_device(model, runs.target_ids[pairs]), **trace_kwargs(model, remote), logits_to_keep=1
        ):
            add_noise(model, info, None if runs.target_noise is None else runs.target_noise[pairs], slice(None))
            for layer in range(lowest):
                skip_block(layer_module(model, info, layer), runs.block_form, runs.target_blocks[layer][pairs])
            for layer, (r, p, u, values) in writes.items():
                _write(model, info, grid.site, layer, r, p, u, values)
            logits = logits_module(model, info).output[:, -1].detach().save()
        values = fn(logits, prompts.answer_ids[pairs], prompts.wrong_ids[pairs], runs.clean_logits[pairs])
        out[torch.tensor(index)] = values.float().cpu()
        done += len(chunk)
        if progress is not None:
            progress(done, len(rows))
    return out


def _writes(
    chunk: list[tuple[int, tuple[int, int, tuple[int, ...]]]], source: dict[int, torch.Tensor]
) -> dict[int, tuple[torch.Tensor, ...]]:
    """Per layer, in forward order: rows, positions, units and source values to write."""
    by_layer: dict[int, list[tuple[int, int, int, int]]] = {}
    for row, (pair, (layer, unit, positions)) in enumerate(chunk):
        by_layer.setdefault(layer, []).extend((row, p, unit, pair) for p in positions)
    writes = {}
    for layer in sorted(by_layer):
        r, p, u, pair = torch.tensor(by_layer[layer]).T
        writes[layer] = (r, p, u, source[layer][pair, p, u])  # values: (write, width)
    return writes


def _write(
    model: Any, info: ModelInfo, site: str, layer: int,
    r: torch.Tensor, p: torch.Tensor, u: torch.Tensor, values: torch.Tensor,
) -> None:  # fmt: skip
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


def _result(
    model: Any, grid: Grid, prompts: PromptBatch, per_pair: torch.Tensor,
    clean_base: torch.Tensor, corrupt_base: torch.Tensor, metric: M.Metric, direction: str, method: str,
) -> PatchResult:  # fmt: skip
    coords: dict[str, list] = {"layer": grid.layers}
    if grid.unit:
        coords[grid.unit] = grid.units
    if grid.by_position:
        coords["pos"] = grid.positions
    settings = {
        "site": grid.site,
        "metric": M.metric_name(metric),
        "direction": direction,
        "method": method,
        "model": getattr(model.config, "_name_or_path", "") or type(model).__name__,
        "patched_positions": grid.positions,
        "note": attribution.note(grid.site, grid.layers) if method == "attribution" else "",
        "clean": prompts.clean,
        "corrupt": prompts.corrupt if prompts.noise is None else f"{prompts.noise}",
        "answer": prompts.answer,
        "wrong": prompts.wrong,
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


@one_trace_at_a_time
def attention_pattern(model: Any, prompt: str, layer: int, head: int, remote: bool | str = False) -> np.ndarray:
    """The attention pattern of one head on one prompt, ``(query, key)``.

    Example:
        >>> attention_pattern(load_model(), "The capital of France is", 2, 1).shape  # doctest: +SKIP
        (5, 5)
    """
    info = model_info(model)
    if model.config._attn_implementation != "eager":
        raise SettingsError("attention patterns need eager attention: load with attn_implementation='eager'")
    _indices([layer], info.n_layers, "layers", "layers")
    _indices([head], info.n_heads, "heads", "heads")
    ids = torch.tensor([model.tokenizer(prompt)["input_ids"]])
    prepare_remote(model, remote)
    with torch.no_grad():
        with model.trace(on_input_device(model, ids), **trace_kwargs(model, remote)):
            pattern = view(model, info, "attn_pattern", layer)[0, :, head].detach().save()  # (query, key)
    return pattern.float().cpu().numpy()
