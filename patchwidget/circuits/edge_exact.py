"""Exact edge scores: every edge corrupted alone, each a patched copy of the clean prompt in the engine's loop.

With one edge u -> r corrupted and every other edge clean, the run is the clean run up to r:
nothing before r changes, so u's current output is its clean output and r's input is
``clean_input_r + (corrupt_u - clean_u)``. What r then computes is known before any pass:

- a head's query, key or value: that input through the attention's norm and the head's columns
  of the projection, written into the head's q, k or v (``head_q`` / ``head_k`` / ``head_v``);
- an MLP: that input through its norm and the MLP itself, written as the MLP's output (``mlp_out``);
- the logits: that input through the final norm and the unembedding, no pass at all.

So an edge's copy is one write at r's layer, and the loop runs it like any patched cell: from
r's layer up (the blocks below keep the clean run's outputs), from the first position where
the written value differs from the clean one (the cached prefix before it), packed with other
copies; edges into the same receiver share everything before it. This is the definition of
exact edge activation patching that MIB's circuit track scores best (Mueller et al. 2025), at
the cost of one patched copy per edge above its receiver's layer.

Example:
    >>> scores = exact_edge_scores(runs)  # doctest: +SKIP
    >>> scores.shape  # (sender, receiver)
    torch.Size([157, 445])
"""

from __future__ import annotations

from typing import Any

import torch

from ..core.cells import Write
from ..core.edge_pass import EdgeIndex, sender_deltas
from ..core.engine import patched_metric
from ..core.runs import Progress
from ..core.sites import ModelInfo, module
from ..core.weights import apply_norm, qkv_per_head, receiver_norm

__all__ = ["exact_edge_scores", "reads_for_exact"]

CHUNK = 2048  # copies whose written values are built at once (each a (pos, units, width) table row)


def reads_for_exact(info: ModelInfo) -> dict[str, list[int]]:
    """What the runs must record beyond the nodes' outputs: each receiver's clean input (the residual stream
    entering each layer and, in sequential blocks, between attention and MLP), the final norm's input, and
    the heads' clean queries, keys and values (what a copy's write is compared with)."""
    layers = list(range(info.n_layers))
    reads = {"resid_pre": layers, "resid_post": [info.n_layers - 1], "head_q": layers, "head_k": layers}
    reads["head_v"] = layers
    if not info.parallel_residual:
        reads["resid_mid"] = layers
    return reads


def exact_edge_scores(runs: Any, progress: Progress | None = None) -> torch.Tensor:
    """Per edge, the mean over pairs of m(every edge but this one) - m(every edge): ``(sender, receiver)``,
    zero where the graph has no edge. ``runs`` is a ``faithfulness.CircuitRuns`` whose runs hold
    ``reads_for_exact``."""
    model, info = runs.model, runs.request.info
    index = EdgeIndex.of(info)
    d = runs.directed
    delta = sender_deltas(model, info, d.source, d.target)  # (row, pos, sender, d_model)
    values = torch.zeros(runs.rows.n_pairs, index.n_senders, index.n_receivers)  # m per row and edge
    if d.target_ext is None:
        values[:, :, -1] = _logits_receiver(runs, index, delta)
    groups = [(layer, site) for layer in range(info.n_layers) for site in ("head_q", "head_k", "head_v", "mlp_in")]
    total = int(index.exists.sum()) * runs.rows.n_pairs
    done = [0]
    for layer, site in groups:
        _through_the_loop(runs, index, delta, layer, site, values, progress, done, total)
    per_pair = runs.per_pair(values.view(runs.rows.n_pairs, -1)).view(-1, index.n_senders, index.n_receivers)
    scores = per_pair.mean(0) - runs.clean.mean()
    if d.target_ext is not None:  # the continuations read the patched run: the logits' edges through the edge pass
        alone = torch.zeros(index.n_senders, index.n_senders, index.n_receivers, dtype=torch.bool)
        alone[torch.arange(index.n_senders), torch.arange(index.n_senders), -1] = True
        scores[:, -1] = runs.measure_outside(alone, progress).mean(1) - runs.clean.mean()
    return torch.where(index.exists, scores, torch.zeros(()))


def _logits_receiver(runs: Any, index: EdgeIndex, delta: torch.Tensor) -> torch.Tensor:
    """m per row and sender with that sender's edge into the logits corrupted: the final norm and the
    unembedding applied to the clean final residual plus the edge's delta, at each row's last token."""
    model, info, d = runs.model, runs.request.info, runs.directed
    rows = torch.arange(runs.rows.n_pairs)
    last = d.target_len - 1
    final = d.target[(info.n_layers - 1, "resid_post")][rows, last, 0].float()  # (row, d_model)
    x = final[:, None] + delta[rows, last]  # (row, sender, d_model)
    head = module(model._module, info.arch.unembed)
    normed = apply_norm(receiver_norm(model, info, None, "logits"), x)
    with torch.no_grad():
        logits = head(normed.to(head.weight.dtype)).float()  # (row, sender, vocab)
    fn, n = runs.request.metric, index.n_senders
    repeat = lambda t: t.repeat_interleave(n, 0)
    args = (repeat(runs.rows.answer_ids), repeat(runs.rows.wrong_ids), repeat(d.clean_logits))
    return fn(logits.reshape(len(rows) * n, -1), *args).float().view(len(rows), n)


def _receiver_values(runs: Any, index: EdgeIndex, delta: torch.Tensor, layer: int, site: str) -> torch.Tensor:
    """What each receiver of ``site`` at ``layer`` computes with each of its senders' edges corrupted alone,
    ``(row, pos, sender, unit, width)`` (units: heads, key-value heads, or the one MLP).

    Written as the clean run's own value plus ``f(input + delta) - f(input)``: where an edge's delta is zero
    (positions before the prompts differ) the value is the clean one to the bit, so the loop sees no change
    there and reuses the clean prefix, and a sender that sends nothing new makes a no-op copy.
    """
    model, info, d = runs.model, runs.request.info, runs.directed
    mlp = site == "mlp_in"
    n = index.senders_before(layer, mlp=mlp)
    base = "resid_mid" if mlp and not info.parallel_residual else "resid_pre"
    x = d.target[(layer, base)][:, :, 0, None].float()  # (row, pos, 1, d_model)
    f = _receiver_fn(model, info, layer, site)
    with torch.no_grad():
        change = f(x + delta[:, :, :n]) - f(x)  # (row, pos, sender, unit, width)
    own = d.target[(layer, "mlp_out" if mlp else site)].float()  # (row, pos, unit, width)
    return own[:, :, None] + change


def _receiver_fn(model: Any, info: ModelInfo, layer: int, site: str) -> Any:
    """What a receiver computes from its input ``(..., d_model)``: ``(..., unit, width)``."""
    arch = info.arch
    mlp = site == "mlp_in"
    parts = receiver_norm(model, info, layer, site)
    if mlp:
        block_mlp = module(model._module, f"{arch.layers}.{layer}.{arch.mlp}")
        dtype = next(block_mlp.parameters()).dtype
        return lambda x: block_mlp(apply_norm(parts, x).to(dtype)).float()[..., None, :]
    w, b = qkv_per_head(model, info, layer, site[-1])
    w, b = w.detach().float(), None if b is None else b.detach().float()
    return lambda x: torch.einsum("...d,ndk->...nk", apply_norm(parts, x), w) + (0 if b is None else b)


def _through_the_loop(
    runs: Any,
    index: EdgeIndex,
    delta: torch.Tensor,
    layer: int,
    site: str,
    values: torch.Tensor,
    progress: Progress | None,
    done: list[int],
    total: int,
) -> None:
    """The copies of every edge into ``site``'s receivers at ``layer``, each one write, run in the loop in
    chunks; their metrics land in ``values[row, sender, receiver]``."""
    computed = _receiver_values(runs, index, delta, layer, site)  # (row, pos, sender, unit, width)
    rows, n_pos, n_senders, n_units, _ = computed.shape
    write_site = "mlp_out" if site == "mlp_in" else site
    lengths = runs.directed.target_len.tolist()
    edges = [(row, s, u) for row in range(rows) for s in range(n_senders) for u in range(n_units)]
    for start in range(0, len(edges), CHUNK):
        chunk = edges[start : start + CHUNK]
        table = torch.zeros(len(chunk), n_pos, n_units, computed.shape[-1], device=computed.device)
        copies = []
        for k, (row, s, u) in enumerate(chunk):
            table[k, :, u] = computed[row, :, s, u]
            positions = tuple(range(lengths[row]))
            copies.append((row, (Write(layer, write_site, u, positions, "captured", k),)))
        m = patched_metric(
            runs.model,
            runs.request,
            runs.directed,
            copies,
            runs.rows,
            runs.per_pass,
            captured={(layer, write_site): table},
        )
        for (row, s, u), value in zip(chunk, m.tolist()):
            values[row, s, index.receiver(site, layer, u)] = value
        done[0] += len(chunk)
        if progress is not None:
            progress(done[0], total)
