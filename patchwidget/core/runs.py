"""Step 1 of patching: the clean and corrupted runs, and noise as the corruption.

The runs record, once per request, what every patched copy reads: the patched
sites' activations, each block's output (so a copy can skip the blocks below
its lowest patched layer), the last position's logits (the baselines), and
every layer's keys and values (so a copy can start at its first patched
position). ``engine.patched_metric`` runs the copies against them.

Example:
    >>> runs = run_cache(model, info, {"resid_pre": [0, 1]}, prompts)   # doctest: +SKIP
    >>> runs.directed("denoise").source[(1, "resid_pre")].shape           # doctest: +SKIP
    torch.Size([1, 14, 1, 128])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nnsight
import torch

from ..data.prompts import PromptBatch
from . import continuation
from .batches import Key
from .cells import READ_ORDER
from .continuation import Extension
from .remote import trace_kwargs
from .sites import (
    CACHE,
    ModelInfo,
    add_noise,
    cache_tensors,
    hidden_states,
    last_logits,
    layer_module,
    module,
    on_input_device,
    output_form,
    unembedded_logits,
    view,
)

Progress = Callable[[int, int], None]

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
    # As wide as a run's row: no noise on the continuation's positions (``core.continuation``).
    noise = torch.zeros(prompts.n_pairs * spec.samples, prompts.width, weight.shape[1], dtype=weight.dtype)
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
    plain_logits: bool = True  # the model's logits were the unembedding's output, unchanged (observed)
    ext: Extension | None = None  # answers of several tokens: each row's continuations (``logits`` carry scores)

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
            plain_logits=self.plain_logits,
            target_ext=None if self.ext is None else self.ext.rows(tgt),
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
    plain_logits: bool = True  # see Runs.plain_logits
    target_ext: Extension | None = None  # (pair, ...) the target rows' continuations


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
    keep_kv: bool = True,
) -> Runs:
    """``run_cache``, remembered in ``store`` under everything its result depends on.

    Runs that recorded more sites serve a request for fewer: ``find_circuit`` records
    all its sites once, and every grid it ranks with reuses those runs.
    """
    if store is None:
        return run_cache(model, info, reads, prompts, noise, remote, rows_per_pass, progress, keep_kv)
    same = (
        id(model),
        prompts.clean_ids.numpy().tobytes(),
        prompts.corrupt_ids.numpy().tobytes(),
        prompts.clean_ids.shape,
        repr(prompts.noise),
        repr((prompts.answer_seqs, prompts.wrong_seqs)),  # runs with continuations hold their scores
    )
    for (*prefix, sites), runs in store.items():
        if tuple(prefix) == same and set(reads) <= set(sites):
            return runs
    # Every layer, so that any later grid of these sites finds its layers.
    every_layer = {site: list(range(info.n_layers)) for site in reads}
    runs = store[(*same, tuple(sorted(reads)))] = run_cache(
        model, info, every_layer, prompts, noise, remote, rows_per_pass, progress, keep_kv
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
    keep_kv: bool = True,
) -> Runs:
    """Traces over the clean and corrupted prompts, recording ``reads`` (site -> layers) and what patching needs.

    The runs take at most ``rows_per_pass`` prompts a pass (clean and corrupted
    ones alike), so that many prompt pairs fit the same memory as the patched
    copies; when they take several passes, each reports ``progress``. With
    ``keep_kv`` (the request's ``Speedups.reuse_prefix``; never on a server, which
    would send them all back) they also keep every layer's keys and values, which
    patched copies reuse for the positions before their first patched one.
    """
    ext = continuation.extend(prompts)
    ids = torch.cat([prompts.clean_ids, prompts.corrupt_ids]) if ext is None else ext.ids  # (run, pos)
    noise_all = None if noise is None else torch.cat([torch.zeros_like(noise), noise])
    keep_kv = keep_kv and not remote  # a server would send every layer's keys and values back
    parts = []
    for start in range(0, len(ids), rows_per_pass):
        rows = slice(start, min(start + rows_per_pass, len(ids)))
        part_noise = None if noise_all is None else noise_all[rows]
        part_ext = None if ext is None else ext.rows(rows)
        parts.append(
            _run_pass(model, info, reads, ids[rows], prompts.lengths[rows], part_noise, remote, keep_kv, part_ext)
        )
        if progress is not None and rows_per_pass < len(ids):
            progress(rows.stop, len(ids))
    acts = {key: torch.cat([p[0][key] for p in parts]) for key in parts[0][0]}
    blocks = [torch.cat([p[1][i] for p in parts]) for i in range(len(parts[0][1]))]
    logits = torch.cat([p[2] for p in parts])
    kv = None
    if keep_kv and all(p[4] is not None and len(p[4]) == info.n_layers for p in parts):
        kv = [tuple(torch.cat([p[4][layer][i] for p in parts]) for i in (0, 1)) for layer in range(info.n_layers)]
    plain = all(p[5] for p in parts)
    return Runs(prompts.n_pairs, acts, blocks, logits, ids, prompts.lengths, parts[0][3], kv, plain, ext)


def _run_pass(
    model: Any,
    info: ModelInfo,
    reads: dict[str, list[int]],
    ids: torch.Tensor,
    lengths: torch.Tensor,
    noise: torch.Tensor | None,
    remote: bool | str,
    keep_kv: bool = False,
    ext: Extension | None = None,
) -> tuple[dict[Key, torch.Tensor], list[torch.Tensor], torch.Tensor, int, list | None, bool]:
    """One trace over some rows of the runs (with ``ext``, each row with its continuations)."""
    keys = sorted(
        {(layer, site) for site, layers in reads.items() for layer in layers},
        key=lambda k: (k[0], READ_ORDER.index(k[1])),
    )
    top = max(layer for layer, _ in keys)
    keep, index, every = continuation.kept(lengths, ids.shape[1], ext)
    with model.trace(
        on_input_device(model, ids),
        **trace_kwargs(model, remote),
        logits_to_keep=keep,
        use_cache=keep_kv,
        **continuation.inputs(model, ext, ids.shape),
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
        unembedded = unembedded_logits(model, info, index).detach().save()
        logits = last_logits(model, info, index if ext is None else every).detach().save()
        cache = getattr(model.output, CACHE).save() if keep_kv else None
    if ext is not None:  # (row * read, vocab): the last prompt position's logits and the continuations' scores
        logits = continuation.scored(logits, ext)
    # Whether the model changes its logits after the unembedding (scales or caps them), seen in this run.
    plain = bool(torch.equal(unembedded, logits[:, : unembedded.shape[1]].to(unembedded.dtype)))
    return dict(acts), list(blocks), logits, form[0], cache_tensors(cache, ids.shape[1]) if keep_kv else None, plain
