"""Edge patching inside one trace: every receiver reads its own input.

The residual stream a layer reads is the sum of its senders' outputs (the embeddings,
each earlier head through its slice of the output projection, each earlier MLP) and of
what is the same in every run (biases). Corrupting edge u -> r changes r's input only:

    input_r = (the residual r reads in this run) + sum over u outside the circuit of (corrupt_u - current_u)

where current_u is u's output in this very run (heads downstream of a corrupted edge
compute other outputs, and those propagate). A head's query, key and value are then
the attention's input norm of *its own* input through that head's columns of the
projection, written into the projection's output (rotary embeddings are applied after
it, by the model); an MLP's input norm and the final norm get their receiver's input
the same way. The residual stream itself is never edited. This is how MIB and EAP-IG
evaluate an edge circuit (``evaluate_graph``; TransformerLens calls the split inputs
``use_split_qkv_input``), here with each batch row holding its own set of edges.

Senders and receivers are numbered in forward order (``EdgeIndex``); a set of edges is a
``(sender, receiver)`` mask, which ``circuits.edges`` builds from ``pw.Edge`` objects.

Example:
    >>> index = EdgeIndex.of(info)  # doctest: +SKIP
    >>> index.n_senders, index.n_receivers  # GPT-2 small
    (157, 445)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..errors import SettingsError
from . import continuation
from .continuation import Extension
from .remote import trace_kwargs
from .sites import ModelInfo, last_logits, layer_module, module, on_input_device, raw, reshape, view
from .weights import apply_norm, norm_parts, out_per_head, qkv_per_head, receiver_norm

__all__ = ["EDGE_MODELS", "EdgeIndex", "check_edge_model", "edge_metric_logits", "sender_deltas", "sender_outputs"]

# Architectures whose residual stream is exactly the sum of its senders' outputs and biases, read through a
# LayerNorm or RMSNorm: a model that adds a norm after a branch (Gemma 2) or scales the branches (Granite) is not.
EDGE_MODELS = ("gpt2", "gpt_neox", "llama", "qwen2", "mistral", "gemma")


@dataclass(frozen=True)
class EdgeIndex:
    """Senders and receivers of one model, numbered in forward order.

    Senders: 0 the embeddings, then per layer its heads and its MLP. Receivers: per layer
    each head's query, each key-value head's key, then value, then the MLP's input; the
    logits last. ``exists[s, r]``: the graph has an edge from sender s to receiver r.
    """

    n_layers: int
    n_heads: int
    n_kv_heads: int
    parallel: bool  # a layer's attention and MLP read the same residual: its heads do not feed its MLP

    @classmethod
    def of(cls, info: ModelInfo) -> EdgeIndex:
        return cls(info.n_layers, info.n_heads, info.n_kv_heads, info.parallel_residual)

    @property
    def per_layer(self) -> int:
        return self.n_heads + 2 * self.n_kv_heads + 1  # receivers of a layer

    @property
    def n_senders(self) -> int:
        return 1 + self.n_layers * (self.n_heads + 1)

    @property
    def n_receivers(self) -> int:
        return self.n_layers * self.per_layer + 1

    def sender(self, site: str, layer: int | None = None, unit: int = 0) -> int:
        """The number of a sender: ``("embed")``, ``("head_out", layer, head)`` or ``("mlp_out", layer)``."""
        if site == "embed":
            return 0
        return 1 + layer * (self.n_heads + 1) + (unit if site == "head_out" else self.n_heads)

    def receiver(self, site: str, layer: int | None = None, unit: int = 0) -> int:
        """The number of a receiver: ``("head_q"|"head_k"|"head_v", layer, head)``, ``("mlp_in", layer)`` or
        ``("logits")``."""
        if site == "logits":
            return self.n_layers * self.per_layer
        offset = {"head_q": 0, "head_k": self.n_heads, "head_v": self.n_heads + self.n_kv_heads}
        return layer * self.per_layer + offset.get(site, self.per_layer - 1) + unit

    def senders_before(self, layer: int, mlp: bool = False) -> int:
        """How many senders come before layer ``layer``'s attention (``mlp``: before its MLP)."""
        return 1 + layer * (self.n_heads + 1) + (self.n_heads if mlp and not self.parallel else 0)

    @property
    def exists(self) -> torch.Tensor:
        """``(sender, receiver)`` bools: which edges the graph has."""
        out = torch.zeros(self.n_senders, self.n_receivers, dtype=torch.bool)
        for layer in range(self.n_layers):
            first = layer * self.per_layer
            out[: self.senders_before(layer), first : first + self.per_layer - 1] = True
            out[: self.senders_before(layer, mlp=True), first + self.per_layer - 1] = True
        out[:, -1] = True
        return out


def check_edge_model(model: Any, info: ModelInfo) -> None:
    """Refuse, before compute, a model whose receivers' inputs edges cannot be written out exactly."""
    if info.model_type not in EDGE_MODELS or not info.arch.ln_attn or info.arch.ln_mid is None:
        raise SettingsError(
            f"edges need the residual stream to be the plain sum of the heads' and MLPs' outputs, read through "
            f"one norm per receiver; patchwidget writes that out for {', '.join(EDGE_MODELS)} models, not for "
            f"this {info.model_type!r} model"
        )
    arch = info.arch
    for path in (f"{arch.layers}.0.{arch.ln_attn}", f"{arch.layers}.0.{arch.ln_mid}", arch.final_norm):
        norm = module(model._module, path)
        x = torch.randn(3, info.d_model, dtype=norm.weight.dtype, device=norm.weight.device)
        with torch.no_grad():
            own = norm(x).float()
        if not torch.allclose(apply_norm(norm_parts(norm), x), own, rtol=1e-3, atol=1e-3 * float(own.abs().max())):
            raise SettingsError(
                f"edges apply each receiver's norm to its own input, reading it as LayerNorm or RMSNorm, and this "
                f"model's {type(norm).__name__} ({path}) is neither"
            )


def sender_outputs(model: Any, info: ModelInfo, acts: dict) -> torch.Tensor:
    """Every sender's output from a run's recorded activations, ``(row, pos, sender, d_model)`` in float32:
    ``acts`` holds ``(0, "resid_pre")`` (the embeddings), and ``(layer, "head_out")`` and ``(layer, "mlp_out")``
    for every layer, each ``(row, pos, unit, width)``."""
    parts = [acts[(0, "resid_pre")][:, :, 0].float()[:, :, None]]
    for layer in range(info.n_layers):
        z = acts[(layer, "head_out")].float()  # (row, pos, head, d_head)
        parts.append(torch.einsum("bphk,hkd->bphd", z, out_per_head(model, info, layer).detach().float().to(z.device)))
        parts.append(acts[(layer, "mlp_out")].float())  # (row, pos, 1, d_model)
    return torch.cat(parts, 2)


def sender_deltas(model: Any, info: ModelInfo, source: dict, target: dict) -> torch.Tensor:
    """Every sender's output in the ``source`` run minus its output in the ``target`` run,
    ``(row, pos, sender, d_model)``: what corrupting an edge adds to its receiver's input where the target is
    the run up to that receiver (``sender_outputs`` of each)."""
    return sender_outputs(model, info, source) - sender_outputs(model, info, target)


@dataclass(frozen=True)
class _Weights:
    """What the trace needs of one layer: the q/k/v columns per head, the output slices, the norms."""

    qkv: list[tuple[torch.Tensor, torch.Tensor | None]]
    out: torch.Tensor
    attn_norm: tuple
    mlp_norm: tuple


def _layer_weights(model: Any, info: ModelInfo, layer: int) -> _Weights:
    qkv = []
    for which in "qkv":
        w, b = qkv_per_head(model, info, layer, which)
        qkv.append((w.detach().float(), None if b is None else b.detach().float()))
    out = out_per_head(model, info, layer).detach().float()
    return _Weights(qkv, out, receiver_norm(model, info, layer), receiver_norm(model, info, layer, "mlp_in"))


def edge_metric_logits(
    model: Any,
    info: ModelInfo,
    ids: torch.Tensor,
    lengths: torch.Tensor,
    corrupt: torch.Tensor,
    outside: torch.Tensor,
    remote: bool | str = False,
    ext: Extension | None = None,
) -> torch.Tensor:
    """One pass of edge patching: each row's logits at its last real token, ``(row, vocab)`` (with ``ext``,
    answers of several tokens: ``continuation.scored``'s last-token logits and the continuations' scores).

    ``ids`` ``(row, pos)`` are the prompts run (padded on the right, ``lengths`` real; with ``ext``, each row's
    prompt then its continuations), ``corrupt`` ``(row, pos, sender, d_model)`` the senders' outputs each
    row's corrupted edges carry, ``outside`` ``(row, sender, receiver)`` which edges are corrupted (outside
    the circuit) in each row. Edges are corrupted at the prompt's positions; a continuation's positions read
    what the patched run computes there.
    """
    index = EdgeIndex.of(info)
    weights = [_layer_weights(model, info, layer) for layer in range(info.n_layers)]
    final = receiver_norm(model, info, None, "logits")
    rows, last = torch.arange(len(ids)), lengths - 1
    dev = corrupt.device  # the runs' device: the model's, where the senders' outputs were recorded
    mask = outside.float().to(dev)
    prompt = (torch.arange(ids.shape[1])[None] < lengths[:, None]).float().to(dev)  # (row, pos): the prompt's tokens
    keep, at_last, every = continuation.kept(lengths, ids.shape[1], ext)
    inputs = {**continuation.inputs(model, ext, tuple(ids.shape)), **trace_kwargs(model, remote)}
    with model.trace(on_input_device(model, ids), logits_to_keep=keep, **inputs):
        delta = torch.zeros(corrupt.shape, device=dev)  # corrupt - current, per sender, filled in forward order
        for layer in range(info.n_layers):
            _edge_layer(model, info, index, layer, weights[layer], corrupt, delta, mask, prompt)
        norm_in = module(model, info.arch.final_norm).input[rows, last].float()  # (row, d_model)
        wanted = norm_in + torch.einsum("bs,bsd->bd", mask[:, :, -1], delta[rows, last])
        norm_out = module(model, info.arch.final_norm).output
        norm_out[rows, last] = apply_norm(final, wanted).to(norm_out.dtype)
        logits = last_logits(model, info, at_last if ext is None else every).detach().float().save()
    return logits if ext is None else continuation.scored(logits, ext)


def _edge_layer(
    model: Any,
    info: ModelInfo,
    index: EdgeIndex,
    layer: int,
    w: _Weights,
    corrupt: torch.Tensor,
    delta: torch.Tensor,
    mask: torch.Tensor,
    prompt: torch.Tensor,
) -> None:
    """Inside the trace, one layer in forward order: its heads' q/k/v from their own inputs, its heads' outputs
    recorded, its MLP's input norm from its own input, its MLP's output recorded."""
    h, kv, s = info.n_heads, info.n_kv_heads, index.senders_before(layer)
    first = layer * index.per_layer
    resid = view(model, info, "resid_pre", layer)[:, :, 0].float()  # (row, pos, d_model)
    if layer == 0:
        delta[:, :, 0] = (corrupt[:, :, 0] - resid) * prompt[:, :, None]  # a continuation's positions: unedited
    extra = torch.einsum("bsn,bpsd->bpnd", mask[:, :s, first : first + h + 2 * kv], delta[:, :, :s])
    normed = apply_norm(w.attn_norm, resid[:, :, None] + extra)  # (row, pos, receiver, d_model)
    fused = None if info.arch.qkv == "split" else raw(model, info, "head_q", layer)  # one output holds q, k, v
    for site, (weight, bias), start, n in zip(("head_q", "head_k", "head_v"), w.qkv, (0, h, h + kv), (h, kv, kv)):
        value = torch.einsum("bpnd,ndk->bpnk", normed[:, :, start : start + n], weight)
        target = (
            view(model, info, site, layer) if fused is None else reshape(info, site, fused)
        )  # (row, pos, head, d_head)
        target[:] = (value if bias is None else value + bias).to(target.dtype)
    z = view(model, info, "head_out", layer).float()  # (row, pos, head, d_head)
    heads = index.sender("head_out", layer, 0)
    current = torch.einsum("bphk,hkd->bphd", z, w.out)
    delta[:, :, heads : heads + h] = (corrupt[:, :, heads : heads + h] - current) * prompt[:, :, None, None]
    s = index.senders_before(layer, mlp=True)
    norm = layer_module(model, info, layer, info.arch.ln_mid)
    wanted = norm.input.float() + torch.einsum(
        "bs,bpsd->bpd", mask[:, :s, first + index.per_layer - 1], delta[:, :, :s]
    )
    out = norm.output
    out[:] = apply_norm(w.mlp_norm, wanted).to(out.dtype)
    mlp = index.sender("mlp_out", layer)
    delta[:, :, mlp] = (corrupt[:, :, mlp] - view(model, info, "mlp_out", layer)[:, :, 0].float()) * prompt[:, :, None]
