"""Metrics: what "how much of the behaviour comes back" means, as a number.

Every metric reads the logits at the last position, shaped ``(batch, vocab)``,
and returns one value per row.

- ``logit_diff``: answer logit minus wrong logit.
- ``logit_diff_norm``: the logit difference rescaled per prompt pair so that
  the clean run scores 1 and the corrupted run 0.
- ``prob``: probability of the answer.
- ``kl``: KL divergence from the clean run's next-token distribution.
- any callable ``f(logits)`` or ``f(logits, answer_ids, wrong_ids)``, or ``f(logits, answer_logprob,
  wrong_logprob)`` naming those parameters (each answer's log-probability, of one token or summed over
  several: the form that works for answers of several tokens).

Example:
    >>> import torch
    >>> logits = torch.tensor([[2.0, 0.5, 0.0]])
    >>> logit_diff(logits, torch.tensor([0]), torch.tensor([1]))
    tensor([1.5000])
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import MetricError, UnknownMetricError

MetricFn = Callable[..., torch.Tensor]
Metric = str | MetricFn
METRICS = ("logit_diff", "logit_diff_norm", "prob", "kl")
# The one default of every entry point, the session, the widget and the CLI: the raw logit difference, the
# field's usual measure (TransformerLens' patching, MIB's faithfulness), in a unit that means the same in every
# grid. The normalised view (clean = 1, corrupted = 0) is a display setting of the widget and the CLI; the
# name "logit_diff_norm" stays for those who want the per-pair rescaling computed.
DEFAULT = "logit_diff"


def logit_diff(logits: torch.Tensor, answer: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    """Answer logit minus wrong logit, per row of ``(batch, vocab)`` logits."""
    rows = torch.arange(logits.shape[0])
    return logits[rows, answer] - logits[rows, wrong]


def prob(logits: torch.Tensor, answer: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    """Probability of the answer token, per row."""
    return logits.float().softmax(-1)[torch.arange(logits.shape[0]), answer]


def kl(logits: torch.Tensor, clean_logits: torch.Tensor) -> torch.Tensor:
    """KL(clean || patched) per row; both are ``(batch, vocab)``."""
    clean_logp = clean_logits.float().log_softmax(-1)
    logp = logits.float().log_softmax(-1)
    return (clean_logp.exp() * (clean_logp - logp)).sum(-1)


def check_metric(metric: Metric) -> None:
    """Refuse a metric that is neither one of ``METRICS`` nor a callable."""
    if callable(metric):
        return
    if not isinstance(metric, str) or metric not in METRICS:
        raise UnknownMetricError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}, or pass a callable")


def metric_name(metric: Metric | ResolvedMetric) -> str:
    """The metric's name as results record it (a callable's ``__name__``)."""
    if isinstance(metric, ResolvedMetric):
        return metric.name
    return metric if isinstance(metric, str) else getattr(metric, "__name__", "custom")


@dataclass(frozen=True)
class ResolvedMetric:
    """A request's metric, resolved once at its entry point: every layer below reads these fields and never
    the user's name again. Calling it calls ``fn``.

    Example:
        >>> m = resolve("logit_diff_norm")
        >>> m.name, m.normalized, m.answer_columns_only
        ('logit_diff_norm', True, True)
    """

    name: str  # what results record: the metric's name, or a callable's ``__name__``
    fn: MetricFn  # row-wise ``f(logits, answer_ids, wrong_ids, clean_logits)`` -> ``(rows,)``
    normalized: bool = False  # each pair rescaled so that clean is 1 and corrupt 0, once the baselines are known
    # Reads only the answer and wrong logits (two unembedding columns suffice); on sequences, only the difference of
    # the two continuations' scores.
    answer_columns_only: bool = False
    # Answers of several tokens: the logits ``fn`` receives are ``with_scores``' (the last prompt position's
    # logits, then the answer's and the wrong answer's summed log-probabilities as two more columns).
    sequences: bool = False
    given: Any = None  # what the user passed, to resolve again for prompts of the other kind

    def __call__(self, logits: torch.Tensor, answer: torch.Tensor, wrong: torch.Tensor, clean: torch.Tensor):
        return self.fn(logits, answer, wrong, clean)


def resolve(metric: Metric | ResolvedMetric, vocab: int | None = None, sequences: bool = False) -> ResolvedMetric:
    """``metric`` as a ``ResolvedMetric``; one that is already resolved is returned as it is (an entry point
    called by another, as ``find_circuit`` calls ``patch``, receives the value, not the name again).

    ``logit_diff_norm`` is computed raw here and normalised by ``normalize`` once the baselines are known.
    A callable is checked on every call: it must return a floating-point tensor
    with one value per row of ``logits`` (a metric that averages over the batch
    would otherwise give every patched copy the batch's mean). With ``vocab``,
    it is first tried on a small batch of made-up logits, so a wrong shape is
    refused before any forward pass.

    With ``sequences`` (an answer of several tokens), the metrics read the whole continuation by teacher
    forcing (``core.continuation``): ``logit_diff`` is log p(answer | prompt) - log p(wrong | prompt), each
    summed over its tokens (for one-token answers exactly the logit difference), ``prob`` is p(answer | prompt)
    of the whole answer, ``kl`` stays at the last prompt position.
    """
    if isinstance(metric, ResolvedMetric):
        if metric.sequences == sequences:
            return metric
        metric = metric.given
    check_metric(metric)
    if sequences:
        return _on_sequences(metric, vocab)
    if metric in ("logit_diff", "logit_diff_norm"):
        fn = lambda logits, answer, wrong, clean: logit_diff(logits, answer, wrong)
        return ResolvedMetric(
            metric, fn, normalized=metric == "logit_diff_norm", answer_columns_only=True, given=metric
        )
    if metric == "prob":
        return ResolvedMetric(metric, lambda logits, answer, wrong, clean: prob(logits, answer, wrong), given=metric)
    if metric == "kl":
        return ResolvedMetric(metric, lambda logits, answer, wrong, clean: kl(logits, clean), given=metric)
    return ResolvedMetric(metric_name(metric), _checked(metric, vocab), given=metric)


def with_scores(last: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """What a metric on sequences reads, ``(row, vocab + 2)``: the last prompt position's logits ``(row, vocab)``
    and each row's summed log-probabilities of its answer and wrong answer ``(row, 2)``, in float32.

    One tensor, so that every table of logits the engine keeps and indexes by row (the runs' baselines, a
    pass's copies) carries the scores with it.

    Example:
        >>> with_scores(torch.zeros(1, 3), torch.tensor([[-1.0, -2.0]])).shape
        torch.Size([1, 5])
    """
    return torch.cat([last.float(), scores.to(last.device).float()], 1)


def _on_sequences(metric: Metric, vocab: int | None = None) -> ResolvedMetric:
    """``metric`` read from ``with_scores``' rows: the continuations' log-probabilities and the last logits."""
    if metric in ("logit_diff", "logit_diff_norm"):
        # Reads only the two scores' difference: a pass may give scores each off by one normaliser that cancels
        # (``continuation.scored_hidden``), and no last-position logits.
        fn = lambda x, answer, wrong, clean: x[:, -2] - x[:, -1]
        return ResolvedMetric(
            metric,
            fn,
            normalized=metric == "logit_diff_norm",
            answer_columns_only=True,
            sequences=True,
            given=metric,
        )
    if metric == "prob":
        return ResolvedMetric(metric, lambda x, answer, wrong, clean: x[:, -2].exp(), sequences=True, given=metric)
    if metric == "kl":
        fn = lambda x, answer, wrong, clean: kl(x[:, :-2], clean[:, :-2])
        return ResolvedMetric(metric, fn, sequences=True, given=metric)
    if callable(metric) and on_logprobs(metric):
        return ResolvedMetric(
            metric_name(metric), _checked(metric, vocab, sequences=True), sequences=True, given=metric
        )
    raise MetricError(
        f"metric {metric_name(metric)!r} is a callable of one position's logits, and an answer or wrong answer "
        "here has several tokens; use 'logit_diff', 'logit_diff_norm', 'prob' or 'kl' (which read the whole "
        "continuation), or a callable f(logits, answer_logprob, wrong_logprob) naming those parameters (the last "
        "prompt token's logits and each continuation's summed log-probability, one value per row), or give "
        "answers of one token"
    )


SEQUENCE_PARAMS = ("answer_logprob", "wrong_logprob")


def on_logprobs(metric: MetricFn) -> bool:
    """Whether a callable metric reads the answers' log-probabilities: it names the parameters
    ``answer_logprob`` and ``wrong_logprob`` (then it is called ``f(logits=..., answer_logprob=...,
    wrong_logprob=...)``, and works for answers of one token or several)."""
    try:
        names = set(inspect.signature(metric).parameters)
    except (TypeError, ValueError):
        return False
    return set(SEQUENCE_PARAMS) <= names


def _call(
    metric: MetricFn, style: str, sequences: bool, logits: torch.Tensor, answer: torch.Tensor, wrong: torch.Tensor
) -> Any:
    """Call a user's metric the way its signature asks, ``style`` (``_style``); ``logits`` are ``with_scores``'
    on sequences."""
    if style == "logprobs":
        if sequences:
            return metric(logits=logits[:, :-2], answer_logprob=logits[:, -2], wrong_logprob=logits[:, -1])
        logp, rows = logits.float().log_softmax(-1), torch.arange(logits.shape[0])
        return metric(logits=logits, answer_logprob=logp[rows, answer], wrong_logprob=logp[rows, wrong])
    return metric(logits, answer, wrong) if style == "ids" else metric(logits)


def _style(metric: MetricFn) -> str:
    """How a user's metric is called, read once from its signature: ``"logprobs"`` (``on_logprobs``),
    ``"ids"`` (``f(logits, answer_ids, wrong_ids)``) or ``"logits"`` (``f(logits)``)."""
    if on_logprobs(metric):
        return "logprobs"
    return "ids" if _n_params(metric) != 1 else "logits"


def _checked(metric: MetricFn, vocab: int | None, sequences: bool = False) -> MetricFn:
    """A user's callable, its every result checked (and, with ``vocab``, tried once on made-up logits)."""
    calls, style = [0], _style(metric)

    def checked(logits: torch.Tensor, answer: torch.Tensor, wrong: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        where = f"metric {metric_name(metric)!r} (call {calls[0]}, on logits of shape {tuple(logits.shape)})"
        try:
            out = _call(metric, style, sequences, logits, answer, wrong)
        except Exception as err:
            raise MetricError(f"{where} raised {type(err).__name__}: {err}") from err
        rows = logits.shape[0]
        if not isinstance(out, torch.Tensor):
            raise MetricError(
                f"{where} returned a {type(out).__name__}; it must return a torch tensor of shape ({rows},), "
                "one value per row of the logits (for example logits[:, answer] - logits[:, wrong])"
            )
        if tuple(out.shape) != (rows,):
            hint = " (did it average or sum over the batch?)" if out.dim() == 0 else ""
            raise MetricError(
                f"{where} returned shape {tuple(out.shape)}; it must return shape ({rows},), one value per "
                f"row of the logits{hint}"
            )
        if not out.is_floating_point():
            raise MetricError(f"{where} returned dtype {out.dtype}; it must return floating-point values")
        return out

    if vocab is not None:  # a trial on made-up logits, before any compute
        trial = torch.randn(3, vocab + 2 * sequences, generator=torch.Generator().manual_seed(0))
        ids = torch.zeros(3, dtype=torch.long)
        with torch.no_grad():
            checked(trial, ids, ids + min(1, vocab - 1), trial)
        calls[0] = 0
    return checked


def _n_params(fn: MetricFn) -> int:
    try:
        return len(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return 3


def normalize(values: Any, clean: Any, corrupt: Any) -> Any:
    """Rescale so that ``clean`` maps to 1 and ``corrupt`` to 0: torch tensors or numpy arrays (the engine's
    per-pair values, and a finished result's ``normalized()`` view, use this one formula).

    ``values`` is ``(pair, ...)``; ``clean`` and ``corrupt`` are ``(pair,)``.
    """
    shape = (-1,) + (1,) * (values.ndim - 1)
    return (values - corrupt.reshape(shape)) / (clean - corrupt).reshape(shape)
