"""Tokenising and validating prompt pairs and answers, before any compute.

Every check here raises a ``PromptError`` (a ``ValueError``) whose message
names the offending input and shows how it tokenized.

Example:
    >>> from patchwidget import load_model
    >>> batch = prepare_prompts(load_model().tokenizer, "The capital of France is",
    ...                         "The capital of Japan is", answer="Paris", wrong="Tokyo")
    >>> batch.n_pairs, batch.n_pos
    (1, 5)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ..errors import PromptError
from .templates import Prompt, shared_spans, token_strings


@dataclass(frozen=True)
class PromptBatch:
    """Tokenized, validated prompt pairs.

    Plain strings: every prompt has one length. ``Prompt``s of one template
    (``patchwidget.data.templates``): lengths may differ, the ids are padded on the
    right to the longest (a causal model's real tokens never see a later pad, and
    keep their positions), ``*_len`` hold the real lengths and ``*_spans`` each
    prompt's positions per column of ``columns``.
    """

    clean: list[str]
    corrupt: list[str]
    answer: list[str]
    wrong: list[str]
    clean_ids: torch.Tensor  # (pair, pos)
    corrupt_ids: torch.Tensor  # (pair, pos)
    answer_ids: torch.Tensor  # (pair,) each answer's first token
    wrong_ids: torch.Tensor  # (pair,)
    tokens: list[str]  # the first clean prompt's tokens, as text
    noise: Noise | None = None  # Gaussian-noise corruption instead of corrupted prompts
    noise_positions: list[list[int]] | None = None  # per pair, the token positions that get noise
    clean_len: torch.Tensor | None = None  # (pair,) real lengths, where prompts may differ in length
    corrupt_len: torch.Tensor | None = None
    columns: list[str] | None = None  # span labels, for prompts made from a template
    clean_spans: list[list[tuple[int, ...]]] | None = None  # per pair, per column, its positions
    corrupt_spans: list[list[tuple[int, ...]]] | None = None
    # Per pair, every token of the answer and of the wrong answer, where any of them has several tokens (the
    # metric then reads the whole continuation, ``core.continuation``); None where every one is one token.
    answer_seqs: list[tuple[int, ...]] | None = None
    wrong_seqs: list[tuple[int, ...]] | None = None

    @property
    def n_pairs(self) -> int:
        return self.clean_ids.shape[0]

    @property
    def n_pos(self) -> int:
        return self.clean_ids.shape[1]

    @property
    def width(self) -> int:
        """Positions of a run's row: the prompt, then the answer's and the wrong answer's fed tokens
        (all but their last) where answers have several tokens (``core.continuation``)."""
        if self.answer_seqs is None or self.wrong_seqs is None:
            return self.n_pos
        return self.n_pos + max(map(len, self.answer_seqs)) - 1 + max(map(len, self.wrong_seqs)) - 1

    @property
    def reads(self) -> int:
        """Positions a row's logits are read at: the prompt's last token, and each continuation's fed tokens."""
        return 1 + self.width - self.n_pos

    @property
    def lengths(self) -> torch.Tensor:
        """Real lengths of the clean then the corrupted prompts, ``(2 * pair,)``, the rows of the runs."""
        full = torch.full((self.n_pairs,), self.n_pos)
        clean = full if self.clean_len is None else self.clean_len
        corrupt = full if self.corrupt_len is None else self.corrupt_len
        return torch.cat([clean, corrupt])

    def rows(self, index: slice | torch.Tensor) -> PromptBatch:
        """These rows of the token ids (for noise samples or a split into passes); the texts stay the pairs'."""
        picked = list(range(self.n_pairs))[index] if isinstance(index, slice) else index.tolist()
        spans = {
            name: None if getattr(self, name) is None else [getattr(self, name)[i] for i in picked]
            for name in ("clean_spans", "corrupt_spans", "answer_seqs", "wrong_seqs")
        }
        return replace(
            self,
            clean_ids=self.clean_ids[index],
            corrupt_ids=self.corrupt_ids[index],
            answer_ids=self.answer_ids[index],
            wrong_ids=self.wrong_ids[index],
            clean_len=None if self.clean_len is None else self.clean_len[index],
            corrupt_len=None if self.corrupt_len is None else self.corrupt_len[index],
            **spans,
        )

    def within(self, column: int) -> PromptBatch:
        """The positions of span ``column`` as columns of their own, one token each: the drill-down into a span.

        A span's positions pair up from its last token (``templates.align``), so the
        columns are the aligned positions that every pair has: ``n``, the shortest
        of the span's lengths over all prompts, labelled ``"S2[0]"`` to ``"S2[n-1]"``
        (the last is the span's last token in every prompt).

        Example:
            >>> batch.within(batch.columns.index("PLACE")).columns   # doctest: +SKIP
            ['PLACE[0]', 'PLACE[1]']
        """
        assert self.columns is not None and self.clean_spans is not None and self.corrupt_spans is not None
        spans = [s[column] for s in self.clean_spans + self.corrupt_spans]
        n = min(len(s) for s in spans)
        return replace(
            self,
            columns=[f"{self.columns[column]}[{i}]" for i in range(n)],
            clean_spans=[[(p,) for p in s[column][len(s[column]) - n :]] for s in self.clean_spans],
            corrupt_spans=[[(p,) for p in s[column][len(s[column]) - n :]] for s in self.corrupt_spans],
        )

    @property
    def aligned_one_to_one(self) -> bool:
        """Every pair's clean and corrupted prompts have their spans at the same positions (or no spans)."""
        return self.clean_spans is None or self.clean_spans == self.corrupt_spans


Texts = str | Sequence[str]  # or patchwidget.Prompt objects, one or a list


@dataclass(frozen=True)
class Noise:
    """Corruption by Gaussian noise on the token embeddings of some words.

    Made by ``noise()``; pass it as ``corrupt=``.
    """

    tokens: tuple[str, ...] | None
    positions: tuple[int, ...] | None
    scale: float
    samples: int
    seed: int


def noise(
    tokens: str | Sequence[str] | None = None,
    *,
    positions: Sequence[int] | None = None,
    scale: float = 3.0,
    samples: int = 10,
    seed: int = 0,
) -> Noise:
    """Corrupt the clean prompt by adding noise to the embeddings of ``tokens``.

    The noise is Gaussian with ``scale`` times the standard deviation of the
    model's token-embedding matrix (3 as in Meng et al. 2022, ROME), added to the
    token embeddings of the words ``tokens`` (or of the token ``positions``) in
    each clean prompt. Every number is averaged over ``samples`` noise draws.

    Example:
        >>> r = patch(model, "The capital of France is", noise("France"),
        ...           answer="Paris", wrong="Tokyo")   # doctest: +SKIP
    """
    if (tokens is None) == (positions is None):
        raise PromptError("noise() needs exactly one of tokens=... (words of the prompt) or positions=[...]")
    if isinstance(tokens, str):
        tokens = [tokens]
    if tokens is not None and (not tokens or not all(isinstance(t, str) and t.strip() for t in tokens)):
        raise PromptError(f"noise() tokens must be non-empty words of the prompt, got {tokens!r}")
    if positions is not None and (
        isinstance(positions, str) or not positions or not all(_is_int(p) for p in positions)
    ):
        raise PromptError(f"noise() positions must be a non-empty list of token indices, got {positions!r}")
    if not _is_int(samples) or samples < 1:
        raise PromptError(f"noise() needs samples >= 1 (an integer), got samples={samples!r}")
    if not isinstance(scale, int | float) or isinstance(scale, bool) or not math.isfinite(scale) or scale < 0:
        raise PromptError(f"noise() needs scale to be a finite number >= 0, got scale={scale!r}")
    if not _is_int(seed):
        raise PromptError(f"noise() needs seed to be an integer, got seed={seed!r}")
    return Noise(
        tuple(tokens) if tokens is not None else None,
        tuple(int(p) for p in positions) if positions is not None else None,
        float(scale),
        int(samples),
        int(seed),
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _noise_positions(tokenizer: Any, spec: Noise, ids: list[int], text: str, name: str) -> list[int]:
    if spec.positions is not None:
        bad = [p for p in spec.positions if not -len(ids) <= p < len(ids)]
        if bad:
            raise PromptError(f"noise positions {bad} are out of range for {name} ({len(ids)} tokens)")
        return sorted({p % len(ids) for p in spec.positions})
    found: list[int] = []
    for word in spec.tokens or ():
        for candidate in (word, " " + word.lstrip()):
            sub = tokenizer(candidate, add_special_tokens=False)["input_ids"]
            starts = [i for i in range(len(ids) - len(sub) + 1) if sub and ids[i : i + len(sub)] == sub]
            if starts:
                found += range(starts[0], starts[0] + len(sub))
                break
        else:
            raise PromptError(
                f"noise word {word!r} does not occur in {name} {text!r}, which tokenizes to "
                f"{token_strings(tokenizer, ids)}"
            )
    return sorted(set(found))


def _as_list(value: Texts, name: str, prompts_ok: bool = False) -> list:

    kinds = (str, Prompt) if prompts_ok else (str,)
    if isinstance(value, kinds):
        return [value]
    if not isinstance(value, Sequence) or not all(isinstance(v, kinds) for v in value):
        also = ", or Prompts made by patchwidget.Template.fill" if prompts_ok else ""
        raise PromptError(f"{name} must be a string or a list of strings{also}, got {value!r}")
    return list(value)


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text)["input_ids"])


def _check_known(tokenizer: Any, ids: list[int], text: str, name: str) -> None:
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and unk in ids:
        words = [w for w in text.split() if tokenizer.unk_token_id in _encode(tokenizer, w)]
        raise PromptError(
            f"{name} {text!r} contains words the model's vocabulary lacks: {words}; "
            f"they would all read as {tokenizer.unk_token!r}"
        )


def one_token(tokenizer: Any, text: str, name: str, why: str = "") -> int:
    """The id of ``text`` (an answer), which must be exactly one token the vocabulary knows; ``why`` says
    what reads one token only (patching itself scores answers of several tokens)."""
    ids = answer_tokens(tokenizer, text, name)
    if len(ids) != 1:
        hint = (
            " (GPT-2-style tokenizers usually want a leading space, e.g. ' Paris')" if " " not in text.strip() else ""
        )
        raise PromptError(
            f"{name} {text!r} must be exactly one token{why}, but it tokenizes to {len(ids)}: "
            f"{token_strings(tokenizer, list(ids))}{hint}"
        )
    return ids[0]


def answer_tokens(tokenizer: Any, text: str, name: str) -> tuple[int, ...]:
    """The ids of ``text`` (an answer): one token or several, each one the vocabulary knows.

    Example:
        >>> answer_tokens(load_model().tokenizer, " Mary went", "answer")   # doctest: +SKIP
        (80, 4)
    """
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise PromptError(f"{name} {text!r} is empty: it tokenizes to no tokens, so there is nothing to score")
    _check_known(tokenizer, ids, text, name)
    return tuple(ids)


def _paired(clean: Texts, corrupt: Texts | Noise, spec: Noise | None) -> tuple[list, list]:
    """The prompts as two lists that pair up one to one (with noise, the clean prompts are corrupted themselves)."""
    clean_p = _as_list(clean, "clean", prompts_ok=True)
    corrupt_p = list(clean_p) if spec is not None else _as_list(corrupt, "corrupt", prompts_ok=True)
    n = len(clean_p)
    if n == 0:
        raise PromptError("clean is an empty list; give at least one prompt pair")
    if len(corrupt_p) != n:
        raise PromptError(f"clean has {n} prompts but corrupt has {len(corrupt_p)}; they pair up one to one")
    return clean_p, corrupt_p


def _check_pair(
    tokenizer: Any,
    i: int,
    tag: str,
    texts: tuple[str, str],
    ids: tuple[list[int], list[int]],
    first: list[int] | None,
    templated: bool,
    noised: bool,
    max_len: int | None,
) -> None:
    """Refuse pair ``i`` (tokenized as ``ids``) if patching could not line it up; ``first`` is pair 0's clean ids."""
    (c, k), (c_ids, k_ids) = texts, ids
    _check_known(tokenizer, c_ids, c, f"clean prompt{tag}")
    _check_known(tokenizer, k_ids, k, f"corrupt prompt{tag}")
    if len(c_ids) != len(k_ids) and not templated:
        raise PromptError(
            f"clean prompt{tag} and corrupt prompt{tag} tokenize to different lengths "
            f"({len(c_ids)} vs {len(k_ids)}), so positions do not line up:\n"
            f"  clean:   {token_strings(tokenizer, c_ids)}\n"
            f"  corrupt: {token_strings(tokenizer, k_ids)}\n"
            "Choose prompts that differ only in words of equal token length, or make them with "
            "patchwidget.Template(...).fill(...): pairs of different lengths are then aligned by span."
        )
    if c_ids == k_ids and not noised:
        raise PromptError(f"clean prompt{tag} and corrupt prompt{tag} are identical ({c!r}): nothing to patch")
    if first is not None and len(c_ids) != len(first) and not templated:
        raise PromptError(
            f"prompt pair {i} has {len(c_ids)} tokens but pair 0 has {len(first)}; "
            "all pairs must have one length so that positions line up across pairs:\n"
            f"  pair 0:  {token_strings(tokenizer, first)}\n"
            f"  pair {i}: {token_strings(tokenizer, c_ids)}\n"
            "Or make the prompts with patchwidget.Template(...).fill(...): pairs of different lengths "
            "are then aligned by span."
        )
    for one, name in ((c_ids, "clean"), (k_ids, "corrupt")):
        if max_len is not None and len(one) > max_len:
            raise PromptError(f"{name} prompt{tag} has {len(one)} tokens, more than the model's context of {max_len}")


def _tokenize_pairs(
    tokenizer: Any, clean: list[str], corrupt: list[str], templated: bool, noised: bool, max_len: int | None
) -> tuple[list[list[int]], list[list[int]]]:
    """Each pair's token ids, checked pair by pair: the error names the first pair that is wrong, and how."""
    n = len(clean)
    clean_ids: list[list[int]] = []
    corrupt_ids: list[list[int]] = []
    for i, (c, k) in enumerate(zip(clean, corrupt)):
        tag = f" {i}" if n > 1 else ""
        for text, name in ((c, f"clean prompt{tag}"), (k, f"corrupt prompt{tag}")):
            if not text.strip():
                raise PromptError(f"{name} is empty")
        c_ids, k_ids = _encode(tokenizer, c), _encode(tokenizer, k)
        first = clean_ids[0] if clean_ids else None
        _check_pair(tokenizer, i, tag, (c, k), (c_ids, k_ids), first, templated, noised, max_len)
        clean_ids.append(c_ids)
        corrupt_ids.append(k_ids)
    return clean_ids, corrupt_ids


def _answer_seqs(tokenizer: Any, answers: list[str], wrongs: list[str]) -> tuple[list, list]:
    """Each pair's answer and wrong token sequences, not the same (their difference is the metric)."""
    tag = (lambda i: "") if len(answers) == 1 else (lambda i: f" {i}")
    answer_seqs = [answer_tokens(tokenizer, a, f"answer{tag(i)}") for i, a in enumerate(answers)]
    wrong_seqs = [answer_tokens(tokenizer, w, f"wrong{tag(i)}") for i, w in enumerate(wrongs)]
    for i, (a, w) in enumerate(zip(answer_seqs, wrong_seqs)):
        if a == w:
            raise PromptError(
                f"answer and wrong of pair {i} are the same token{'s' if len(a) > 1 else ''} "
                f"{token_strings(tokenizer, list(a))} ({answers[i]!r} and {wrongs[i]!r}): their difference is 0"
            )
    return answer_seqs, wrong_seqs


def _check_context(
    tokenizer: Any, ids: list[list[int]], seqs: list[tuple[int, ...]], max_len: int | None, what: str
) -> None:
    """Refuse a continuation that would run past the model's context: a prompt and all but the last token of
    its answer are fed to the model, so they must fit in it together."""
    for i, (prompt, seq) in enumerate(zip(ids, seqs)):
        if max_len is not None and len(prompt) + len(seq) - 1 > max_len:
            raise PromptError(
                f"{what} of pair {i} ({token_strings(tokenizer, list(seq))}) after its prompt of {len(prompt)} "
                f"tokens runs past the model's context of {max_len} tokens"
            )


def prepare_prompts(
    tokenizer: Any,
    clean: Texts,
    corrupt: Texts | Noise,
    *,
    answer: Texts,
    wrong: Texts,
    max_len: int | None = None,
) -> PromptBatch:
    """Tokenize prompt pairs and answers, checking everything patching needs.

    ``clean`` and ``corrupt`` are one prompt each or equal-length lists; a
    single ``answer``/``wrong`` string applies to every pair. Each clean
    prompt must tokenize to as many tokens as its corrupted twin, and all
    pairs to one length, so that positions line up.
    """
    spec = corrupt if isinstance(corrupt, Noise) else None
    clean_p, corrupt_p = _paired(clean, corrupt, spec)
    n = len(clean_p)
    templated = _templated(clean_p + corrupt_p)
    clean_l, corrupt_l = [str(c) for c in clean_p], [str(k) for k in corrupt_p]
    answers = broadcast_texts(answer, "answer", n)
    wrongs = broadcast_texts(wrong, "wrong", n)
    clean_ids, corrupt_ids = _tokenize_pairs(tokenizer, clean_l, corrupt_l, templated, spec is not None, max_len)
    answer_seqs, wrong_seqs = _answer_seqs(tokenizer, answers, wrongs)
    for seqs, what in ((answer_seqs, "answer"), (wrong_seqs, "wrong")):
        _check_context(tokenizer, clean_ids, seqs, max_len, what)
        _check_context(tokenizer, corrupt_ids, seqs, max_len, what)
    several = any(len(seq) > 1 for seq in answer_seqs + wrong_seqs)

    # Aligning: which positions get noise, and for a template's prompts which positions each span holds.
    positions = None
    if spec is not None:
        positions = [
            _noise_positions(tokenizer, spec, ids, c, f"clean prompt {i}")
            for i, (ids, c) in enumerate(zip(clean_ids, clean_l))
        ]
    spans: dict[str, Any] = {}
    if templated:
        spans = _span_fields(tokenizer, clean_p, corrupt_p, clean_ids, corrupt_ids)
    return PromptBatch(
        clean=clean_l,
        corrupt=corrupt_l,
        answer=answers,
        wrong=wrongs,
        clean_ids=_padded(tokenizer, clean_ids, corrupt_ids),
        corrupt_ids=_padded(tokenizer, corrupt_ids, clean_ids),
        answer_ids=torch.tensor([seq[0] for seq in answer_seqs]),
        wrong_ids=torch.tensor([seq[0] for seq in wrong_seqs]),
        tokens=token_strings(tokenizer, clean_ids[0]),
        noise=spec,
        noise_positions=positions,
        answer_seqs=answer_seqs if several else None,
        wrong_seqs=wrong_seqs if several else None,
        **spans,
    )


def _templated(prompts: list) -> bool:
    """Whether the prompts are ``Prompt``s of a template (all of them) or plain strings (all of them)."""
    kinds = {isinstance(p, str) for p in prompts}
    if len(kinds) > 1:
        raise PromptError(
            "clean and corrupt mix plain strings with Prompts made by Template.fill; use one kind for every prompt"
        )
    return kinds == {False}


def _padded(tokenizer: Any, ids: list[list[int]], others: list[list[int]]) -> torch.Tensor:
    """Token ids padded on the right to the longest prompt of both lists, ``(pair, pos)``.

    Right padding changes nothing a causal model computes at the real tokens: each
    keeps its position, and attends only to earlier ones, never to a pad after it.
    """
    width = max(len(i) for i in ids + others)
    pad = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
    return torch.tensor([i + [pad] * (width - len(i)) for i in ids])


def _span_fields(
    tokenizer: Any, clean: list, corrupt: list, clean_ids: list[list[int]], corrupt_ids: list[list[int]]
) -> dict[str, Any]:
    """Columns, each prompt's positions per column, and the real lengths, for prompts of one template."""

    spans = shared_spans(clean + corrupt, tokenizer)  # one template, every prompt tokenized with offsets
    return {
        "columns": [s.label for s in spans[0]],
        "clean_spans": [[s.positions for s in p] for p in spans[: len(clean)]],
        "corrupt_spans": [[s.positions for s in p] for p in spans[len(clean) :]],
        "clean_len": torch.tensor([len(i) for i in clean_ids]),
        "corrupt_len": torch.tensor([len(i) for i in corrupt_ids]),
    }


def broadcast_texts(value: Texts, name: str, n: int) -> list[str]:
    """``value`` once per prompt: one string for all, or a list of exactly ``n``."""
    values = _as_list(value, name)
    if isinstance(value, str):
        return values * n
    if len(values) != n:
        raise PromptError(f"{name} has {len(values)} entries but there are {n} prompt pairs")
    return values


def prepare_pairs(tokenizer: Any, clean: Texts, corrupt: Texts, *, max_len: int | None = None) -> PromptBatch:
    """Tokenize prompt pairs that have no answers (generation), with the checks of ``prepare_prompts``.

    The batch's ``answer``/``wrong`` are empty and its ``answer_ids``/``wrong_ids`` hold
    no ids: nothing may read them. ``corrupt`` is corrupted prompts: ``generate`` refuses a ``noise()``
    corruption before it comes here (``generate.refusal``: each run is continued on its own).

    Example:
        >>> prepare_pairs(tokenizer, "The capital of France is", "The capital of Japan is").n_pos  # doctest: +SKIP
        5
    """
    clean_p, corrupt_p = _paired(clean, corrupt, None)
    templated = _templated(clean_p + corrupt_p)
    clean_l, corrupt_l = [str(c) for c in clean_p], [str(k) for k in corrupt_p]
    clean_ids, corrupt_ids = _tokenize_pairs(tokenizer, clean_l, corrupt_l, templated, False, max_len)
    spans = _span_fields(tokenizer, clean_p, corrupt_p, clean_ids, corrupt_ids) if templated else {}
    none = torch.empty(0, dtype=torch.long)
    return PromptBatch(
        clean=clean_l,
        corrupt=corrupt_l,
        answer=[],
        wrong=[],
        clean_ids=_padded(tokenizer, clean_ids, corrupt_ids),
        corrupt_ids=_padded(tokenizer, corrupt_ids, clean_ids),
        answer_ids=none,
        wrong_ids=none,
        tokens=token_strings(tokenizer, clean_ids[0]),
        **spans,
    )
