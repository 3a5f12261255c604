"""Metrics: what "how much of the behaviour comes back" means, as a number.

Every metric reads the logits at the last position, shaped ``(batch, vocab)``,
and returns one value per row.

- ``logit_diff``: answer logit minus wrong logit.
- ``logit_diff_norm``: the logit difference rescaled per prompt pair so that
  the clean run scores 1 and the corrupted run 0.
- ``prob``: probability of the answer.
- ``kl``: KL divergence from the clean run's next-token distribution.
- any callable ``f(logits)`` or ``f(logits, answer_ids, wrong_ids)``.

Example:
    >>> import torch
    >>> logits = torch.tensor([[2.0, 0.5, 0.0]])
    >>> logit_diff(logits, torch.tensor([0]), torch.tensor([1]))
    tensor([1.5000])
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from ..errors import MetricError, UnknownMetricError

MetricFn = Callable[..., torch.Tensor]
Metric = str | MetricFn
METRICS = ("logit_diff", "logit_diff_norm", "prob", "kl")


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


def metric_name(metric: Metric) -> str:
    """The metric's name as results record it (a callable's ``__name__``)."""
    return metric if isinstance(metric, str) else getattr(metric, "__name__", "custom")


def resolve(metric: Metric, vocab: int | None = None) -> MetricFn:
    """The row-wise function ``f(logits, answer_ids, wrong_ids, clean_logits)``
    for ``metric``; ``logit_diff_norm`` is computed raw here and normalised by
    ``normalize`` once the baselines are known.

    A callable is checked on every call: it must return a floating-point tensor
    with one value per row of ``logits`` (a metric that averages over the batch
    would otherwise give every patched copy the batch's mean). With ``vocab``,
    it is first tried on a small batch of made-up logits, so a wrong shape is
    refused before any forward pass.
    """
    check_metric(metric)
    if metric in ("logit_diff", "logit_diff_norm"):
        fn = lambda logits, answer, wrong, clean: logit_diff(logits, answer, wrong)
        fn.answer_columns_only = True  # the engine may unembed only the answer and wrong columns for it
        return fn
    if metric == "prob":
        return lambda logits, answer, wrong, clean: prob(logits, answer, wrong)
    if metric == "kl":
        return lambda logits, answer, wrong, clean: kl(logits, clean)
    takes_ids = _n_params(metric) != 1
    calls = [0]

    def checked(logits: torch.Tensor, answer: torch.Tensor, wrong: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        where = f"metric {metric_name(metric)!r} (call {calls[0]}, on logits of shape {tuple(logits.shape)})"
        try:
            out = metric(logits, answer, wrong) if takes_ids else metric(logits)
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
        trial = torch.randn(3, vocab, generator=torch.Generator().manual_seed(0))
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


def normalize(values: torch.Tensor, clean: torch.Tensor, corrupt: torch.Tensor) -> torch.Tensor:
    """Rescale so that ``clean`` maps to 1 and ``corrupt`` to 0.

    ``values`` is ``(pair, ...)``; ``clean`` and ``corrupt`` are ``(pair,)``.
    """
    shape = (-1,) + (1,) * (values.dim() - 1)
    return (values - corrupt.view(shape)) / (clean - corrupt).view(shape)
