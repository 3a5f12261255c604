"""Per-head weights and norms, read from a model's own modules: what splits a layer into its heads.

A head's output is its slice of the output projection's input through that slice of
the projection's weight; a head's query, key and value are the input norm's output through
that head's columns of the projection. Each architecture stores these differently: GPT-2's
``Conv1D`` keeps weights as ``(in, out)`` and fuses ``[q | k | v]``, GPT-NeoX fuses them
interleaved per head, the rest keep ``nn.Linear`` projections of their own. Direct logit
attribution reads the output slices; edge patching reads both and the norms.

Example:
    >>> w = out_per_head(model, info, 0)  # doctest: +SKIP
    >>> w.shape  # (head, d_head, d_model)
    torch.Size([4, 16, 64])
"""

from __future__ import annotations

from typing import Any

import torch

from .sites import ModelInfo, module

__all__ = ["NormParts", "apply_norm", "norm_parts", "out_per_head", "qkv_per_head", "receiver_norm"]

NormParts = tuple[bool, torch.Tensor, torch.Tensor | None, float]  # (centred, gain, bias, eps)


def _raw(model: Any, info: ModelInfo, layer: int, path: str) -> Any:
    """The plain torch module at ``path`` inside block ``layer`` (not nnsight's wrapper)."""
    return module(model._module, f"{info.arch.layers}.{layer}.{path}")


def _in_out(proj: Any) -> torch.Tensor:
    """A projection's weight as ``(in, out)``: GPT-2's Conv1D stores it so, ``nn.Linear`` as ``(out, in)``."""
    return proj.weight if type(proj).__name__ == "Conv1D" else proj.weight.T


def out_per_head(model: Any, info: ModelInfo, layer: int) -> torch.Tensor:
    """The output projection's weight as one ``(d_head, d_model)`` slice per head, ``(head, d_head, d_model)``.

    Example:
        >>> out_per_head(model, info, 0).shape  # doctest: +SKIP
        torch.Size([4, 16, 64])
    """
    w = _in_out(_raw(model, info, layer, info.arch.attn_proj_out))  # (heads * d_head, d_model)
    return w.reshape(info.n_heads, -1, w.shape[-1])


def qkv_per_head(model: Any, info: ModelInfo, layer: int, which: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Head by head, the columns of the projection that make ``which`` (``"q"``, ``"k"`` or ``"v"``):
    the weight ``(head, d_model, d_head)`` and bias ``(head, d_head)`` or None. Keys and values have one
    per key-value head under grouped-query attention.

    Example:
        >>> w, b = qkv_per_head(model, info, 0, "k")  # doctest: +SKIP
        >>> w.shape  # (kv_head, d_model, d_head)
        torch.Size([2, 64, 16])
    """
    arch, dh, i = info.arch, info.d_head, "qkv".index(which)
    proj = _raw(model, info, layer, (arch.q, arch.k, arch.v)[i] if arch.qkv == "split" else arch.q)
    w, b = _in_out(proj), getattr(proj, "bias", None)  # (d_model, out), (out,)
    if arch.qkv == "gpt2":  # [q | k | v], each n_heads * d_head wide
        width = info.n_heads * dh
        w, b = w[:, i * width : (i + 1) * width], None if b is None else b[i * width : (i + 1) * width]
    elif arch.qkv == "neox":  # per head [q | k | v], each d_head wide
        w = w.reshape(w.shape[0], info.n_heads, 3, dh)[:, :, i].reshape(w.shape[0], -1)
        b = None if b is None else b.reshape(info.n_heads, 3, dh)[:, i].reshape(-1)
    n = w.shape[1] // dh
    w = w.reshape(w.shape[0], n, dh).transpose(0, 1)  # (head, d_model, d_head)
    return w, None if b is None else b.reshape(n, dh)


def norm_parts(norm: Any) -> NormParts:
    """(centred, gain, bias, eps) of a LayerNorm or RMSNorm module (Gemma's RMSNorm multiplies by 1 + weight).

    Example:
        >>> norm_parts(torch.nn.LayerNorm(4))[0]
        True
    """
    name = type(norm).__name__
    eps = float(getattr(norm, "eps", None) or getattr(norm, "variance_epsilon", None) or 1e-5)
    centred = "RMS" not in name
    gain = norm.weight.float() + (1.0 if name.startswith("Gemma") and "RMS" in name else 0.0)
    bias = getattr(norm, "bias", None)
    return centred, gain, None if bias is None else bias.float(), eps


def receiver_norm(model: Any, info: ModelInfo, layer: int | None, site: str = "head_q") -> NormParts:
    """The norm a receiver's input goes through: the attention's input norm for a head's q/k/v (``site``), the
    MLP's input norm for ``"mlp_in"``, the final norm for ``"logits"`` (``layer`` None).

    Example:
        >>> receiver_norm(model, info, 0, "mlp_in")[0]  # doctest: +SKIP
        True
    """
    arch = info.arch
    if site == "logits":
        return norm_parts(module(model._module, arch.final_norm))
    return norm_parts(_raw(model, info, layer, arch.ln_mid if site == "mlp_in" else arch.ln_attn))


def apply_norm(parts: NormParts, x: torch.Tensor) -> torch.Tensor:
    """The norm ``parts`` describe, applied to ``x`` over its last axis, in float32.

    Example:
        >>> x = torch.randn(3, 4)
        >>> torch.allclose(apply_norm(norm_parts(torch.nn.LayerNorm(4)), x), torch.nn.LayerNorm(4)(x), atol=1e-6)
        True
    """
    centred, gain, bias, eps = parts
    x = x.float()
    if centred:
        x = x - x.mean(-1, keepdim=True)
    y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * gain
    return y if bias is None else y + bias
