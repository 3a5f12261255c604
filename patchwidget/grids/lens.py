"""The logit lens: where in the model the answer appears, read out of the residual stream.

Each block's output goes through the model's own final norm and unembedding (and the
transform some models apply to their logits after it: Gemma 2's soft-capping, Granite's
and Cohere's scales), and the answer's logit minus the wrong one's is read at every
position. The last layer at the last token is the model's own logit difference: the lens
checks this on every run and refuses a model for which it does not hold, rather than
showing numbers that mean something else. One forward pass: no patching, so it says
where the answer is readable, not what causes it.

Example:
    >>> import patchwidget as pw
    >>> lens = pw.logit_lens(pw.load_model(), "When Mary and John went to the store , John gave a drink to",
    ...                      answer="Mary", wrong="John")
    >>> lens.dims
    ('layer', 'pos')
"""

from __future__ import annotations

from typing import Any

import nnsight
import numpy as np
import torch

from ..core.engine import entry_point
from ..core.remote import prepare_remote
from ..core.sites import hidden_states, layer_module, model_info, module, on_input_device
from ..data.prompts import Texts, broadcast_texts, one_token
from ..data.templates import Prompt, shared_spans, token_strings
from ..errors import PromptError, SettingsError
from .result import PatchResult

NOTE = (
    "The logit lens: each block's output read through the model's own final norm and unembedding, answer logit "
    "minus wrong logit. Where the answer is readable, not what causes it (that is what patching measures)."
)


def logit_transform(config: Any) -> tuple[str, Any]:
    """What the model does to its logits after the unembedding, from its config: (description, function)."""
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        return f"soft-capped at {cap}", lambda x: cap * torch.tanh(x / cap)
    scaling = getattr(config, "logits_scaling", None)
    if scaling and scaling != 1:
        return f"divided by {scaling}", lambda x: x / scaling
    scale = getattr(config, "logit_scale", None)
    if scale and scale != 1:
        return f"multiplied by {scale}", lambda x: x * scale
    return "", lambda x: x


def tokenize_prompts(model: Any, prompts: Any, answer: Texts, wrong: Texts) -> tuple[list[list[int]], list, list]:
    """Each prompt's ids (strings, or Prompts of a template), and each prompt's answer and wrong ids."""
    texts = (
        [prompts] if isinstance(prompts, str | Prompt) else list(prompts) if isinstance(prompts, list | tuple) else []
    )
    if not texts or not all(isinstance(t, Prompt) or (isinstance(t, str) and t.strip()) for t in texts):
        raise PromptError(f"prompts must be a non-empty prompt or list of prompts, got {prompts!r}")
    tok = model.tokenizer
    ids = [list(tok(str(t))["input_ids"]) for t in texts]
    why = (
        " for the lens and direct logit attribution, which read one position's logits (patching, path patching "
        "and the circuit searches score answers of several tokens)"
    )
    answers = [one_token(tok, a, "answer", why) for a in broadcast_texts(answer, "answer", len(texts))]
    wrongs = [one_token(tok, w, "wrong", why) for w in broadcast_texts(wrong, "wrong", len(texts))]
    return ids, answers, wrongs


def by_length(ids: list[list[int]]) -> dict[int, list[int]]:
    """The prompts grouped by token length (one trace per group): {length: prompt indices}."""
    groups: dict[int, list[int]] = {}
    for i, row in enumerate(ids):
        groups.setdefault(len(row), []).append(i)
    return groups


@entry_point
def logit_lens(model: Any, prompts: Any, *, answer: Texts, wrong: Texts, remote: bool | str = False) -> PatchResult:
    """The logit lens: answer logit minus wrong logit read from each block's output, ``("layer", "pos")``.

    ``prompts`` is one prompt or a list of prompts of one token length, or prompts made
    from one template (``pw.Template(...).fill(...)``), of any lengths: the grid is then by
    span (``("layer", "span")``), each span read at its last token. ``answer`` and ``wrong``
    are one for all or one per prompt. With several prompts ``values`` is their mean and
    ``per_pair`` holds each (the spread shows as in every grid). The model's final norm,
    unembedding and logit transform are applied to every layer's output; the last layer at
    the last token equals the model's logit difference, checked on every call
    (``clean_baseline`` holds it per prompt).

    Example:
        >>> lens = pw.logit_lens(model, prompt, answer="Mary", wrong="John")  # doctest: +SKIP
        >>> lens.values[-1, -1]  # the model's own logit difference  # doctest: +SKIP
    """
    if remote:
        raise SettingsError("logit_lens applies the final norm and unembedding here: run it with remote=False")
    prepare_remote(model, remote)
    info = model_info(model)
    ids, answers, wrongs = tokenize_prompts(model, prompts, answer, wrong)
    texts = [prompts] if isinstance(prompts, str | Prompt) else list(prompts)
    spans = shared_spans(texts, model.tokenizer) if any(isinstance(t, Prompt) for t in texts) else None
    if spans is None and len(by_length(ids)) > 1:
        raise PromptError(
            f"the logit lens averages prompts position by position, and these have {sorted(by_length(ids))} tokens: "
            "give prompts of one length, or prompts made from one template (read by span)"
        )
    diffs, own = [None] * len(ids), torch.zeros(len(ids))
    for indices in by_length(ids).values():  # one trace per length
        d, o = _lens_of(
            model,
            info,
            torch.tensor([ids[i] for i in indices]),
            [answers[i] for i in indices],
            [wrongs[i] for i in indices],
        )
        for k, i in enumerate(indices):
            diffs[i], own[i] = d[k], o[k]
    if spans is not None:  # each span read at its last token
        diffs = [d[:, [s.positions[-1] for s in spans[i]]] for i, d in enumerate(diffs)]
    dim, coords = ("span", [s.label for s in spans[0]]) if spans else ("pos", list(range(len(ids[0]))))
    return PatchResult(
        per_pair=torch.stack(diffs).cpu().numpy(),  # (prompt, layer, pos or span)
        dims=("layer", dim),
        coords={"layer": list(range(info.n_layers)), dim: coords},
        tokens=token_strings(model.tokenizer, ids[0]),
        clean_baseline=own.numpy(),
        corrupt_baseline=np.zeros(len(answers), dtype=np.float32),
        settings={
            "site": "logit_lens",
            "method": "logit lens",
            "metric": "logit_diff",
            "note": NOTE + _transform_note(model.config),
            "model": str(getattr(model.config, "_name_or_path", "")),
            "answer": [model.tokenizer.decode([a]) for a in answers],
            "wrong": [model.tokenizer.decode([w]) for w in wrongs],
        },
    )


def _lens_of(
    model: Any, info: Any, ids: torch.Tensor, answers: list, wrongs: list
) -> tuple[torch.Tensor, torch.Tensor]:
    """The lens of prompts of one length ``(prompt, pos)``: ``(prompt, layer, pos)`` and the model's own logit
    difference per prompt, checked to be the lens's last layer at the last token."""
    with torch.no_grad(), model.trace(on_input_device(model, ids)):
        blocks = nnsight.save([])  # made inside the trace: only saved values outlive it
        for layer in range(info.n_layers):
            blocks.append(hidden_states(layer_module(model, info, layer).output))
        logits = model.output.logits.save()
    with torch.no_grad():
        diffs = _read(model, info, torch.stack(list(blocks), 1), answers, wrongs)  # (prompt, layer, pos)
    own = _pick(logits.float(), answers, wrongs)[:, -1]  # (prompt,): the model's logit difference
    got = diffs[:, -1, -1]
    if not torch.allclose(got, own.to(got), rtol=1e-4, atol=1e-4 * max(1.0, float(own.abs().max()))):
        raise SettingsError(
            f"the logit lens of this {model.config.model_type} model does not end at its own logits (last layer, "
            f"last token: {got.tolist()} against {own.tolist()}): its logits are not its final norm and "
            "unembedding of the last block's output, so the lens would not read what the model reads"
        )
    return diffs.cpu(), own.cpu()


def _transform_note(config: Any) -> str:
    what, _ = logit_transform(config)
    return f" The logits are {what} after the unembedding, as the model does." if what else ""


def _pick(logits: torch.Tensor, answers: list[int], wrongs: list[int]) -> torch.Tensor:
    """Answer minus wrong logit of each prompt at every position: ``(prompt, pos, vocab) -> (prompt, pos)``."""
    rows = torch.arange(logits.shape[0])
    return logits[rows, :, torch.tensor(answers)] - logits[rows, :, torch.tensor(wrongs)]


def _read(model: Any, info: Any, h: torch.Tensor, answers: list[int], wrongs: list[int]) -> torch.Tensor:
    """``h`` ``(prompt, layer, pos, d_model)`` through the final norm, the answer and wrong rows of the unembedding
    and the logit transform: ``(prompt, layer, pos)``. Only two columns: the transform acts on each logit alone."""
    norm = module(model._module, info.arch.final_norm)
    head = module(model._module, info.arch.unembed)
    _, transform = logit_transform(model.config)
    rows = torch.tensor([answers, wrongs]).T  # (prompt, 2)
    weight = head.weight[rows]  # (prompt, 2, d_model)
    x = norm(h.to(head.weight.dtype)) @ weight.transpose(1, 2)[:, None]  # (prompt, layer, pos, 2)
    if getattr(head, "bias", None) is not None:
        x = x + head.bias[rows][:, None, None]
    x = transform(x.float())
    return x[..., 0] - x[..., 1]
