"""Direct logit attribution: who writes the answer into the residual stream, directly.

At the last position, the input of the final norm is exactly the embeddings, plus each
head's output through its slice of the output projection, plus the output projections'
biases, plus each MLP's output (for sequential and parallel blocks alike). Each of these
components is put through the final norm *linearly*, with the norm's scale from the same
run held fixed (and centred first under LayerNorm, as TransformerLens' ``apply_ln_to_stack``
does), and dotted with ``W_U[answer] - W_U[wrong]``. The components plus the norm's bias
term sum to the model's logit difference (before any transform the model applies to its
logits afterwards, such as Gemma 2's soft-capping: the attribution is of the logits before
it); every call checks the sum, and refuses a model whose residual stream is not that sum.

This is a direct, linear effect: what a component writes that the unembedding reads at
once. It is not causal: a head can write the answer and not be needed (others make up for
it), or be needed and write nothing directly (it feeds others). Patching answers that.

Example:
    >>> import patchwidget as pw
    >>> prompt = "When Mary and John went to the store , John gave a drink to"
    >>> dla = pw.direct_logit_attribution(pw.load_model(), prompt, answer="Mary", wrong="John")
    >>> dla.dims
    ('layer', 'head')
"""

from __future__ import annotations

from typing import Any

import nnsight
import numpy as np
import torch

from ..core.engine import entry_point
from ..core.sites import model_info, module, on_input_device, view
from ..core.weights import norm_parts, out_per_head
from ..errors import SettingsError
from .lens import by_length, logit_transform, tokenize_prompts
from .result import PatchResult

NOTE = (
    "Direct logit attribution: each head's output through its slice of the output projection, at the last "
    "token, through the final norm with its scale held fixed, dotted with W_U[answer] - W_U[wrong]. A direct, "
    "linear effect: what the head writes that the unembedding reads at once, not whether the model needs it."
)


@entry_point
def direct_logit_attribution(model: Any, prompts: Any, *, answer: Any, wrong: Any) -> PatchResult:
    """Each head's direct contribution to the logit difference at the last token, ``("layer", "head")``.

    ``prompts`` is one prompt or a list (of any lengths: each is read at its own last
    token); ``answer`` and ``wrong`` one for all or one per prompt. The other components
    are in ``settings``, per prompt:
    ``"embed"`` (token and position embeddings), ``"mlp"`` (each layer's MLP output, its
    bias included), ``"attn_bias"`` (each layer's output-projection bias) and
    ``"norm_bias"`` (the final norm's and the unembedding's biases). The heads, those, summed
    are the model's logit difference (``clean_baseline``; before a logit transform such as
    soft-capping), which every call checks. The note says what this is not: causal.

    Example:
        >>> dla = pw.direct_logit_attribution(model, prompt, answer="Mary", wrong="John")  # doctest: +SKIP
        >>> parts = ("embed", "mlp", "attn_bias", "norm_bias")  # doctest: +SKIP
        >>> s = {k: v[0] for k, v in dla.settings.items() if k in parts}  # the first prompt's  # doctest: +SKIP
        >>> rest = s["embed"] + sum(s["mlp"]) + sum(s["attn_bias"]) + s["norm_bias"]  # doctest: +SKIP
        >>> dla.values.sum() + rest  # the model's logit difference  # doctest: +SKIP
    """
    info = model_info(model)
    ids, answers, wrongs = tokenize_prompts(model, prompts, answer, wrong)
    runs = [
        _direct(model, info, [ids[i] for i in group], [answers[i] for i in group], [wrongs[i] for i in group])
        for group in by_length(ids).values()
    ]  # one trace per length: the last token is each prompt's own
    order = [i for group in by_length(ids).values() for i in group]
    back = sorted(range(len(order)), key=order.__getitem__)  # from the traces' order to the prompts'
    dla = {k: torch.cat([r[0][k] for r in runs])[back] for k in runs[0][0]}
    own, total = (torch.cat([r[j] for r in runs])[back] for j in (1, 2))
    return _result(model, torch.tensor([ids[0]]), info, dla, own, total, answers, wrongs)


def _direct(model: Any, info: Any, ids: list, answers: list, wrongs: list) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """DLA of prompts of one length: the components' contributions, the bias term, and their checked total."""
    ids = torch.tensor(ids)
    with torch.no_grad(), model.trace(on_input_device(model, ids)):
        got = nnsight.save({})  # made inside the trace: only saved values outlive it
        got["embed"] = view(model, info, "resid_pre", 0)[:, -1, 0]  # (prompt, d_model)
        for layer in range(info.n_layers):
            got[("z", layer)] = view(model, info, "head_out", layer)[:, -1]  # (prompt, head, d_head)
            got[("mlp", layer)] = view(model, info, "mlp_out", layer)[:, -1, 0]  # (prompt, d_model)
        final = module(model, info.arch.final_norm)
        got["x"] = final.input[:, -1]  # the final norm's input: the whole residual stream
        got["y"] = final.output[:, -1]
    with torch.no_grad():
        parts = _components(model, info, got)  # name -> (prompt, ..., d_model)
        direction, bias_term = _unembedding(model, info, answers, wrongs)  # (prompt, d_model), (prompt,)
        read = _fixed_norm(model, info, got["x"].float(), got["y"].float())
        dla = {k: (read(v) * direction.view(-1, *[1] * (v.dim() - 2), v.shape[-1])).sum(-1) for k, v in parts.items()}
    own = dla.pop("norm") + bias_term  # the norm's bias and the unembedding's: the same for every component
    total = sum(d.reshape(d.shape[0], -1).sum(1) for d in dla.values()) + own
    with torch.no_grad():
        _check_sum(model, info, got, parts, total, answers, wrongs)
    return dla, own, total


def _components(model: Any, info: Any, got: dict) -> dict[str, torch.Tensor]:
    """The residual stream's parts at the last token: embed ``(prompt, d)``, heads ``(prompt, layer, head, d)``,
    attention biases ``(prompt, layer, d)``, MLPs ``(prompt, layer, d)``, and the norm's bias slot."""
    heads, biases = [], []
    for layer in range(info.n_layers):
        proj = module(model._module, f"{info.arch.layers}.{layer}.{info.arch.attn_proj_out}")
        z = got[("z", layer)].float()  # (prompt, head, d_head)
        w = out_per_head(model, info, layer)  # (head, d_head, d_model)
        heads.append(torch.einsum("phk,hkd->phd", z, w.float()))
        b = getattr(proj, "bias", None)
        biases.append(torch.zeros_like(heads[-1][:, 0]) if b is None else b.float().expand_as(heads[-1][:, 0]))
    embed = got["embed"].float()
    return {
        "embed": embed,
        "heads": torch.stack(heads, 1),
        "attn_bias": torch.stack(biases, 1),
        "mlp": torch.stack([got[("mlp", layer)].float() for layer in range(info.n_layers)], 1),
        "norm": torch.zeros_like(embed),  # its value is the bias term, added after the linear part
    }


def _fixed_norm(model: Any, info: Any, x: torch.Tensor, y: torch.Tensor) -> Any:
    """The final norm as a linear map with this run's scale held fixed, checked against its real output ``y``."""
    norm = module(model._module, info.arch.final_norm)
    centred, gain, bias, eps = norm_parts(norm)
    center = (lambda v: v - v.mean(-1, keepdim=True)) if centred else (lambda v: v)
    scale = (center(x).pow(2).mean(-1, keepdim=True) + eps).sqrt()  # (prompt, 1)
    again = gain * center(x) / scale + (0 if bias is None else bias)
    if not torch.allclose(again, y, rtol=1e-3, atol=1e-3 * max(1.0, float(y.abs().max()))):
        raise SettingsError(
            f"direct_logit_attribution reads the final norm as LayerNorm or RMSNorm, and this model's "
            f"{type(norm).__name__} is neither: its output differs from that reading"
        )

    def read(v: torch.Tensor) -> torch.Tensor:
        s = scale.view(-1, *[1] * (v.dim() - 1))
        return gain * center(v) / s

    return read


def _unembedding(model: Any, info: Any, answers: list[int], wrongs: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``W_U[answer] - W_U[wrong]`` per prompt, and what the biases add: the final norm's bias read through it,
    and the unembedding's own bias."""
    head = module(model._module, info.arch.unembed)
    rows = torch.tensor([answers, wrongs]).T  # (prompt, 2)
    w = head.weight.float()[rows]  # (prompt, 2, d_model)
    direction = w[:, 0] - w[:, 1]
    norm = module(model._module, info.arch.final_norm)
    _, _, bias, _ = norm_parts(norm)
    term = torch.zeros(len(answers)) if bias is None else direction @ bias
    if getattr(head, "bias", None) is not None:
        term = term + head.bias.float()[rows[:, 0]] - head.bias.float()[rows[:, 1]]
    return direction, term


def _check_sum(model: Any, info: Any, got: dict, parts: dict, total: torch.Tensor, answers: list, wrongs: list) -> None:
    """Refuse a model whose residual stream is not the sum of the parts, or whose logits the sum does not give."""
    x = got["x"].float()
    summed = parts["embed"] + parts["heads"].sum((1, 2)) + parts["attn_bias"].sum(1) + parts["mlp"].sum(1)
    if not torch.allclose(summed, x, rtol=1e-3, atol=1e-3 * max(1.0, float(x.abs().max()))):
        raise SettingsError(
            f"the residual stream of this {model.config.model_type} model is not the sum of its embeddings, heads, "
            "attention biases and MLPs (a norm on the attention or MLP branch, as Gemma 2 has?): direct logit "
            "attribution would not add up, so it is refused"
        )
    head = module(model._module, info.arch.unembed)
    norm = module(model._module, info.arch.final_norm)
    logits = head(norm(got["x"])).float()  # (prompt, vocab), before any transform
    rows = torch.arange(len(answers))
    own = logits[rows, answers] - logits[rows, wrongs]
    if not torch.allclose(total, own, rtol=1e-3, atol=1e-3 * max(1.0, float(own.abs().max()))):
        raise SettingsError(
            f"direct logit attribution sums to {total.tolist()}, not the logit difference {own.tolist()}"
        )


def _result(
    model: Any, ids: torch.Tensor, info: Any, dla: dict, own: torch.Tensor, total: torch.Tensor, answers, wrongs
):
    what, _ = logit_transform(model.config)
    note = NOTE + (f" The model's logits are then {what}: this attributes the logits before that." if what else "")
    tok = model.tokenizer
    return PatchResult(
        per_pair=dla["heads"].numpy(),
        dims=("layer", "head"),
        coords={"layer": list(range(info.n_layers)), "head": list(range(info.n_heads))},
        tokens=[tok.decode([int(i)]) for i in ids[0]],
        clean_baseline=total.numpy(),
        corrupt_baseline=np.zeros(len(answers), dtype=np.float32),
        settings={
            "site": "direct_logit_attribution",
            "method": "direct logit attribution",
            "metric": "logit_diff",
            "note": note,
            "embed": dla["embed"].tolist(),
            "mlp": dla["mlp"].tolist(),
            "attn_bias": dla["attn_bias"].tolist(),
            "norm_bias": own.tolist(),
            "answer": [tok.decode([a]) for a in answers],
            "wrong": [tok.decode([w]) for w in wrongs],
        },
    )
