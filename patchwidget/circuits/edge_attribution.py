"""First-order edge scores: edge attribution patching (EAP) and EAP with integrated gradients (EAP-IG).

The exact score of an edge u -> r is what corrupting that one edge does to the metric, every
other edge clean: m(G minus e) - m(G), the mean over pairs (``CircuitRuns.measure_edges``
gives it, one patched run per edge and pair). Corrupting u -> r adds

    delta_u = out_u(corrupted run) - out_u(clean run)

to r's *own* input (its split input: ``core.edge_pass``) and to nothing else, so to first order

    score(u -> r) = sum over prompt positions of delta_u . dm / d input_r

- ``method="eap"`` (Syed, Rager, Conmy 2023, "Attribution Patching Outperforms Automated
  Circuit Discovery"): the gradient at the clean run. Every edge from one forward and one
  backward pass per batch of pairs.
- ``method="eap-ig"`` (Hanna, Pezzelle, Belinkov 2024, "Have Faith in Faithfulness: Going
  Beyond Circuit Overlap When Finding Model Mechanisms"; MIB's "EAP-IG-inputs"): the gradient
  averaged over ``steps`` runs of the clean prompt whose token embeddings are moved to
  ``corrupted + alpha * (clean - corrupted)``, alpha = k / steps for k = 0, 1, ..., steps - 1.
  These are the points of hannamw/EAP-IG's ``get_scores_eap_ig`` (``src/eap/attribute.py``,
  read at commit 795f560: ``for step in range(0, steps)`` with ``k / steps``), which that
  package's ``attribute(..., method="EAP-IG-inputs")`` runs (the name MIB reports): a left
  Riemann sum of the path integral from the corrupted input (alpha = 0, included) to the clean
  one (alpha = 1, left out), kept here to match that reference code.
  delta_u stays the difference of the two real runs. The corrupted embeddings are the source
  run's: the corrupted prompt's or the noised run's (under ``ablation="mean"``, their mean over
  the corrupted prompts, an extension: EAP-IG's package takes EAP-IG-inputs with patching only).
  What moves is the first block's input (token embeddings, positions and any embedding scale:
  the positions are the same in both runs and the scale is linear, so this is the embeddings
  moved).

dm / d input_r is the derivative with respect to the receiver's own input: for a head's query,
key or value it reaches input_r only through the attention's input norm and that head's (or
key-value head's) columns of the projection; for an MLP only through the MLP's input norm, not
the residual path past it; for the logits through the final norm. One traced forward and
backward pass takes the gradients at the projections' outputs and the norms' outputs; each is
pulled back to every receiver's input outside the trace (a vector-Jacobian product through that
receiver's columns and norm, at the norm's input in that run).

Answers of several tokens: the metric is the request's metric on sequences (``logit_diff``: log p(answer |
prompt) - log p(wrong | prompt), each summed over its continuation's tokens by teacher forcing), its gradient taken
in the same one forward and backward pass per batch on the runs' tree rows (``core.continuation``: the prompt,
then both continuations' fed tokens, with their attention mask and position ids). Edges are corrupted at the
prompt's positions only, as the exact pass corrupts them (``core.edge_pass``): delta_u is zero at a
continuation's positions, which are not edges' targets; the continuation's tokens see the prompt's positions,
so the gradient there carries what the continuation's log-probabilities owe them. EAP-IG moves the prompt's
embeddings only: the continuation's tokens are the answers, the same in both runs.

Scores are per pair in the request's metric, then averaged over pairs: noise samples are
averaged per pair, and under ``logit_diff_norm`` each pair is divided by its clean-minus-corrupted
logit difference (``CircuitRuns.per_pair``). A metric whose gradient vanishes at the clean run
(``kl``) gives EAP scores of zero there.

Example (the bundled model):
    >>> import patchwidget as pw
    >>> from patchwidget.circuits.faithfulness import circuit_runs
    >>> runs = circuit_runs(pw.load_model(), **pw.demo_data.as_prompts(pw.demo_data.ioi_pairs(8)),
    ...                     ablation="patch", metric="logit_diff", batch_size=8, memory_budget=None,
    ...                     progress=None, remote=False)                          # doctest: +SKIP
    >>> scores = edge_attribution(runs, "eap-ig", steps=5)                       # doctest: +SKIP
    >>> edge = Edge(Cell("head_out", 3, head=1), "logits")
    >>> round(float(scores[numbers(edge, EdgeIndex.of(runs.request.info))]), 2)  # doctest: +SKIP
    -2.97
"""

from __future__ import annotations

from typing import Any

import nnsight
import torch

from ..core import continuation
from ..core.cells import check_choice
from ..core.continuation import Extension
from ..core.edge_pass import EdgeIndex, sender_deltas
from ..core.remote import trace_kwargs
from ..core.runs import Progress
from ..core.sites import ModelInfo, last_logits, layer_module, module, on_input_device, raw
from ..core.sites import reshape as site_reshape
from ..core.weights import apply_norm, qkv_per_head, receiver_norm
from ..errors import SettingsError
from .faithfulness import CircuitRuns, check_edge_request

__all__ = ["EDGE_METHODS", "edge_attribution"]

EDGE_METHODS = ("eap", "eap-ig")


def check_method(method: str, steps: int) -> None:
    """Refuse, before compute, an unknown method, ``steps`` that is not an integer of at least 1 (for EAP-IG),
    and gradients where ``torch.inference_mode()`` forbids them."""
    check_choice(method, EDGE_METHODS, "method")
    if method == "eap-ig" and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
        raise SettingsError(f"steps must be an integer of at least 1, got {steps!r}")
    if torch.is_inference_mode_enabled():
        raise SettingsError("edge attribution takes gradients, which torch.inference_mode() forbids")


def edge_attribution(runs: CircuitRuns, method: str, steps: int = 5, progress: Progress | None = None) -> torch.Tensor:
    """First-order scores of every edge, ``(sender, receiver)`` in ``EdgeIndex`` numbering, float32, zero where
    the graph has no edge: each the estimate of m(G minus that edge) - m(G), the mean over pairs in the request's
    metric (negative where corrupting the edge lowers the metric). See the module docstring.

    ``method``: ``"eap"`` (the gradient at the clean run) or ``"eap-ig"`` (averaged over ``steps`` runs with
    embeddings interpolated from the corrupted run's towards the clean run's). ``progress(done, total)`` counts
    rows times gradient passes.

    Example:
        >>> edge_attribution(runs, "eap").shape  # doctest: +SKIP
        torch.Size([21, 45])
    """
    check_method(method, steps)
    check_edge_request(runs.model, runs.request, [])  # before any gradient pass
    info = runs.request.info
    index = EdgeIndex.of(info)
    alphas = [1.0] if method == "eap" else [k / steps for k in range(steps)]
    weights = row_weights(runs)
    n = runs.rows.n_pairs
    per_pass = runs.edge_rows_per_pass
    scores = torch.zeros(index.n_senders, index.n_receivers)
    for start in range(0, n, per_pass):
        rows = torch.arange(start, min(start + per_pass, n))
        delta, real = _row_deltas(runs, rows)  # the same at every interpolation step
        for k, alpha in enumerate(alphas):
            scores += _pass_scores(runs, index, rows, alpha, weights[rows] / len(alphas), delta, real)
            if progress or runs.progress:
                (progress or runs.progress)(start * len(alphas) + (k + 1) * len(rows), n * len(alphas))
    return scores


def row_weights(runs: CircuitRuns) -> torch.Tensor:
    """What one unit of raw metric on each row moves the mean over pairs of ``runs.per_pair``, ``(row,)``: the
    summary is affine in the values (noise samples averaged per pair, then under ``logit_diff_norm`` each pair
    divided by its clean-minus-corrupted difference), so a row's first-order change enters the mean so weighted."""
    n = runs.rows.n_pairs
    unit = runs.per_pair(torch.ones(n)) - runs.per_pair(torch.zeros(n))  # (pair,)
    return unit.repeat_interleave(n // runs.n_pairs) / n


def _row_deltas(runs: CircuitRuns, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The senders' corrupted-minus-clean outputs of ``rows`` at the prompt's positions only (with several-token
    answers, not the continuations'), on the CPU where the gradients are, ``(row, pos, sender, d_model)``; and
    which positions are the prompt's, ``(row, pos)``."""
    d = runs.directed
    source = {key: value[rows] for key, value in d.source.items()}
    target = {key: value[rows] for key, value in d.target.items()}
    real = (torch.arange(d.target_ids.shape[1])[None] < d.target_len[rows][:, None]).float()  # (row, pos)
    delta = sender_deltas(runs.model, runs.request.info, source, target).cpu()
    return delta * real[:, :, None, None], real


def _pass_scores(
    runs: CircuitRuns,
    index: EdgeIndex,
    rows: torch.Tensor,
    alpha: float,
    weights: torch.Tensor,
    delta: torch.Tensor,
    real: torch.Tensor,
) -> torch.Tensor:
    """One gradient pass over ``rows`` (embeddings at ``alpha`` between corrupted and clean): every edge's
    ``delta_u . dm/d input_r``, summed over the rows with ``weights``, ``(sender, receiver)``; ``delta`` and
    ``real`` as ``_row_deltas`` gives them (embeddings move at the prompt's positions only)."""
    model, info, d = runs.model, runs.request.info, runs.directed
    lengths = d.target_len[rows]
    shift = None
    if alpha != 1.0:  # the first block's input moved from clean to corrupted + alpha * (clean - corrupted)
        moved = delta[:, :, 0]  # the embeddings' corrupted-minus-clean output, at the prompt's positions
        shift = (1 - alpha) * moved
    fn = runs.request.metric
    args = (runs.rows.answer_ids[rows], runs.rows.wrong_ids[rows], d.clean_logits[rows])
    ext = None if d.target_ext is None else d.target_ext.rows(rows)
    got = _gradients(model, info, d.target_ids[rows], lengths, shift, lambda logits: fn(logits, *args), runs, ext)
    out = torch.zeros(index.n_senders, index.n_receivers)
    delta = delta * weights[:, None, None, None]
    for layer in range(info.n_layers):
        first = layer * index.per_layer
        heads, mlp = receiver_grads(model, info, layer, got)  # (row, pos, receiver, d_model), (row, pos, d_model)
        s = index.senders_before(layer)
        out[:s, first : first + index.per_layer - 1] = torch.einsum("bpsd,bprd->sr", delta[:, :, :s], heads)
        s = index.senders_before(layer, mlp=True)
        out[:s, first + index.per_layer - 1] = torch.einsum("bpsd,bpd->s", delta[:, :, :s], mlp)
    final = receiver_norm(model, info, None, "logits")
    logits_in = norm_vjp(final, got["final_in"], got["final_grad"][:, :, None])[:, :, 0]
    out[:, -1] = torch.einsum("bpsd,bpd->s", delta, logits_in)
    return out


def _gradients(
    model: Any,
    info: ModelInfo,
    ids: torch.Tensor,
    lengths: torch.Tensor,
    shift: Any,
    metric: Any,
    runs: CircuitRuns,
    ext: Extension | None = None,
) -> dict:
    """One traced forward and backward pass of ``ids`` (the first block's input plus ``shift`` when given): the
    metric's gradient at each layer's q/k/v projection output and MLP norm output and at the final norm's output,
    with the norms' inputs, in float32 on the CPU (``"qkv"``, ``"attn_in"``, ``"mlp_grad"``, ``"mlp_in"``: lists by
    layer; ``"final_grad"``, ``"final_in"``). With ``ext`` (answers of several tokens) the rows are trees, the
    metric reads ``continuation.scored`` at every read."""
    arch, fused = info.arch, info.arch.qkv != "split"
    keep, index, every = continuation.kept(lengths, ids.shape[1], ext)
    sites = ("head_q",) if fused else ("head_q", "head_k", "head_v")
    kwargs = {**continuation.inputs(model, ext, tuple(ids.shape)), **trace_kwargs(model, runs.request.remote)}
    with torch.enable_grad():
        with model.trace(on_input_device(model, ids), logits_to_keep=keep, **kwargs):
            got, points = nnsight.save({"qkv": [], "attn_in": [], "mlp_in": []}), []
            for layer in range(info.n_layers):
                if layer == 0 and shift is not None:
                    block_in = layer_module(model, info, 0).input
                    block_in[:] = block_in + shift.to(block_in.device, block_in.dtype)
                got["attn_in"].append(layer_module(model, info, layer, arch.ln_attn).input.detach().clone())
                points += [raw(model, info, site, layer) for site in sites]
                norm = layer_module(model, info, layer, arch.ln_mid)
                got["mlp_in"].append(norm.input.detach().clone())
                points.append(norm.output)
            final = module(model, arch.final_norm)
            got["final_in"] = final.input.detach().clone()
            points.append(final.output)
            for point in points:
                if not point.requires_grad:  # frozen weights: the gradient is wanted at these activations only
                    point.requires_grad_(True)
            if ext is None:
                value = metric(last_logits(model, info, index))
            else:  # the last prompt token's logits and both continuations' log-probabilities
                value = metric(continuation.scored(last_logits(model, info, every), ext))
            grads = torch.autograd.grad(value.sum(), points)
            per_layer = len(sites) + 1
            for layer in range(info.n_layers):
                got["qkv"].append([g.detach() for g in grads[layer * per_layer : layer * per_layer + len(sites)]])
            got["mlp_grad"] = [grads[layer * per_layer + len(sites)].detach() for layer in range(info.n_layers)]
            got["final_grad"] = grads[-1].detach()
    return _float_cpu(got)


def _float_cpu(x: Any) -> Any:
    """Every tensor in nested dicts and lists as float32 on the CPU."""
    if isinstance(x, dict):
        return {k: _float_cpu(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_float_cpu(v) for v in x]
    return x.detach().float().cpu()


def receiver_grads(model: Any, info: ModelInfo, layer: int, got: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The metric's gradient at each of layer ``layer``'s receivers' own inputs: its heads' queries, its key-value
    heads' keys, then values, ``(row, pos, receiver, d_model)``; and its MLP's, ``(row, pos, d_model)``.

    A head's q (k, v) is the attention norm of its input through that head's columns: the gradient at the
    projection's output, per head, goes back through the columns and then through the norm at its input."""
    grads = got["qkv"][layer]
    if len(grads) == 1:  # one fused projection holds q, k and v
        grads = grads * 3
    through = []
    for site, grad in zip(("head_q", "head_k", "head_v"), grads):
        weight = qkv_per_head(model, info, layer, site[-1])[0].detach().float().cpu()  # (unit, d_model, d_head)
        per_unit = site_reshape(info, site, grad)  # (row, pos, unit, d_head)
        through.append(torch.einsum("bpnk,ndk->bpnd", per_unit, weight))
    heads = norm_vjp(receiver_norm(model, info, layer), got["attn_in"][layer], torch.cat(through, 2))
    mlp_grad = got["mlp_grad"][layer][:, :, None]
    mlp = norm_vjp(receiver_norm(model, info, layer, "mlp_in"), got["mlp_in"][layer], mlp_grad)[:, :, 0]
    return heads, mlp


def norm_vjp(parts: tuple, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``v``'s pull-back through the norm ``parts`` at ``x`` (``(row, pos, d_model)``): for each receiver n,
    ``v[:, :, n] @ d norm(x) / d x``, ``(row, pos, receiver, d_model)``, by torch.autograd."""
    parts = tuple(p.detach().float().cpu() if isinstance(p, torch.Tensor) else p for p in parts)
    point = x.detach().float()[:, :, None].expand_as(v).clone().requires_grad_(True)
    with torch.enable_grad():
        (pulled,) = torch.autograd.grad(apply_norm(parts, point), point, grad_outputs=v)
    return pulled
