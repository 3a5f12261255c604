"""Answers of several tokens: the continuation as extra positions of each row, read by teacher forcing.

With an answer ``a_1 .. a_n`` and a wrong answer ``w_1 .. w_m``, the metric reads
``log p(a_1 .. a_n | prompt) - log p(w_1 .. w_m | prompt)``, each the sum of its tokens'
log-probabilities with the earlier ones fed in. Both continuations follow one prompt, so
they share one row of a pass (a tree, not two rows): the prompt's positions, padded to
``n_pos``, then ``a_1 .. a_{n-1}`` (the answer branch), then ``w_1 .. w_{m-1}`` (the wrong
branch). A branch's tokens see the prompt's real tokens and the earlier tokens of their own
branch (``allowed``), at position ids that go on from the prompt's last token
(``positions``). Patches write at prompt positions only; the branches are computed in the
patched run, and a copy never computes its prompt twice.

For one-token answers there is no continuation (``extend`` returns None) and the engine
reads the last position's logits as it always did: ``log p(a) - log p(w)`` is exactly the
logit difference there.

Example:
    >>> ext = extend(prompts)   # doctest: +SKIP
    >>> ext.ids.shape, ext.reads[:, 0]   # doctest: +SKIP
    (torch.Size([2, 7]), tensor([4, 4]))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..data.prompts import PromptBatch
from .metrics import with_scores
from .sites import attend_all, last_positions, last_tokens, on_input_device, segment_mask


@dataclass(frozen=True)
class Extension:
    """Rows extended by their pair's two continuations; every tensor is ``(row, ...)``.

    ``reads[:, 0]`` is each row's last prompt token (the first token of both answers is read
    there): its logits are what a one-position metric (``kl``) reads.
    """

    ids: torch.Tensor  # (row, width) the prompt (padded to n_pos) then the answer branch then the wrong branch
    positions: torch.Tensor  # (row, width) position ids
    allowed: torch.Tensor  # (row, width, width) bool: which keys each query sees
    reads: torch.Tensor  # (row, read) index whose logits predict each scored token
    targets: torch.Tensor  # (row, read) the token scored there
    sign: torch.Tensor  # (row, read) +1 answer, -1 wrong, 0 padding

    @property
    def width(self) -> int:
        return self.ids.shape[1]

    def rows(self, index: slice | torch.Tensor) -> Extension:
        """These rows (a direction's target half, or the rows of a pass)."""
        fields = (self.ids, self.positions, self.allowed, self.reads, self.targets, self.sign)
        return Extension(*(t[index] for t in fields))


def extend(prompts: PromptBatch) -> Extension | None:
    """The runs' rows (clean prompts, then corrupted ones, as ``prompts.lengths``) with their pair's
    continuations; None where every answer and wrong answer is one token."""
    if prompts.answer_seqs is None or prompts.wrong_seqs is None:
        return None
    ids = torch.cat([prompts.clean_ids, prompts.corrupt_ids])  # (row, n_pos)
    answers, wrongs = prompts.answer_seqs * 2, prompts.wrong_seqs * 2
    return build(ids, prompts.lengths, answers, wrongs)


def build(
    ids: torch.Tensor, lengths: torch.Tensor, answers: list[tuple[int, ...]], wrongs: list[tuple[int, ...]]
) -> Extension:
    """Rows ``ids`` ``(row, n_pos)`` of real lengths ``lengths``, each followed by its two continuations."""
    rows, n_pos = ids.shape
    n_a = max(len(a) for a in answers) - 1  # the answer branch's width: every token but the last is fed in
    n_w = max(len(w) for w in wrongs) - 1
    width = n_pos + n_a + n_w
    branch = torch.cat([torch.zeros(n_pos), torch.ones(n_a), torch.full((n_w,), 2)]).long()  # (width,)
    step = torch.cat([torch.zeros(n_pos), torch.arange(n_a), torch.arange(n_w)]).long()  # index within a branch
    lengths = lengths.long()
    # A branch token at step k sits at position id length + k, right after its prompt's last real token.
    positions = torch.where(branch > 0, lengths[:, None] + step, torch.arange(width))  # (row, width)
    index = torch.arange(width)
    causal = index[None, :] <= index[:, None]  # (query, key)
    prompt_key = (branch == 0)[None, :] & ((branch == 0)[:, None] | (index[None, :] < lengths[:, None, None]))
    own_branch = (branch[None, :] == branch[:, None]) & (branch > 0)[None, :]  # (query, key)
    allowed = causal & (prompt_key | own_branch)  # (row, query, key)
    n_read = n_a + 1 + n_w + 1
    reads = torch.zeros(rows, n_read, dtype=torch.long)
    targets = torch.zeros(rows, n_read, dtype=torch.long)
    sign = torch.zeros(rows, n_read)
    rows_ids = torch.zeros(rows, width - n_pos, dtype=torch.long)  # a shorter branch's tail: any token, never read
    for r, (a, w) in enumerate(zip(answers, wrongs)):
        for seq, start, first_read, s in ((a, n_pos, 0, 1.0), (w, n_pos + n_a, n_a + 1, -1.0)):
            fed = len(seq) - 1
            rows_ids[r, start - n_pos : start - n_pos + fed] = torch.tensor(seq[:-1], dtype=torch.long)
            at = [int(lengths[r]) - 1] + list(range(start, start + fed))  # where each of seq's tokens is predicted
            reads[r, first_read : first_read + len(seq)] = torch.tensor(at)
            targets[r, first_read : first_read + len(seq)] = torch.tensor(seq)
            sign[r, first_read : first_read + len(seq)] = s
        reads[r, sign[r] == 0] = int(lengths[r]) - 1  # padding reads a real index; its sign is 0
    return Extension(torch.cat([ids, rows_ids], 1), positions, allowed, reads, targets, sign)


def scores(logits: torch.Tensor, ext: Extension) -> torch.Tensor:
    """Each row's summed log-probabilities of its answer and of its wrong answer, ``(row, 2)``.

    ``logits`` is ``(row, read, vocab)``, the logits at ``ext.reads``.
    """
    logp = logits.float().log_softmax(-1).gather(-1, ext.targets.to(logits.device)[..., None])[..., 0]  # (row, read)
    return branch_sums(logp, ext.sign.to(logp.device)).cpu()


def branch_sums(values: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Each row's answer reads summed, then its wrong answer's, ``(row, 2)``, from ``values`` ``(row, read)``."""
    return torch.stack([torch.where(sign > 0, values, 0.0).sum(1), torch.where(sign < 0, values, 0.0).sum(1)], 1)


def inputs(model: Any, ext: Extension | None, shape: tuple[int, int]) -> dict[str, Any]:
    """A whole-row pass's attention mask (and position ids): every earlier position for plain rows
    ``shape`` ``(row, width)``, each branch's own tree for rows with continuations."""
    if ext is None:
        return {"attention_mask": attend_all(model, *shape)}
    return {
        "attention_mask": segment_mask(model, ext.allowed[:, None]),
        "position_ids": on_input_device(model, ext.positions),
    }


def kept(lengths: torch.Tensor, width: int, ext: Extension | None) -> tuple[Any, Any, Any]:
    """For a whole-row pass: ``logits_to_keep``, where each row's last prompt token lands among the kept
    logits, and (with ``ext``) where every read of the continuations lands, row by row (``(row * read,)``)."""
    if ext is None:
        keep, index = last_tokens(lengths, width)
        return keep, index, None
    rows = torch.arange(len(lengths))[:, None].expand_as(ext.reads).flatten()  # (row * read,)
    keep, every = last_positions(rows, ext.reads.flatten(), width)  # several reads per row: never (1, None)
    at = every[1].view(ext.reads.shape)  # (row, read)
    return keep, (rows.view(ext.reads.shape)[:, 0], at[:, 0]), every


def scored(logits: torch.Tensor, ext: Extension) -> torch.Tensor:
    """The logits at every read, ``(row * read, vocab)`` row by row, as a metric on sequences reads them
    (``metrics.with_scores``): the last prompt token's logits and the two continuations' log-probabilities."""
    logits = logits.view(len(ext.reads), -1, logits.shape[-1])  # (row, read, vocab)
    return with_scores(logits[:, 0], scores(logits, ext))


def scored_hidden(
    hidden: torch.Tensor, ext: Extension, unembed: tuple[torch.Tensor, torch.Tensor | None], difference_only: bool
) -> torch.Tensor:
    """``scored`` from the unembedding's input at every read, ``(row * read, d_model)``, unembedded here with
    ``unembed`` (weight, bias), each read with what it needs.

    With ``difference_only`` (the metric reads only log p(answer) - log p(wrong)), the two reads at the prompt's
    last token take their token's logit alone: that position's normaliser is in both sums and cancels, so only
    the continuations' own positions need every column. The two scores are then each off by that normaliser,
    their difference exact, and no last-position logits are kept (``(row, 2)``).
    """
    weight, bias = unembed
    rows, n_read = ext.reads.shape
    h = hidden.view(rows, n_read, -1)  # (row, read, d_model)
    device = h.device
    weight = weight.to(device, h.dtype)
    bias = None if bias is None else bias.to(device, h.dtype)
    sign, targets = ext.sign.to(device), ext.targets.to(device)
    first = (ext.reads == ext.reads[:, :1]).to(device) & (sign != 0)  # (row, read): at the prompt's last token
    full = (sign != 0) & ~first if difference_only else sign != 0
    values = torch.zeros(rows, n_read, device=device)
    logits = h[full] @ weight.T + (0 if bias is None else bias)  # (full read, vocab)
    values[full] = logits.float().log_softmax(-1).gather(-1, targets[full][:, None])[:, 0]
    if difference_only:
        own = (h[first] * weight[targets[first]]).sum(-1) + (0 if bias is None else bias[targets[first]])
        values[first] = own.float()
    scores = branch_sums(values, sign)
    if difference_only:
        return scores.cpu()
    last = h[:, 0] @ weight.T + (0 if bias is None else bias)  # (row, vocab) at the prompt's last token
    return with_scores(last, scores).cpu()
